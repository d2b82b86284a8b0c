// The one builder of network-namespace topologies (the demo's two nodes, the gate and transport
// tests' clusters, the cluster and CNI tests): a topology is described as data — namespaces with
// their sysctls, bridges and routes, veth pairs between them (or to the host) with addresses —
// and create() makes it all, in an order that works for any description:
//
//   1. the namespaces, one by one, each remembered once it exists;
//   2. their sysctls, before any interface exists (so `default` settings reach every interface);
//   3. lo up and the bridges;
//   4. the veth pairs, from the first end's namespace;
//   5. bridge ports, addresses (IPv6 without DAD: nothing here wants its delay) and links up;
//   6. the routes, in the order given (a gateway's own route before a route via it);
//   7. a wait until every link is operationally up (IPv6 drops what is sent before).
//
// Namespace names are `<prefix>-<tag>-<name>` with a random tag, so topologies coexist and their
// names are unique on the host. destroy() kills the processes left inside, deletes the namespaces
// and the host-side links it made, and is safe to call again and after a create that failed
// half-way (create itself calls it before rethrowing).
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { COMMAND_TIMEOUT_MS } from '../util/command-timeout.js';
import { removeNamespaces } from './cleanup.js';
import { inNetns, ipBatch, type RunOptions } from './exec.js';

/** Sysctls by key (`net.ipv4.ip_forward`), written in the order given. */
export type Sysctls = Readonly<Record<string, string | number>>;

/** IPv6 quiet from the start: no DAD delay on link-local addresses, no router solicitations, and
 *  the unsolicited MLD reports sent at once, so that they are over before a test counts packets. */
export const QUIET_IPV6: Sysctls = {
  'net.ipv6.conf.all.accept_dad': 0,
  'net.ipv6.conf.default.accept_dad': 0,
  'net.ipv6.conf.default.router_solicitations': 0,
  'net.ipv6.conf.default.mldv1_unsolicited_report_interval': 1,
  'net.ipv6.conf.default.mldv2_unsolicited_report_interval': 1,
};

/** No IPv6 at all: the namespace sends only what its user sends (and ARP). */
export const IPV6_OFF: Sysctls = { 'net.ipv6.conf.all.disable_ipv6': 1, 'net.ipv6.conf.default.disable_ipv6': 1 };

/** No reverse-path filter: a node accepts what arrives on an interface it would not route back by. */
export const RP_FILTER_OFF: Sysctls = { 'net.ipv4.conf.all.rp_filter': 0, 'net.ipv4.conf.default.rp_filter': 0 };

export const IPV4_FORWARDING: Sysctls = { 'net.ipv4.ip_forward': 1 };
export const FORWARDING: Sysctls = { ...IPV4_FORWARDING, 'net.ipv6.conf.all.forwarding': 1 };

export interface RouteSpec {
  /** A prefix, an address or `default`. */
  to: string;
  via?: string;
  dev?: string;
  scope?: 'link';
}

export interface NamespaceSpec {
  /** Unique in the topology: [A-Za-z0-9_.-]. */
  name: string;
  sysctls?: Sysctls;
  /** Bridges made (and set up) in this namespace; veth ends join one with `master`. */
  bridges?: readonly BridgeSpec[];
  routes?: readonly RouteSpec[];
}

export interface BridgeSpec {
  name: string;
  /** CIDRs (a gateway address, as a bridge CNI gives its bridge). */
  addresses?: readonly string[];
}

export interface VethEnd {
  /** The namespace (its name in the spec); omitted: the host's own namespace. */
  netns?: string;
  /** The interface name (at most 15 characters; on the host, make it unique with the tag). */
  name: string;
  /** An explicit ifindex. The two ends of a pair must not share one: a veth whose ifindex equals
   *  its peer's gets its carrier through the kernel's rate-limited (up to 1 s) linkwatch path.
   *  The kernel takes the peer's index only when the first end (the host's, if one is there)
   *  has one too. */
  index?: number;
  mtu?: number;
  /** A bridge of the same namespace to join. */
  master?: string;
  /** CIDRs (10.1.1.1/24, fd00::1/64). */
  addresses?: readonly string[];
}

export interface VethSpec {
  ends: readonly [VethEnd, VethEnd];
}

export interface TopologySpec {
  /** The first part of every namespace name. */
  prefix: string;
  namespaces: readonly NamespaceSpec[];
  veths?: readonly VethSpec[];
}

