// Finds the host-side interface of a workload: where the gate must sit for it, and which
// interface the gate binds to the workload's identity. Only from sources a workload cannot forge:
//   - the pod's own network namespace, at CNI ADD: its interface is one end of a veth, and the
//     kernel names the other end's ifindex (link_index); the host-side veth with that ifindex,
//     whose own peer is the pod's interface, is the pod's port. Authoritative for every CNI,
//     routed or bridged.
//   - for routed CNIs (Calico, Cilium, ptp), without the meshauth CNI plugin: the host's route to
//     the address, which only the CNI (root on the host) writes, names the pod's own veth.
// Never from a bridge's neighbour table or forwarding database: a pod writes those itself with a
// forged ARP reply for a new pod's address (ARP passes the gate), and the binding would go to the
// attacker's port while the victim's veth stayed ungated. Behind a bridge, without the plugin, an
// address resolves to nothing (the agent counts it ungated) rather than to a guess.
import { isIP } from 'node:net';
import { runIn } from './run-in.js';

interface Route {
  dev?: string;
  gateway?: string;
  type?: string;
}

interface Link {
  ifindex?: number;
  ifname?: string;
  link_index?: number;
  linkinfo?: { info_kind?: string };
}

/** A host-side interface by name and index: a new interface of the same name has another index. */
export interface BoundInterface {
  name: string;
  ifindex: number;
}

/**
 * The host-side interface behind a routed workload address in `netns` (ours when undefined), or
 * undefined when the route does not name the workload's own interface (no route, a gateway, a
 * local address, a bridge: a bridged workload is found only through its namespace).
 */
export async function resolveHostInterface(ip: string, netns?: string): Promise<string | undefined> {
  if (isIP(ip) === 0) throw new TypeError(`not an IP address: ${JSON.stringify(ip)}`);
  const [route] = JSON.parse(await runIn(netns, 'ip', ['-j', 'route', 'get', ip])) as Route[];
  if (!route?.dev || route.gateway !== undefined || (route.type !== undefined && route.type !== 'unicast')) return undefined;
  const [link] = JSON.parse(await runIn(netns, 'ip', ['-j', '-d', 'link', 'show', 'dev', route.dev])) as Link[];
  return link?.linkinfo?.info_kind === 'bridge' ? undefined : route.dev;
}

/**
 * The host-side end, in `hostNetns` (ours when undefined), of the veth whose other end is
 * `ifName` in the pod's namespace `podNetns` (a path, as CNI_NETNS gives it). Both ends must name
 * each other, so a host interface that merely has the right index is not taken. Throws when the
 * pod's interface is not such a veth.
 */
export async function podPeerInterface(podNetns: string, ifName: string, hostNetns?: string): Promise<BoundInterface> {
  const [pod] = JSON.parse(await runIn(podNetns, 'ip', ['-j', 'link', 'show', 'dev', ifName])) as Link[];
  if (pod?.ifindex === undefined || pod.link_index === undefined || pod.link_index === 0) {
    throw new Error(`${ifName} in ${podNetns} is not one end of a veth pair`);
  }
  const links = JSON.parse(await runIn(hostNetns, 'ip', ['-j', 'link', 'show'])) as Link[];
  const host = links.find((link) => link.ifindex === pod.link_index);
  if (!host?.ifname || host.link_index !== pod.ifindex) {
    throw new Error(`the peer of ${ifName} in ${podNetns} (ifindex ${pod.link_index}) is not in the host namespace`);
  }
  return { name: host.ifname, ifindex: pod.link_index };
}

/** The interfaces of `netns` (ours when undefined), name → ifindex: one listing for many checks. */
export async function interfaceIndexes(netns?: string): Promise<Map<string, number>> {
  const links = JSON.parse(await runIn(netns, 'ip', ['-j', 'link', 'show'])) as Link[];
  return new Map(links.filter((link) => link.ifname !== undefined && link.ifindex !== undefined).map((link) => [link.ifname!, link.ifindex!]));
}

/** Whether `bound` still exists under its name with its index (not deleted, not replaced). */
export async function stillBound(bound: BoundInterface, netns?: string): Promise<boolean> {
  return (await interfaceIndexes(netns)).get(bound.name) === bound.ifindex;
}
