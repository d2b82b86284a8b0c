// Two "nodes" joined by an underlay, with one workload behind each, for the transport tests
// (on the host with wireguard-go, and inside the run-in-guest VM with kernel WireGuard/IPsec):
//
//   w1 (10.1.1.2, fd00:1:1::2)                     w2 (10.2.1.2, fd00:2:1::2)    workloads, eth0
//    |                                              |
//   n1 pod0 (10.1.1.1)  ul ---- [wire: br0] ---- ul  (10.2.1.1) pod0 n2            node namespaces
//      192.168.250.1 / fd00:250::1        192.168.250.2 / fd00:250::2
//
// Node N owns the pod CIDRs 10.N.0.0/16 and fd00:N::/32. The nodes forward, but nothing routes
// pod CIDRs across the underlay until a transport (or addUnderlayRoutes, the stand-in for a CNI)
// does. The underlay runs through a bridge in its own "wire" namespace: a capture there sees
// exactly what crosses the wire (on a node's own interface, tcpdump also sees the packets the
// kernel decrypted, re-injected on the device they arrived on). Built by the namespace builder
// (src/netns): names carry a random tag; cleanup() stops captures and removes all of them.
//
// Also here: ping/UDP traffic with a marker payload, and tcpdump captures.
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { inNetns, ipBatch, nsenterArgs } from '../../src/netns/exec.js';
import { FORWARDING, NetnsTopology, QUIET_IPV6, namespaceName, randomTag, type NamespaceSpec, type TopologySpec, type VethSpec } from '../../src/netns/topology.js';

export interface TopologyNode {
  id: 1 | 2;
  netns: string;
  underlay: { ipv4: string; ipv6: string };
  podCidrs: string[];
}

export interface TopologyWorkload {
  id: 1 | 2;
  netns: string;
  ipv4: string;
  ipv6: string;
}

export interface PingResult {
  transmitted: number;
  received: number;
}

/** The 16-byte marker ping carries in every echo payload (ping -p takes up to 16 bytes). */
export const PING_MARKER = Buffer.from('meshauth-marker!');

function parsePing(stdout: string): PingResult {
  const match = /(\d+) packets transmitted, (\d+) received/.exec(stdout);
  if (!match) throw new Error(`unexpected ping output: ${stdout}`);
  return { transmitted: Number(match[1]), received: Number(match[2]) };
}

const PREFIX = 'mt';
const IDS = [1, 2] as const;

/** The underlay and the two nodes as a namespace topology. */
const SPEC: TopologySpec = {
  prefix: PREFIX,
  namespaces: [
    ...IDS.map((id): NamespaceSpec => ({ name: `n${id}`, sysctls: { ...QUIET_IPV6, ...FORWARDING } })),
    ...IDS.map((id): NamespaceSpec => ({
      name: `w${id}`,
      sysctls: QUIET_IPV6,
      routes: [
        { to: 'default', via: `10.${id}.1.1` },
        { to: 'default', via: `fd00:${id}:1::1` },
      ],
    })),
    { name: 'ul', sysctls: QUIET_IPV6, bridges: [{ name: 'br0' }] },
  ],
  veths: IDS.flatMap((id): VethSpec[] => [
    // Explicit ifindexes, distinct from their peers' (see VethEnd.index).
    {
      ends: [
        { netns: 'ul', name: `ul${id}`, index: 100 + id, master: 'br0' },
        { netns: `n${id}`, name: 'ul', index: 200 + id, addresses: [`192.168.250.${id}/24`, `fd00:250::${id}/64`] },
      ],
    },
    {
      ends: [
        { netns: `n${id}`, name: 'pod0', index: 10 + id, addresses: [`10.${id}.1.1/24`, `fd00:${id}:1::1/64`] },
        { netns: `w${id}`, name: 'eth0', addresses: [`10.${id}.1.2/24`, `fd00:${id}:1::2/64`] },
      ],
    },
  ]),
};