const SHORT_NAME = /^[A-Za-z0-9_.-]{1,64}$/;
const INTERFACE_NAME = /^[A-Za-z0-9_.-]{1,15}$/;

export function randomTag(): string {
  return randomBytes(3).toString('hex');
}

/** The namespace names a spec gets with this tag, in the spec's order (for a manifest written
 *  before create, so a crash in between leaves nothing unnamed). */
export function namespaceNames(spec: TopologySpec, tag: string): string[] {
  return spec.namespaces.map((ns) => namespaceName(spec.prefix, tag, ns.name));
}

/** The full name of namespace `name` of a topology with this prefix and tag. */
export function namespaceName(prefix: string, tag: string, name: string): string {
  return `${prefix}-${tag}-${name}`;
}

export class NetnsTopology {
  /** Namespaces (full names) that exist because of this topology, in creation order. */
  private readonly created: string[] = [];
  private readonly hostLinks: string[] = [];
  private destroying = false;

  private constructor(
    readonly spec: TopologySpec,
    readonly tag: string,
  ) {}

  /**
   * Makes the topology. `teardown` (ava's t.teardown, or any hook) gets destroy() before anything
   * is made; whatever happens, a failed create has destroyed what it made before it throws.
   */
  static async create(spec: TopologySpec, options: { tag?: string; teardown?: (fn: () => Promise<void>) => void } = {}): Promise<NetnsTopology> {
    checkSpec(spec);
    const topology = new NetnsTopology(spec, options.tag ?? randomTag());
    options.teardown?.(() => topology.destroy());
    try {
      await topology.build();
    } catch (err) {
      await topology.destroy();
      throw err;
    }
    return topology;
  }

  /** Every namespace's full name, in the spec's order. */
  get namespaces(): string[] {
    return namespaceNames(this.spec, this.tag);
  }

  /** The full name of a namespace of the spec. */
  netns(name: string): string {
    if (!this.spec.namespaces.some((ns) => ns.name === name)) throw new Error(`topology: no namespace ${name}`);
    return namespaceName(this.spec.prefix, this.tag, name);
  }

  /** Runs a command inside a namespace of the spec. */
  run(name: string, command: string, args: readonly string[], options?: RunOptions) {
    return inNetns(this.netns(name), command, args, options);
  }

  /** Kills every process left in the namespaces, deletes them and the host-side links made.
   *  Safe to call again, and while create is under way (create then fails). */
  async destroy(): Promise<void> {
    this.destroying = true;
    const namespaces = this.created.splice(0);
    const hostLinks = this.hostLinks.splice(0);
    await removeNamespaces(namespaces);
    // A host-side veth goes with its peer's namespace; one whose peer was never moved would not.
    for (const link of hostLinks) await execa('ip', ['link', 'del', link], { reject: false, timeout: COMMAND_TIMEOUT_MS });
  }

  private async build(): Promise<void> {
    const veths = this.spec.veths ?? [];
    const full = (name: string | undefined) => (name === undefined ? undefined : this.netns(name));
    for (const netns of this.namespaces) {
      if (this.destroying) throw new Error('topology: destroyed while it was being created');
      await execa('ip', ['netns', 'add', netns], { timeout: COMMAND_TIMEOUT_MS });
      this.created.push(netns);
    }
    await Promise.all(
      this.spec.namespaces
        .filter((ns) => Object.keys(ns.sysctls ?? {}).length > 0)
        .map((ns) => this.run(ns.name, 'sysctl', ['-q', '-w', ...Object.entries(ns.sysctls ?? {}).map(([key, value]) => `${key}=${value}`)])),
    );
    await Promise.all(this.spec.namespaces.map((ns) => ipBatch(this.netns(ns.name), ['link set lo up', ...(ns.bridges ?? []).map((bridge) => `link add name ${bridge.name} type bridge`)])));
    for (const { ends } of veths) {
      const [a, b] = creationOrder(ends);
      const side = (end: VethEnd) => [`name ${end.name}`, end.index === undefined ? '' : ` index ${end.index}`, end.mtu === undefined ? '' : ` mtu ${end.mtu}`].join('');
      const peerNetns = b.netns === undefined ? '' : ` netns ${this.netns(b.netns)}`;
      await ipBatch(full(a.netns), [`link add ${side(a)} type veth peer ${side(b)}${peerNetns}`]);
      // Host-side ends are remembered one by one, once made: destroy deletes only links of ours.
      if (a.netns === undefined) this.hostLinks.push(a.name);
    }
    const endsIn = (netns: string | undefined) => veths.flatMap(({ ends }) => ends.filter((end) => end.netns === netns));
    const keys = [undefined, ...this.spec.namespaces.map((ns) => ns.name)];
    await Promise.all(
      keys.map((key) => {
        const ends = endsIn(key);
        const links = [...(key === undefined ? [] : (this.spec.namespaces.find((ns) => ns.name === key)?.bridges ?? [])), ...ends];
        return ipBatch(full(key), [
          ...ends.filter((end) => end.master !== undefined).map((end) => `link set ${end.name} master ${end.master}`),
          ...links.flatMap((link) => (link.addresses ?? []).map((cidr) => `addr add ${cidr} dev ${link.name}${cidr.includes(':') ? ' nodad' : ''}`)),
          ...links.map((link) => `link set ${link.name} up`),
        ]);
      }),
    );
    await Promise.all(this.spec.namespaces.map((ns) => ipBatch(this.netns(ns.name), (ns.routes ?? []).map(routeLine))));
    await waitForLinksUp(this.namespaces);
  }
}

