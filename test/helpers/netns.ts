// A private two-node cluster in network namespaces, for privileged tests:
//
//   w1a  w1b            w2a  w2b       workload namespaces, eth0 each
//    |    |              |    |
//   hw1a hw1b --nlink-- hw2a hw2b     node namespaces n1, n2 (hw* = host side of the workload)
//
// Workload wNX has 10.N.X.2/24 and fd00:N:X::2/64 (X: a=1, b=2), default routes via .1 / ::1
// on the host side; the nodes route each other's 10.N.0.0/16 and fd00:N::/32 over nlink.
// Built by the namespace builder (src/netns): names carry a random tag, so tests can run side by
// side; addresses live only inside those namespaces. cleanup() (registered with t.teardown by
// create) kills the probes, removes every namespace and any pin directory the test used, also
// after a failure.
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { inNetns, nsenterArgs } from '../../src/netns/exec.js';
import { FORWARDING, NetnsTopology, QUIET_IPV6, namespaceName, randomTag, type TopologySpec, type VethEnd } from '../../src/netns/topology.js';

export type Protocol = 'tcp' | 'udp' | 'icmp' | 'raw';
export type Family = 4 | 6;

export interface Workload {
  /** 'w1a', 'w1b', 'w2a', 'w2b' */
  name: string;
  node: 1 | 2;
  netns: string;
  /** Host-side interface and the node namespace holding it: where the gate attaches. */
  hostInterface: { name: string; netns: string };
  ipv4: string;
  ipv6: string;
  probe: Probe;
}

export interface TestNode {
  id: 1 | 2;
  netns: string;
  /** A bpffs pin directory reserved for this node's datapath; removed by cleanup(). */
  pinDir: string;
}

// Resolved in the source tree, so the compiled helper (dist/test/helpers, used by the benches)
// finds the script too.
const PROBE_SCRIPT = fileURLToPath(new URL(import.meta.url.includes('/dist/test/') ? '../../../test/helpers/netns-probe.py' : './netns-probe.py', import.meta.url));

const PREFIX = 'ma';
/** Each workload: its node, its letter, and its subnet on that node. */
const WORKLOADS = [1, 2].flatMap((node) => (['a', 'b'] as const).map((x, i) => ({ node: node as 1 | 2, name: `w${node}${x}`, subnet: i + 1 })));

function nodeLinkEnd(id: 1 | 2): VethEnd {
  return { netns: `n${id}`, name: 'nlink', index: 100 * id, addresses: [`10.200.0.${id}/24`, `fd00:200::${id}/64`] };
}

/** The cluster as a namespace topology. */
const SPEC: TopologySpec = {
  prefix: PREFIX,
  namespaces: [
    ...[1, 2].map((id) => {
      const other = 3 - id;
      return {
        name: `n${id}`,
        sysctls: { ...QUIET_IPV6, ...FORWARDING },
        routes: [
          { to: `10.${other}.0.0/16`, via: `10.200.0.${other}` },
          { to: `fd00:${other}::/32`, via: `fd00:200::${other}` },
        ],
      };
    }),
    ...WORKLOADS.map((w) => ({
      name: w.name,
      sysctls: QUIET_IPV6,
      routes: [
        { to: 'default', via: `10.${w.node}.${w.subnet}.1` },
        { to: 'default', via: `fd00:${w.node}:${w.subnet}::1` },
      ],
    })),
  ],
  veths: [
    { ends: [nodeLinkEnd(1), nodeLinkEnd(2)] },
    ...WORKLOADS.map((w) => ({
      ends: [
        // Explicit ifindexes, distinct from their peers' (see VethEnd.index).
        { netns: `n${w.node}`, name: `h${w.name}`, index: 10 * w.node + w.subnet, addresses: [`10.${w.node}.${w.subnet}.1/24`, `fd00:${w.node}:${w.subnet}::1/64`] },
        { netns: w.name, name: 'eth0', addresses: [`10.${w.node}.${w.subnet}.2/24`, `fd00:${w.node}:${w.subnet}::2/64`] },
      ] as const,
    })),
  ],
};

export class Topology {
  readonly nodes: [TestNode, TestNode];
  readonly workloads: Workload[] = [];
  private readonly extraPinDirs: string[] = [];
  private destroyNamespaces: () => Promise<void> = async () => {};

  private constructor(readonly tag: string) {
    const node = (id: 1 | 2): TestNode => ({
      id,
      netns: namespaceName(PREFIX, tag, `n${id}`),
      pinDir: `/sys/fs/bpf/meshauth-test-${tag}-n${id}`,
    });
    this.nodes = [node(1), node(2)];
  }