export class TransportTopology {
  readonly nodes: [TopologyNode, TopologyNode];
  readonly workloads: [TopologyWorkload, TopologyWorkload];
  /** The namespace of the underlay bridge (br0): where captures see the wire. */
  readonly wire: string;
  private readonly captures = new Set<Capture>();
  private workDir: string | undefined;
  private destroyNamespaces: () => Promise<void> = async () => {};

  private constructor(readonly tag: string) {
    const node = (id: 1 | 2): TopologyNode => ({
      id,
      netns: namespaceName(PREFIX, tag, `n${id}`),
      underlay: { ipv4: `192.168.250.${id}`, ipv6: `fd00:250::${id}` },
      podCidrs: [`10.${id}.0.0/16`, `fd00:${id}::/32`],
    });
    const workload = (id: 1 | 2): TopologyWorkload => ({ id, netns: namespaceName(PREFIX, tag, `w${id}`), ipv4: `10.${id}.1.2`, ipv6: `fd00:${id}:1::2` });
    this.nodes = [node(1), node(2)];
    this.workloads = [workload(1), workload(2)];
    this.wire = namespaceName(PREFIX, tag, 'ul');
  }

  /** Builds the namespaces; pass `t` to have cleanup() registered with t.teardown first. */
  static async create(t?: { teardown(fn: () => Promise<void>): void }): Promise<TransportTopology> {
    const topology = new TransportTopology(randomTag());
    t?.teardown(() => topology.cleanup());
    try {
      await NetnsTopology.create(SPEC, { tag: topology.tag, teardown: (destroy) => (topology.destroyNamespaces = destroy) });
      topology.workDir = await mkdtemp(join(tmpdir(), `meshauth-transport-${topology.tag}-`));
    } catch (err) {
      if (!t) await topology.cleanup();
      throw err;
    }
    return topology;
  }

  node(id: 1 | 2): TopologyNode {
    return this.nodes[id - 1]!;
  }

  workload(id: 1 | 2): TopologyWorkload {
    return this.workloads[id - 1]!;
  }

  /** What a CNI would do: route the other node's pod CIDRs to it over the underlay. */
  async addUnderlayRoutes(): Promise<void> {
    for (const node of this.nodes) {
      const other = this.node(node.id === 1 ? 2 : 1);
      await ipBatch(node.netns, [
        `route add ${other.podCidrs[0]} via ${other.underlay.ipv4}`,
        `route add ${other.podCidrs[1]} via ${other.underlay.ipv6}`,
      ]);
    }
  }

  /**
   * Pings workload `to` from workload `from` (`count` echoes every `intervalS` seconds, waiting
   * at most `deadlineS`), each echo carrying PING_MARKER.
   */
  async ping(from: 1 | 2, to: 1 | 2, options: { count?: number; intervalS?: number; deadlineS?: number; family?: 4 | 6 } = {}): Promise<PingResult> {
    const target = options.family === 6 ? this.workload(to).ipv6 : this.workload(to).ipv4;
    const count = options.count ?? 1;
    const args = ['-n', '-q', '-c', String(count), '-i', String(options.intervalS ?? 0.2), '-p', PING_MARKER.toString('hex')];
    args.push('-w', String(options.deadlineS ?? Math.max(2, Math.ceil(count * (options.intervalS ?? 0.2)) + 2)), target);
    const result = await inNetns(this.workload(from).netns, 'ping', args, { reject: false });
    return parsePing(result.stdout);
  }

  /** One UDP datagram with `payload` from a workload (perl-base: small, and no name lookups). */
  async sendUdp(from: 1 | 2, to: 1 | 2, port: number, payload: string): Promise<void> {
    const script = 'use Socket; socket(my $s, PF_INET, SOCK_DGRAM, 0) or die $!; send($s, $ARGV[2], 0, pack_sockaddr_in($ARGV[1], inet_aton($ARGV[0]))) or die $!';
    await inNetns(this.workload(from).netns, 'perl', ['-e', script, this.workload(to).ipv4, String(port), payload]);
  }

