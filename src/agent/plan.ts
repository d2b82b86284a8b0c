import { isIP } from 'node:net';
import type { NumericIds } from '../auth/numeric-ids.js';
import type { KeyedPair } from '../auth/types.js';
import type { EndpointInfo, PolicyMode } from '../cluster/types.js';
import { AUTH_TYPE, type BoundAddress, type IpcacheEntry, type PolicyKey } from '../datapath/gate/layout.js';

// What the agent derives from the cluster state for its own node, and the rules that define it.
// The NodePlanner (node-planner.ts) keeps it up to date event by event; these definitions are the
// contract it is tested against (test/helpers/full-plan.ts computes the same from scratch).
//
// - ipcache: every effective endpoint's host prefix → its identity and node numbers.
// - pairs: (local L, remote R) is desired when policy requires traffic in either direction
//   between them — one handshake authenticates both directions — keyed by identities and R's node.
// - policy: per (local identity, remote identity, direction), "required" when any pair of
//   endpoints of those identities requires it (requiring wins), "disabled" otherwise; an entry only
//   where that differs from the default, which keeps the map small.

/** A policy-map entry: the pair of identities and direction, and whether it needs authentication. */
export interface PolicyEntry {
  key: PolicyKey;
  authType: number;
}

/** Everything the agent derives from the cluster state for its own node: the complete desired state. */
export interface NodePlan {
  /** Endpoint address prefix → identity and node numbers. */
  ipcache: Map<string, IpcacheEntry>;
  /** Policy-map entries where a pair's requirement differs from the default, by policyId. */
  policy: Map<string, PolicyEntry>;
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

/** What changed since the previous delta: the only writes the datapath and the auth manager get. */
export interface PlanDelta {
  ipcache: { set: [prefix: string, entry: IpcacheEntry][]; deleted: string[] };
  policy: { set: PolicyEntry[]; deleted: PolicyKey[] };
  pairs: { added: KeyedPair[]; removed: KeyedPair[] };
  /** Whether a node was added, changed or removed (the peers follow the nodes). */
  nodesChanged: boolean;
  localIdentities: string[];
  interfaces: NodePlan['interfaces'];
}

export function policyId(key: PolicyKey): string {
  return `${key.localIdentity}:${key.remoteIdentity}:${key.direction}`;
}

/** The policy-map value for an identity pair's aggregated requirement; undefined where the default applies. */
export function policyAuthType(requirement: PolicyMode, defaultMode: PolicyMode): number | undefined {
  if (requirement === defaultMode) return undefined;
  return requirement === 'required' ? AUTH_TYPE.mtls : AUTH_TYPE.none;
}

export function hostPrefix(ip: string): string {
  return `${ip}/${isIP(ip) === 6 ? 128 : 32}`;
}

/** Each local endpoint's interface bound to its identity; shared by two identities, bound to none. */
export function interfaceBindings(
  locals: Iterable<EndpointInfo>,
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
