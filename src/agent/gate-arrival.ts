// How the gate checks that another node's packets came through that node's transport (#16, item 1):
// the transport mode, and for WireGuard the ifindex of meshauth's WireGuard device, which must
// live in the namespace of the gated interfaces (skb->ingress_ifindex names it there).
import type { Config } from '../config/config.js';
import type { DatapathConfig } from '../datapath/gate/layout.js';
import { interfaceIndex } from '../datapath/gate/loader.js';
import type { Logger } from '../util/logger.js';

export type GateArrival = Pick<DatapathConfig, 'transport' | 'wireguardIfindex'>;

/** Resolves the arrival check for the configured transport, and says at start what it is worth. */
export async function gateArrival(config: Config, logger: Logger): Promise<GateArrival> {
  const mode = config.transport.mode;
  if (mode === 'none') {
    logger.warn(
      'transport none: the gate cannot check how packets of other nodes arrived; their identities are only as good as the CNI\'s anti-spoofing',
    );
    return { transport: 'none', wireguardIfindex: 0 };
  }
  if (mode === 'ipsec') return { transport: 'ipsec', wireguardIfindex: 0 };
  const name = config.transport.wireguard.interface;
  const ifindex = await interfaceIndex({ name, ...(config.datapath.netns !== undefined && { netns: config.datapath.netns }) });
  if (ifindex === undefined) {
    logger.error(
      { interface: name, netns: config.datapath.netns ?? '(the agent\'s)' },
      'the WireGuard device is not in the namespace of the gated interfaces: packets of other nodes are dropped',
    );
  }
  return { transport: 'wireguard', wireguardIfindex: ifindex ?? 0 };
}