  /** TCP throughput (Mbit/s) from workload `from` to workload `to`, measured by iperf3. */
  async iperf(from: 1 | 2, to: 1 | 2, seconds: number): Promise<number> {
    // --forceflush: without a terminal, iperf3 would hold back "Server listening" in its buffer.
    const serverArgs = nsenterArgs(this.workload(to).netns, 'iperf3', ['--server', '--one-off', '--forceflush']);
    const server = execa('nsenter', serverArgs, { reject: false, buffer: false, stdout: 'pipe' });
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('iperf3 server did not start within 30 s')), 30_000);
        server.stdout.on('data', (chunk: Buffer) => {
          if (chunk.toString().includes('Server listening')) {
            clearTimeout(timer);
            resolve();
          }
        });
        void server.then((result) => {
          clearTimeout(timer);
          reject(new Error(`iperf3 server exited: ${String(result.exitCode)}`));
        });
      });
      const client = await inNetns(this.workload(from).netns, 'iperf3', ['--client', this.workload(to).ipv4, '--time', String(seconds), '--json'], { timeout: (seconds + 30) * 1000 });
      const report = JSON.parse(client.stdout) as { end: { sum_received: { bits_per_second: number } } };
      return Math.round(report.end.sum_received.bits_per_second / 1e6);
    } finally {
      server.kill();
      await server;
    }
  }

  /** Starts tcpdump on an interface of a namespace; resolves once it is capturing. */
  async capture(netns: string, iface: string, filter: string[] = []): Promise<Capture> {
    const file = join(this.workDir!, `${netns}-${iface}-${randomBytes(3).toString('hex')}.pcap`);
    const capture = await Capture.start(netns, iface, file, filter);
    this.captures.add(capture);
    return capture;
  }

  async cleanup(): Promise<void> {
    await Promise.all([...this.captures].map((c) => c.stop().catch(() => undefined)));
    await this.destroyNamespaces();
    if (this.workDir) await rm(this.workDir, { recursive: true, force: true });
  }
}

const CAPTURE_OPTIONS = { stdin: 'ignore', stdout: 'ignore', stderr: 'pipe', buffer: false, reject: false } as const;

/** A running tcpdump writing a pcap file. */
export class Capture {
  private stopped: Promise<void> | undefined;

  private constructor(
    private readonly process: ResultPromise<typeof CAPTURE_OPTIONS>,
    readonly file: string,
  ) {}

  static async start(netns: string, iface: string, file: string, filter: string[]): Promise<Capture> {
    // --immediate-mode: packets reach tcpdump at once, not when a ring block fills or its 1 s
    // timeout ends; -Z root: Debian's tcpdump would drop to its own user before opening the file.
    const args = nsenterArgs(netns, 'tcpdump', ['-i', iface, '-n', '-U', '--immediate-mode', '-s', '0', '-Z', 'root', '-w', file, ...filter]);
    const process = execa('nsenter', args, CAPTURE_OPTIONS);
    let stderr = '';
    await new Promise<void>((resolve, reject) => {
      process.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
        if (stderr.includes('listening on')) resolve();
      });
      void process.then(() => reject(new Error(`tcpdump on ${netns}/${iface} exited: ${stderr}`)));
    });
    return new Capture(process, file);
  }

  /**
   * Stops the capture and returns the pcap bytes. It waits `settleMs` first: tcpdump drops what
   * is still in its socket buffer when SIGINT arrives, and a packet sent a moment ago may be.
   */
  async stop(settleMs = 500): Promise<Buffer> {
    this.stopped ??= (async () => {
      await new Promise((resolve) => setTimeout(resolve, settleMs));
      this.process.kill('SIGINT');
      await this.process;
    })();
    await this.stopped;
    return existsSync(this.file) ? readFile(this.file) : Buffer.alloc(0);
  }

  /** How many captured packets match a tcpdump filter expression ("esp", "udp port 51820"). */
  async count(filter: string[]): Promise<number> {
    await this.stop();
    const { stdout } = await execa('tcpdump', ['-n', '-r', this.file, ...filter], { reject: false, stderr: 'ignore' });
    return stdout.split('\n').filter(Boolean).length;
  }
}
