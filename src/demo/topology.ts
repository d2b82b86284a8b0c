// Two "nodes" and their workloads in network namespaces, for the demo and the end-to-end tests:
//
//   web 10.77.1.2   api 10.77.1.3                 db 10.77.2.2   rogue 10.77.2.3     workload namespaces (eth0)
//        |               |                              |              |
//      h-web           h-api      <node-a>    <node-b>  h-db          h-rogue         host-side veths (gate here)
//                 192.168.77.1 ul0 ------------- ul0 192.168.77.2                     the underlay
//
// (the addresses and names are the caller's; these are the demo's). Each workload has its pod IP
// as a /32 and a default route via the first address of its node's pod CIDR, which every
// host-side veth of that node carries (as Calico does), so the node routes each pod IP to its
// veth. Nothing routes pod CIDRs between nodes: the meshauth agent's WireGuard interface does,
// once a node handshake has programmed the peer. IPv6 is off in every namespace, so the
// underlay carries only what the demo sends (and ARP).
//
// Namespace names carry a random tag (two topologies coexist), interface names are local to
// their namespace. Everything lives inside namespaces this module creates; teardown() kills the
// processes left inside them (agents, wireguard-go, probes) and deletes them, and is idempotent.
import { existsSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';

export interface WorkloadSpec {
  /** Short name, used in namespace and interface names: [a-z0-9-], at most 10 characters. */
  name: string;
  /** The pod IP (IPv4), inside its node's pod CIDR. */
  ip: string;
}

export interface NodeSpec {
  name: string;
  /** Underlay address (IPv4); the two nodes share one /24. */
  address: string;
  /** Pod CIDR (IPv4) holding the node's workloads. */
  podCidr: string;
  workloads: WorkloadSpec[];
}

export interface TopologyWorkload extends WorkloadSpec {
  node: string;
  netns: string;
  /** The host-side veth in the node namespace: where the gate attaches. */
  hostInterface: string;
}

export interface TopologyNode extends Omit<NodeSpec, 'workloads'> {
  netns: string;
  /** The underlay veth inside the node namespace. */
  underlayInterface: string;
  /** The pod CIDR's first address: the workloads' gateway, on every host-side veth. */
  gateway: string;
  workloads: TopologyWorkload[];
}

/** The MTU of the workload veths: room for WireGuard's overhead on a 1500-byte underlay, as CNIs
 *  set it, so no packet needs path-MTU discovery (whose ICMP the gate would not let through). */
export const WORKLOAD_MTU = 1420;
const UNDERLAY_INTERFACE = 'ul0';
const NAME = /^[a-z0-9-]{1,10}$/;

/** argv of a command run inside a namespace. nsenter enters only the network namespace, so the
 *  command keeps the host's /sys and bpffs pins (`ip netns exec` would give it a fresh /sys). */
export function nsenterArgs(netns: string, command: string, args: readonly string[]): string[] {
  return [`--net=/run/netns/${netns}`, command, ...args];
}

export function inNetns(netns: string, command: string, args: readonly string[], options: { input?: string; reject?: boolean; timeout?: number } = {}) {
  return execa('nsenter', nsenterArgs(netns, command, args), { input: options.input, reject: options.reject ?? true, timeout: options.timeout });
}

export function randomTag(): string {
  return randomBytes(3).toString('hex');
}

export class Topology {
  readonly nodes: TopologyNode[];
  private readonly created: string[] = [];
  private tornDown = false;

  private constructor(
    readonly tag: string,
    readonly prefix: string,
    specs: readonly [NodeSpec, NodeSpec],
  ) {
    this.nodes = specs.map((spec) => {
      const netns = `${prefix}-${tag}-${spec.name}`;
      return {
        name: spec.name,
        address: spec.address,
        podCidr: spec.podCidr,
        netns,
        underlayInterface: UNDERLAY_INTERFACE,
        gateway: firstAddress(spec.podCidr),
        workloads: spec.workloads.map((w) => ({ ...w, node: spec.name, netns: `${prefix}-${tag}-${w.name}`, hostInterface: `h-${w.name}` })),
      };
    });
  }

  /** The namespaces a topology with this tag and prefix uses (for cleaning up after a crash). */
  static namespacesOf(prefix: string, tag: string, specs: readonly NodeSpec[]): string[] {
    return specs.flatMap((spec) => [`${prefix}-${tag}-${spec.name}`, ...spec.workloads.map((w) => `${prefix}-${tag}-${w.name}`)]);
  }

  /**
   * Builds the two nodes and their workloads. On failure whatever was made is torn down before
   * the error is thrown.
   */
  static async create(specs: readonly [NodeSpec, NodeSpec], options: { tag?: string; prefix?: string } = {}): Promise<Topology> {
    for (const spec of specs) {
      for (const name of [spec.name, ...spec.workloads.map((w) => w.name)]) {
        if (!NAME.test(name)) throw new Error(`topology: bad name ${JSON.stringify(name)} (1-10 of a-z 0-9 -)`);
      }
    }
    const topology = new Topology(options.tag ?? randomTag(), options.prefix ?? 'meshauth', specs);
    try {
      await topology.build();
    } catch (err) {
      await topology.teardown();
      throw err;
    }
    return topology;
  }

  get namespaces(): string[] {
    return this.nodes.flatMap((node) => [node.netns, ...node.workloads.map((w) => w.netns)]);
  }

  get workloads(): TopologyWorkload[] {
    return this.nodes.flatMap((node) => node.workloads);
  }

  node(name: string): TopologyNode {
    const node = this.nodes.find((n) => n.name === name);
    if (!node) throw new Error(`topology: no node ${name}`);
    return node;
  }

  workload(name: string): TopologyWorkload {
    const workload = this.workloads.find((w) => w.name === name);
    if (!workload) throw new Error(`topology: no workload ${name}`);
    return workload;
  }

  /** Kills every process left in the namespaces, then deletes them. Safe to call again. */
  async teardown(): Promise<void> {
    this.tornDown = true;
    await removeNamespaces(this.created);
    this.created.length = 0;
  }

  private async build(): Promise<void> {
    const [a, b] = this.nodes as [TopologyNode, TopologyNode];
    for (const netns of this.namespaces) {
      if (this.tornDown) throw new Error('topology: torn down while it was being built');
      await execa('ip', ['netns', 'add', netns]);
      this.created.push(netns);
    }
    await Promise.all(
      this.namespaces.map((netns) => {
        const isNode = this.nodes.some((node) => node.netns === netns);
        return inNetns(netns, 'sysctl', [
          '-q',
          '-w',
          'net.ipv6.conf.all.disable_ipv6=1',
          'net.ipv6.conf.default.disable_ipv6=1',
          'net.ipv4.conf.all.rp_filter=0',
          'net.ipv4.conf.default.rp_filter=0',
          ...(isNode ? ['net.ipv4.ip_forward=1'] : []),
        ]);
      }),
    );
    await ipBatch(a.netns, [`link add name ${a.underlayInterface} type veth peer name ${b.underlayInterface} netns ${b.netns}`]);
    for (const node of this.nodes) {
      const lines = ['link set lo up', `addr add ${node.address}/24 dev ${node.underlayInterface}`, `link set ${node.underlayInterface} up`];
      for (const w of node.workloads) {
        lines.push(
          `link add name ${w.hostInterface} mtu ${WORKLOAD_MTU} type veth peer name eth0 mtu ${WORKLOAD_MTU} netns ${w.netns}`,
          `addr add ${node.gateway}/32 dev ${w.hostInterface}`,
          `link set ${w.hostInterface} up`,
          `route add ${w.ip}/32 dev ${w.hostInterface}`,
        );
      }
      await ipBatch(node.netns, lines);
      await Promise.all(
        node.workloads.map((w) =>
          ipBatch(w.netns, [
            'link set lo up',
            `addr add ${w.ip}/32 dev eth0`,
            'link set eth0 up',
            `route add ${node.gateway} dev eth0 scope link`,
            `route add default via ${node.gateway} dev eth0`,
          ]),
        ),
      );
    }
    await waitForLinksUp(this.namespaces);
  }

}

/** Waits until every link but lo in these namespaces is operationally up: IPv6 ignores an
 *  interface until then, so traffic sent earlier is lost. */
export async function waitForLinksUp(namespaces: readonly string[], timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (const netns of namespaces) {
    for (;;) {
      const { stdout } = await execa('ip', ['-n', netns, '-j', 'link', 'show']);
      const links = JSON.parse(stdout) as { ifname: string; operstate: string }[];
      if (links.every((link) => link.ifname === 'lo' || link.operstate === 'UP')) break;
      if (Date.now() > deadline) throw new Error(`topology: links in ${netns} did not come up: ${stdout}`);
      await sleep(20);
    }
  }
}

/**
 * Kills the processes inside these namespaces (only processes started in them: ours) and deletes
 * the namespaces. A namespace that does not exist is skipped.
 */
export async function removeNamespaces(namespaces: readonly string[]): Promise<void> {
  await killNamespaceProcesses(namespaces);
  for (const netns of namespaces) {
    if (existsSync(`/run/netns/${netns}`)) await execa('ip', ['netns', 'del', netns], { reject: false });
  }
}

/** SIGKILLs every process inside these namespaces (only processes started in them: ours). */
export async function killNamespaceProcesses(namespaces: readonly string[]): Promise<void> {
  const existing = namespaces.filter((netns) => existsSync(`/run/netns/${netns}`));
  for (let round = 0; round < 100; round++) {
    const pids = (await Promise.all(existing.map(namespacePids))).flat();
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await sleep(20);
  }
}

async function namespacePids(netns: string): Promise<number[]> {
  const result = await execa('ip', ['netns', 'pids', netns], { reject: false });
  return result.exitCode === 0 ? result.stdout.split('\n').filter(Boolean).map(Number) : [];
}

async function ipBatch(netns: string, lines: string[]): Promise<void> {
  await execa('ip', ['-n', netns, '-batch', '-'], { input: `${lines.join('\n')}\n` });
}

function firstAddress(cidr: string): string {
  const [address = '', bits = ''] = cidr.split('/');
  const octets = address.split('.').map(Number);
  const prefix = Number(bits);
  if (octets.length !== 4 || octets.some((o) => !Number.isInteger(o) || o < 0 || o > 255) || !Number.isInteger(prefix) || prefix < 1 || prefix > 30) {
    throw new Error(`topology: expected an IPv4 pod CIDR of /1 to /30, got ${JSON.stringify(cidr)}`);
  }
  const value = octets.reduce((sum, o) => sum * 256 + o, 0);
  const network = value - (value % 2 ** (32 - prefix));
  const first = network + 1;
  return [24, 16, 8, 0].map((shift) => Math.floor(first / 2 ** shift) % 256).join('.');
}