  /** Builds the topology; `t.teardown` gets cleanup() before anything is created. */
  static async create(t: { teardown(fn: () => Promise<void>): void }): Promise<Topology> {
    const topology = new Topology(randomTag());
    t.teardown(() => topology.cleanup());
    const built = await NetnsTopology.create(SPEC, { tag: topology.tag, teardown: (destroy) => (topology.destroyNamespaces = destroy) });
    await Promise.all(
      WORKLOADS.map(async (w) => {
        const netns = built.netns(w.name);
        topology.workloads.push({
          name: w.name,
          node: w.node,
          netns,
          hostInterface: { name: `h${w.name}`, netns: built.netns(`n${w.node}`) },
          ipv4: `10.${w.node}.${w.subnet}.2`,
          ipv6: `fd00:${w.node}:${w.subnet}::2`,
          probe: await Probe.start(netns),
        });
      }),
    );
    topology.workloads.sort((a, b) => a.name.localeCompare(b.name));
    return topology;
  }

  workload(name: string): Workload {
    const found = this.workloads.find((w) => w.name === name);
    if (!found) throw new Error(`no workload ${name}`);
    return found;
  }

  node(id: 1 | 2): TestNode {
    return this.nodes[id - 1]!;
  }

  /** Another pin directory removed by cleanup() (e.g. a second agent on the same node). */
  reservePinDir(label: string): string {
    const dir = `/sys/fs/bpf/meshauth-test-${this.tag}-${label}`;
    this.extraPinDirs.push(dir);
    return dir;
  }

  /**
   * Whether one packet (UDP, raw protocol 253), one echo (ICMP/ICMPv6) or one TCP handshake
   * gets from `from` to `to` within timeoutMs.
   */
  async reaches(from: Workload, to: Workload, protocol: Protocol, family: Family, timeoutMs = 400): Promise<boolean> {
    const dst = family === 4 ? to.ipv4 : to.ipv6;
    switch (protocol) {
      case 'udp':
      case 'raw': {
        const token = `${protocol}-${randomBytes(6).toString('hex')}`;
        await from.probe.request({ op: 'send', proto: protocol, dst, token });
        return (await to.probe.request<{ ok: boolean }>({ op: 'wait', token, timeout_ms: timeoutMs })).ok;
      }
      case 'tcp':
        return (await from.probe.request<{ ok: boolean }>({ op: 'tcp', dst, timeout_ms: timeoutMs })).ok;
      case 'icmp': {
        const ping = await inNetns(from.netns, 'ping', ['-n', '-q', '-c', '1', '-W', String(timeoutMs / 1000), dst], { reject: false });
        return ping.exitCode === 0;
      }
    }
  }

  /** Kills the probes, uninstalls any gate left in the reserved pin dirs, deletes the namespaces. */
  async cleanup(): Promise<void> {
    await Promise.all(this.workloads.map((w) => w.probe.stop()));
    for (const pinDir of [...this.nodes.map((n) => n.pinDir), ...this.extraPinDirs]) {
      // Pins outlive the namespaces; the filters go away with the namespaces' interfaces.
      if (existsSync(pinDir)) await rm(pinDir, { recursive: true, force: true });
    }
    await this.destroyNamespaces();
  }
}

const PROBE_OPTIONS = { buffer: false, reject: false, stdin: 'pipe', stdout: 'pipe', stderr: 'inherit' } as const;

/** The python traffic probe (netns-probe.py) inside one workload namespace. */
export class Probe {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (reply: unknown) => void; reject: (err: Error) => void }>();

  private constructor(private readonly process: ResultPromise<typeof PROBE_OPTIONS>) {}

  static async start(netns: string): Promise<Probe> {
    const child = execa('nsenter', nsenterArgs(netns, 'python3', ['-u', PROBE_SCRIPT]), PROBE_OPTIONS);
    const probe = new Probe(child);
    child.stdin.on('error', () => {}); // a dead probe fails its pending requests below instead
    const lines = createInterface({ input: child.stdout });
    const ready = new Promise<void>((resolve, reject) => {
      lines.on('line', (line) => {
        const message = JSON.parse(line) as { id?: number; ready?: boolean; error?: string };
        if (message.ready) return resolve();
        const waiter = probe.pending.get(message.id ?? -1);
        probe.pending.delete(message.id ?? -1);
        if (message.error) waiter?.reject(new Error(`probe in ${netns}: ${message.error}`));
        else waiter?.resolve(message);
      });
      void child.then((result) => {
        const err = new Error(`probe in ${netns} exited (${result.exitCode ?? result.signal})`);
        reject(err);
        for (const waiter of probe.pending.values()) waiter.reject(err);
        probe.pending.clear();
      });
    });
    await ready;
    return probe;
  }

  request<T = Record<string, unknown>>(command: Record<string, unknown>): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: (reply) => resolve(reply as T), reject });
      this.process.stdin.write(`${JSON.stringify({ ...command, id })}\n`);
    });
  }

  async stop(): Promise<void> {
    this.process.kill('SIGKILL');
    await this.process;
  }
}
