// A private two-node cluster in network namespaces, for privileged tests:
//
//   w1a  w1b            w2a  w2b       workload namespaces, eth0 each
//    |    |              |    |
//   hw1a hw1b --nlink-- hw2a hw2b     node namespaces n1, n2 (hw* = host side of the workload)
//
// Workload wNX has 10.N.X.2/24 and fd00:N:X::2/64 (X: a=1, b=2), default routes via .1 / ::1
// on the host side; the nodes route each other's 10.N.0.0/16 and fd00:N::/32 over nlink.
// Namespace names carry a random tag, so tests can run side by side; addresses live only
// inside those namespaces. cleanup() (registered with t.teardown by create) kills the probes,
// removes every namespace and any pin directory the test used, also after a failure.
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { execa, type ResultPromise } from 'execa';
import { waitForLinksUp } from '../../src/demo/topology.js';

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

async function ipBatch(netns: string, lines: string[]): Promise<void> {
  await execa('ip', ['-n', netns, '-batch', '-'], { input: `${lines.join('\n')}\n` });
}

/** Runs a command inside a network namespace (nsenter: keeps the host's /sys and bpffs). */
export function inNetns(netns: string, command: string, args: string[]) {
  return execa('nsenter', [`--net=/run/netns/${netns}`, command, ...args]);
}

/**
 * Sysctls for fresh test namespaces, before any interface exists: no DAD delay on link-local
 * addresses, no router solicitations, and the unsolicited MLD reports sent at once (they go to
 * ff02::16, an address the gate does not know) so that they are over before a test attaches the
 * gate and counts packets. `routers` also forward IPv4 and IPv6.
 */
export async function prepareNamespaces(namespaces: readonly string[], routers: readonly string[]): Promise<void> {
  await Promise.all(
    namespaces.map((ns) =>
      inNetns(ns, 'sysctl', [
        '-q',
        '-w',
        'net.ipv6.conf.all.accept_dad=0',
        'net.ipv6.conf.default.accept_dad=0',
        'net.ipv6.conf.default.router_solicitations=0',
        'net.ipv6.conf.default.mldv1_unsolicited_report_interval=1',
        'net.ipv6.conf.default.mldv2_unsolicited_report_interval=1',
        ...(routers.includes(ns) ? ['net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1'] : []),
      ]),
    ),
  );
}

export class Topology {
  readonly nodes: [TestNode, TestNode];
  readonly workloads: Workload[] = [];
  private readonly namespaces: string[];
  private readonly extraPinDirs: string[] = [];

  private constructor(readonly tag: string) {
    const node = (id: 1 | 2): TestNode => ({
      id,
      netns: `ma-${tag}-n${id}`,
      pinDir: `/sys/fs/bpf/meshauth-test-${tag}-n${id}`,
    });
    this.nodes = [node(1), node(2)];
    this.namespaces = this.nodes.map((n) => n.netns);
  }

  /** Builds the topology; `t.teardown` gets cleanup() before anything is created. */
  static async create(t: { teardown(fn: () => Promise<void>): void }): Promise<Topology> {
    const topology = new Topology(randomBytes(4).toString('hex'));
    t.teardown(() => topology.cleanup());
    await topology.build();
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

  private async build(): Promise<void> {
    const workloadNs = (node: number, x: string) => `ma-${this.tag}-w${node}${x}`;
    for (const node of [1, 2]) for (const x of ['a', 'b']) this.namespaces.push(workloadNs(node, x));
    await execa('ip', ['-batch', '-'], { input: this.namespaces.map((ns) => `netns add ${ns}`).join('\n') + '\n' });
    await prepareNamespaces(this.namespaces, this.nodes.map((n) => n.netns));
    const n2 = this.nodes[1];
    for (const node of this.nodes) {
      const other = node.id === 1 ? 2 : 1;
      const lines = ['link set lo up'];
      // Explicit, distinct ifindexes: a veth whose ifindex equals its peer's gets its carrier
      // change through the kernel's rate-limited (up to 1 s) linkwatch path, and IPv6 waits for it.
      if (node.id === 1) lines.push(`link add name nlink index 100 type veth peer name nlink index 200 netns ${n2.netns}`);
      lines.push(
        `addr add 10.200.0.${node.id}/24 dev nlink`,
        `addr add fd00:200::${node.id}/64 dev nlink nodad`,
        'link set nlink up',
        `route add 10.${other}.0.0/16 via 10.200.0.${other}`,
        `route add fd00:${other}::/32 via fd00:200::${other}`,
      );
      for (const [x, subnet] of [['a', 1], ['b', 2]] as const) {
        const host = `hw${node.id}${x}`;
        lines.push(
          `link add name ${host} index ${10 * node.id + subnet} type veth peer name eth0 netns ${workloadNs(node.id, x)}`,
          `addr add 10.${node.id}.${subnet}.1/24 dev ${host}`,
          `addr add fd00:${node.id}:${subnet}::1/64 dev ${host} nodad`,
          `link set ${host} up`,
        );
      }
      await ipBatch(node.netns, lines);
    }
    await Promise.all(
      this.nodes.flatMap((node) =>
        (['a', 'b'] as const).map(async (x) => {
          const subnet = x === 'a' ? 1 : 2;
          const netns = workloadNs(node.id, x);
          const ipv4 = `10.${node.id}.${subnet}.2`;
          const ipv6 = `fd00:${node.id}:${subnet}::2`;
          await ipBatch(netns, [
            'link set lo up',
            `addr add ${ipv4}/24 dev eth0`,
            `addr add ${ipv6}/64 dev eth0 nodad`,
            'link set eth0 up',
            `route add default via 10.${node.id}.${subnet}.1`,
            `route add default via fd00:${node.id}:${subnet}::1`,
          ]);
          this.workloads.push({
            name: `w${node.id}${x}`,
            node: node.id,
            netns,
            hostInterface: { name: `hw${node.id}${x}`, netns: node.netns },
            ipv4,
            ipv6,
            probe: await Probe.start(netns),
          });
        }),
      ),
    );
    this.workloads.sort((a, b) => a.name.localeCompare(b.name));
    await waitForLinksUp(this.namespaces);
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
        const ping = await execa(
          'nsenter',
          [`--net=/run/netns/${from.netns}`, 'ping', '-n', '-q', '-c', '1', '-W', String(timeoutMs / 1000), dst],
          { reject: false },
        );
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
    for (const ns of this.namespaces) {
      if (existsSync(`/run/netns/${ns}`)) await execa('ip', ['netns', 'del', ns], { reject: false });
    }
  }
}

const PROBE_OPTIONS = { buffer: false, reject: false, stdin: 'pipe', stdout: 'pipe', stderr: 'inherit' } as const;

/** The python traffic probe (netns-probe.py) inside one workload namespace. */
export class Probe {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (reply: unknown) => void; reject: (err: Error) => void }>();

  private constructor(private readonly process: ResultPromise<typeof PROBE_OPTIONS>) {}

  static async start(netns: string): Promise<Probe> {
    const child = execa('nsenter', [`--net=/run/netns/${netns}`, 'python3', '-u', PROBE_SCRIPT], PROBE_OPTIONS);
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
