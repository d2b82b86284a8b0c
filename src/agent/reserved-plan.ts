import { isIP } from 'node:net';
import type { NumericIds } from '../auth/numeric-ids.js';
import { decide, type PolicyPeer } from '../cluster/policy.js';
import { RESERVED_PEERS, type ReservedPeer } from '../cluster/reserved.js';
import { normalizeIp, type ClusterState } from '../cluster/state.js';
import type { PolicyMode, PolicyRule } from '../cluster/types.js';
import { AUTH_TYPE, NO_IDENTITY, RESERVED_IDENTITY, type IpcacheEntry } from '../datapath/gate/layout.js';
import type { NodePlan } from './plan.js';

/** Where the reserved peers are, from the config's cluster section and this host. */
export interface ReservedAddresses {
  serviceCidrs: readonly string[];
  podCidrs: readonly string[];
  apiServers: readonly string[];
  /** This host's addresses beyond its node address (a bridge CNI's gateway address, ...). */
  hostAddresses: readonly string[];
}

export const RESERVED_NUMBER: Record<ReservedPeer, number> = {
  host: RESERVED_IDENTITY.host,
  'remote-node': RESERVED_IDENTITY.remoteNode,
  world: RESERVED_IDENTITY.world,
  'kube-apiserver': RESERVED_IDENTITY.kubeApiserver,
};

/**
 * Adds the reserved peers to a node plan: their addresses to the ipcache and, for every local
 * endpoint, whether policy requires their traffic (a reserved peer cannot authenticate, so
 * "required" drops it) where that differs from the default. An exempt peer's traffic always
 * passes. No pair is ever desired with a reserved peer.
 *
 * Precedence for one address, lowest first: world (everything), no identity (the pod ranges: an
 * address no endpoint holds yet is unknown, not world), service, remote node, API server, this
 * host; an endpoint's own address always wins.
 */
export function addReservedPeers(
  plan: NodePlan,
  state: ClusterState,
  ids: NumericIds,
  defaultMode: PolicyMode,
  exempt: readonly ReservedPeer[],
  addresses: ReservedAddresses,
): void {
  const reserved = new Map<string, IpcacheEntry>();
  const set = (address: string, identity: number, node = 0) => reserved.set(prefixOf(address), { identity, node });
  set('0.0.0.0/0', RESERVED_IDENTITY.world);
  set('::/0', RESERVED_IDENTITY.world);
  const podCidrs = [...addresses.podCidrs, ...[...state.nodes.values()].flatMap((node) => node.podCidrs)];
  for (const cidr of podCidrs) set(cidr, NO_IDENTITY);
  for (const cidr of addresses.serviceCidrs) set(cidr, RESERVED_IDENTITY.service);
  for (const node of state.nodes.values()) {
    if (node.name !== state.localNode) set(node.address, RESERVED_IDENTITY.remoteNode, ids.node(node.name));
  }
  for (const address of addresses.apiServers) set(address, RESERVED_IDENTITY.kubeApiserver);
  const local = state.nodes.get(state.localNode);
  for (const address of [...(local ? [local.address] : []), ...addresses.hostAddresses]) set(address, RESERVED_IDENTITY.host, ids.node(state.localNode));
  for (const [prefix, entry] of reserved) if (!plan.ipcache.has(prefix)) plan.ipcache.set(prefix, entry);

  const rules = [...state.policies.values()];
  for (const endpoint of state.localEndpoints()) {
    const localIdentity = ids.identity(endpoint.spiffeId);
    for (const name of RESERVED_PEERS) {
      const peer: PolicyPeer = { reserved: name };
      const modes = {
        egress: modeFor(exempt, name, rules, endpoint, peer, defaultMode),
        ingress: modeFor(exempt, name, rules, peer, endpoint, defaultMode),
      };
      for (const direction of ['egress', 'ingress'] as const) {
        const mode = modes[direction];
        if (mode === defaultMode) continue;
        const key = { localIdentity, remoteIdentity: RESERVED_NUMBER[name], direction };
        const id = `${key.localIdentity}:${key.remoteIdentity}:${direction}`;
        // Endpoints of one identity can disagree (label selectors): requiring wins, as for workloads.
        if (plan.policy.get(id)?.authType === AUTH_TYPE.mtls) continue;
        plan.policy.set(id, { key, authType: mode === 'required' ? AUTH_TYPE.mtls : AUTH_TYPE.none });
      }
    }
  }
}

function modeFor(exempt: readonly ReservedPeer[], name: ReservedPeer, rules: readonly PolicyRule[], source: PolicyPeer, destination: PolicyPeer, defaultMode: PolicyMode): PolicyMode {
  return exempt.includes(name) ? 'disabled' : decide(rules, source, destination, defaultMode);
}

function prefixOf(address: string): string {
  return address.includes('/') ? address : `${normalizeIp(address)}/${isIP(address) === 6 ? 128 : 32}`;
}
