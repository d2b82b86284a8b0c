// Finds the host-side interface of a workload address: where the gate must sit for it. Cluster
// sources that know it (the static config) name it; Kubernetes does not, so the agent asks the
// kernel, the way the CNI left it:
//   routed CNIs (Calico, Cilium, ptp/kindnet): `ip route get ADDR` names the pod's own veth;
//   bridged CNIs (bridge plugin, flannel): the route names the bridge, and the bridge's forwarding
//   table names the port behind the address's MAC (`ip neigh`, then `bridge fdb`).
import { isIP } from 'node:net';
import { runIn } from './run-in.js';

interface Route {
  dev?: string;
  gateway?: string;
  type?: string;
}

/**
 * The host-side interface behind a workload address in `netns` (ours when undefined), or
 * undefined when the address is not a directly attached workload (no route, a gateway, a local
 * address, or a bridge that has not learned it yet: ask again later).
 */
export async function resolveHostInterface(ip: string, netns?: string): Promise<string | undefined> {
  if (isIP(ip) === 0) throw new TypeError(`not an IP address: ${JSON.stringify(ip)}`);
  const [route] = JSON.parse(await runIn(netns, 'ip', ['-j', 'route', 'get', ip])) as Route[];
  if (!route?.dev || route.gateway !== undefined || (route.type !== undefined && route.type !== 'unicast')) return undefined;
  if (!(await isBridge(route.dev, netns))) return route.dev;
  return bridgePortOf(ip, route.dev, netns);
}

async function isBridge(dev: string, netns: string | undefined): Promise<boolean> {
  const [link] = JSON.parse(await runIn(netns, 'ip', ['-j', '-d', 'link', 'show', 'dev', dev])) as { linkinfo?: { info_kind?: string } }[];
  return link?.linkinfo?.info_kind === 'bridge';
}

async function bridgePortOf(ip: string, bridge: string, netns: string | undefined): Promise<string | undefined> {
  const neighbours = JSON.parse(await runIn(netns, 'ip', ['-j', 'neigh', 'show', 'to', ip, 'dev', bridge])) as { lladdr?: string }[];
  const mac = neighbours.find((entry) => entry.lladdr)?.lladdr?.toLowerCase();
  if (!mac) return undefined;
  const fdb = JSON.parse(await runIn(netns, 'bridge', ['-j', 'fdb', 'show', 'br', bridge])) as { mac?: string; ifname?: string; flags?: string[] }[];
  return fdb.find((entry) => entry.mac?.toLowerCase() === mac && entry.ifname && entry.ifname !== bridge && !entry.flags?.includes('self'))?.ifname;
}