/** The end a pair is made from, then its peer: the first end, or the host's end when one is on
 *  the host (a peer cannot be sent to the host's namespace by name). */
function creationOrder(ends: VethSpec['ends']): readonly [VethEnd, VethEnd] {
  return ends[1].netns === undefined ? [ends[1], ends[0]] : ends;
}

function routeLine(route: RouteSpec): string {
  return ['route add', route.to, route.via && `via ${route.via}`, route.dev && `dev ${route.dev}`, route.scope && `scope ${route.scope}`].filter(Boolean).join(' ');
}

/** Throws on a spec that could not be built, before anything is made. */
function checkSpec(spec: TopologySpec): void {
  const names = new Set<string>();
  for (const ns of spec.namespaces) {
    if (!SHORT_NAME.test(ns.name) || names.has(ns.name)) throw new Error(`topology: bad or repeated namespace name ${JSON.stringify(ns.name)}`);
    names.add(ns.name);
    for (const bridge of ns.bridges ?? []) checkInterfaceName(bridge.name);
  }
  if (!SHORT_NAME.test(spec.prefix)) throw new Error(`topology: bad prefix ${JSON.stringify(spec.prefix)}`);
  for (const { ends } of spec.veths ?? []) {
    if (ends[0].netns === undefined && ends[1].netns === undefined) throw new Error(`topology: veth ${ends[0].name} has both ends on the host`);
    const [first, peer] = creationOrder(ends);
    if (peer.index !== undefined && first.index === undefined) {
      throw new Error(`topology: veth ${peer.name} has an index but ${first.name} has none (the kernel takes a peer's index only with its own)`);
    }
    for (const end of ends) {
      if (end.master !== undefined && !spec.namespaces.find((ns) => ns.name === end.netns)?.bridges?.some((bridge) => bridge.name === end.master)) {
        throw new Error(`topology: veth ${end.name} joins ${end.master}, no bridge of its namespace`);
      }
      if (end.netns !== undefined && !names.has(end.netns)) throw new Error(`topology: veth ${end.name} is in no namespace of the topology (${end.netns})`);
      checkInterfaceName(end.name);
    }
  }
}

function checkInterfaceName(name: string): void {
  if (!INTERFACE_NAME.test(name)) throw new Error(`topology: bad interface name ${JSON.stringify(name)} (1-15 of A-Z a-z 0-9 _ . -)`);
}

/** Waits until every link but lo in these namespaces is operationally up: IPv6 ignores an
 *  interface until then, so traffic sent earlier is lost. */
async function waitForLinksUp(namespaces: readonly string[], timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (const netns of namespaces) {
    for (;;) {
      const { stdout } = await execa('ip', ['-n', netns, '-j', 'link', 'show'], { timeout: COMMAND_TIMEOUT_MS });
      const links = JSON.parse(stdout) as { ifname: string; operstate: string }[];
      if (links.every((link) => link.ifname === 'lo' || link.operstate === 'UP')) break;
      if (Date.now() > deadline) throw new Error(`topology: links in ${netns} did not come up: ${stdout}`);
      await sleep(20);
    }
  }
}
