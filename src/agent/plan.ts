import { isIP } from 'node:net';
import type { NumericIds } from '../auth/numeric-ids.js';
import { pairKeyString, type KeyedPair } from '../auth/types.js';
import { decide } from '../cluster/policy.js';
import type { ClusterState } from '../cluster/state.js';
import type { EndpointInfo, PolicyMode } from '../cluster/types.js';
import { AUTH_TYPE, type BoundAddress, type IpcacheEntry, type PolicyKey } from '../datapath/gate/layout.js';

/** Everything the agent derives from the cluster state for its own node. */
export interface NodePlan {
  /** Endpoint address prefix → identity and node numbers. */
  ipcache: Map<string, IpcacheEntry>;
  /** Policy-map entries where a pair's requirement differs from the default. */
  policy: Map<string, { key: PolicyKey; authType: number }>;
  /** Identity pairs this node must hold authenticated, by key string. */
  pairs: Map<string, KeyedPair>;
  /** SPIFFE IDs of this node's own endpoints: the SVIDs it needs, and no others. */
  localIdentities: string[];
  /**
   * Host-side interfaces of this node's endpoints, where the gate attaches, each with the
   * addresses the gate binds to it and their identities: the only sources that pass from it.
   */
  interfaces: Map<string, BoundAddress[]>;
}

/**
 * Computes the node's plan. A pair (local L, remote R) is desired when policy requires traffic
 * in either direction between them, because one handshake authenticates both directions, and R
 * runs on this node or on a node the cluster state knows. The policy map holds only exceptions to
 * the default, which keeps it small.
 */
export function planNode(
  state: ClusterState,
  ids: NumericIds,
  defaultMode: PolicyMode,
  interfaceOf: (endpoint: EndpointInfo) => string | undefined = (endpoint) => endpoint.interface,
): NodePlan {
  const rules = [...state.policies.values()];
  const ipcache = new Map<string, IpcacheEntry>();
  for (const endpoint of state.endpoints.values()) {
    ipcache.set(hostPrefix(endpoint.ip), { identity: ids.identity(endpoint.spiffeId), node: ids.node(endpoint.node) });
  }
  const policy = new Map<string, { key: PolicyKey; authType: number }>();
  const pairs = new Map<string, KeyedPair>();
  const locals = state.localEndpoints();
  // Policy is evaluated per endpoint pair (label selectors see pods, not identities); the
  // results are keyed by identity, so endpoints of one identity collapse into one pair.
  for (const local of locals) {
    for (const remote of state.endpoints.values()) {
      if (remote.ip === local.ip) continue;
      const outbound = decide(rules, local, remote, defaultMode);
      const inbound = decide(rules, remote, local, defaultMode);
      addPolicy(policy, ids, local, remote, 'egress', outbound, defaultMode);
      addPolicy(policy, ids, local, remote, 'ingress', inbound, defaultMode);
      if (outbound !== 'required' && inbound !== 'required') continue;
      // A pair is held over a link to the remote endpoint's node: with that node gone from the
      // cluster (its Node deleted, its pods not yet), the pair can be neither authenticated nor
      // kept, so it is not desired; it comes back with the node.
      if (remote.node !== state.localNode && !state.nodes.has(remote.node)) continue;
      const key = pairKeyString({ localId: local.spiffeId, remoteId: remote.spiffeId, remoteNode: remote.node });
      if (!pairs.has(key)) pairs.set(key, { localId: local.spiffeId, remoteId: remote.spiffeId, remoteNode: remote.node, key });
    }
  }
  return {
    ipcache,
    policy,
    pairs,
    localIdentities: [...new Set(locals.map((e) => e.spiffeId))],
    interfaces: interfaceBindings(locals, ids, interfaceOf),
  };
}

function interfaceBindings(
  locals: readonly EndpointInfo[],
  ids: NumericIds,
  interfaceOf: (endpoint: EndpointInfo) => string | undefined,
): NodePlan['interfaces'] {
  const bindings: NodePlan['interfaces'] = new Map();
  for (const endpoint of locals) {
    const name = interfaceOf(endpoint);
    if (!name) continue;
    const bound = { address: endpoint.ip, identity: ids.identity(endpoint.spiffeId), node: ids.node(endpoint.node) };
    bindings.set(name, [...(bindings.get(name) ?? []), bound]);
  }
  return bindings;
}

function addPolicy(
  policy: NodePlan['policy'],
  ids: NumericIds,
  local: EndpointInfo,
  remote: EndpointInfo,
  direction: 'egress' | 'ingress',
  mode: PolicyMode,
  defaultMode: PolicyMode,
): void {
  if (mode === defaultMode) return;
  const key: PolicyKey = { localIdentity: ids.identity(local.spiffeId), remoteIdentity: ids.identity(remote.spiffeId), direction };
  const id = `${key.localIdentity}:${key.remoteIdentity}:${direction}`;
  const authType = mode === 'required' ? AUTH_TYPE.mtls : AUTH_TYPE.none;
  const existing = policy.get(id);
  // Two endpoint pairs of the same identities can disagree (label selectors): requiring wins.
  if (existing && existing.authType === AUTH_TYPE.mtls) return;
  policy.set(id, { key, authType });
}

function hostPrefix(ip: string): string {
  return `${ip}/${isIP(ip) === 6 ? 128 : 32}`;
}
