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
// Built by the namespace builder (src/netns), with a random tag (two topologies coexist);
// interface names are local to their namespace. teardown() kills the processes left inside the
// namespaces (agents, wireguard-go, probes) and deletes them, and is idempotent.
import { IPV4_FORWARDING, IPV6_OFF, NetnsTopology, RP_FILTER_OFF, namespaceNames, type TopologySpec } from '../netns/topology.js';

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

export class Topology {
  readonly nodes: TopologyNode[];

  private constructor(
    private readonly built: NetnsTopology,
    specs: readonly [NodeSpec, NodeSpec],
  ) {
    this.nodes = specs.map((spec) => ({
      name: spec.name,
      address: spec.address,
      podCidr: spec.podCidr,
      netns: built.netns(spec.name),
      underlayInterface: UNDERLAY_INTERFACE,
      gateway: firstAddress(spec.podCidr),
      workloads: spec.workloads.map((w) => ({ ...w, node: spec.name, netns: built.netns(w.name), hostInterface: hostInterfaceOf(w) })),
    }));
  }

  /** The namespaces a topology with this tag and prefix uses (for cleaning up after a crash). */
  static namespacesOf(prefix: string, tag: string, specs: readonly [NodeSpec, NodeSpec]): string[] {
    return namespaceNames(describe(prefix, specs), tag);
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
    return new Topology(await NetnsTopology.create(describe(options.prefix ?? 'meshauth', specs), { tag: options.tag }), specs);
  }

  get tag(): string {
    return this.built.tag;
  }

  get prefix(): string {
    return this.built.spec.prefix;
  }

  get namespaces(): string[] {
    return this.built.namespaces;
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
  teardown(): Promise<void> {
    return this.built.destroy();
  }
}

function hostInterfaceOf(workload: WorkloadSpec): string {
  return `h-${workload.name}`;
}

/** The demo's layout as a namespace topology: nodes joined by one underlay veth, each workload
 *  behind a host-side veth of its node, IPv4 only. */
function describe(prefix: string, specs: readonly [NodeSpec, NodeSpec]): TopologySpec {
  const [a, b] = specs;
  const ipv4Only = { ...IPV6_OFF, ...RP_FILTER_OFF };
  return {
    prefix,
    namespaces: specs.flatMap((node) => {
      const gateway = firstAddress(node.podCidr);
      return [
        { name: node.name, sysctls: { ...ipv4Only, ...IPV4_FORWARDING }, routes: node.workloads.map((w) => ({ to: `${w.ip}/32`, dev: hostInterfaceOf(w) })) },
        ...node.workloads.map((w) => ({
          name: w.name,
          sysctls: ipv4Only,
          routes: [
            { to: gateway, dev: 'eth0', scope: 'link' as const },
            { to: 'default', via: gateway, dev: 'eth0' },
          ],
        })),
      ];
    }),
    veths: [
      { ends: [underlayEnd(a), underlayEnd(b)] },
      ...specs.flatMap((node) =>
        node.workloads.map((w) => ({
          ends: [
            { netns: node.name, name: hostInterfaceOf(w), mtu: WORKLOAD_MTU, addresses: [`${firstAddress(node.podCidr)}/32`] },
            { netns: w.name, name: 'eth0', mtu: WORKLOAD_MTU, addresses: [`${w.ip}/32`] },
          ] as const,
        })),
      ),
    ],
  };
}

function underlayEnd(node: NodeSpec) {
  return { netns: node.name, name: UNDERLAY_INTERFACE, addresses: [`${node.address}/24`] };
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
