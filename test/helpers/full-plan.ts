// The node's plan computed from scratch, exactly as src/agent/plan.ts defines it: every local
// endpoint against every endpoint, every rule. The oracle the incremental NodePlanner is tested
// against, and the old full-recompute path the scale benchmark compares it with.
import type { NumericIds } from '../../src/auth/numeric-ids.js';
import { pairKeyString, type KeyedPair } from '../../src/auth/types.js';
import { decide } from '../../src/cluster/policy.js';
import type { ClusterState } from '../../src/cluster/state.js';
import type { EndpointInfo, PolicyMode } from '../../src/cluster/types.js';
import type { Direction, IpcacheEntry } from '../../src/datapath/gate/layout.js';
import { hostPrefix, interfaceBindings, policyAuthType, policyId, type NodePlan, type PolicyEntry } from '../../src/agent/plan.js';

export function fullPlan(
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
  /** policyId → the key and whether any endpoint pair of it requires authentication. */
  const requirements = new Map<string, { key: PolicyEntry['key']; required: boolean }>();
  const require = (local: EndpointInfo, remote: EndpointInfo, direction: Direction, required: boolean) => {
    const key = { localIdentity: ids.identity(local.spiffeId), remoteIdentity: ids.identity(remote.spiffeId), direction };
    const id = policyId(key);
    const seen = requirements.get(id);
    requirements.set(id, { key, required: required || (seen?.required ?? false) });
  };
  const pairs = new Map<string, KeyedPair>();
  const locals = state.localEndpoints();
  for (const local of locals) {
    for (const remote of state.endpoints.values()) {
      if (remote.ip === local.ip) continue;
      const outbound = decide(rules, local, remote, defaultMode) === 'required';
      const inbound = decide(rules, remote, local, defaultMode) === 'required';
      require(local, remote, 'egress', outbound);
      require(local, remote, 'ingress', inbound);
      if (!outbound && !inbound) continue;
      if (remote.node !== state.localNode && !state.nodes.has(remote.node)) continue;
      const key = pairKeyString({ localId: local.spiffeId, remoteId: remote.spiffeId, remoteNode: remote.node });
      if (!pairs.has(key)) pairs.set(key, { localId: local.spiffeId, remoteId: remote.spiffeId, remoteNode: remote.node, key });
    }
  }
  const policy = new Map<string, PolicyEntry>();
  for (const [id, { key, required }] of requirements) {
    const authType = policyAuthType(required ? 'required' : 'disabled', defaultMode);
    if (authType !== undefined) policy.set(id, { key, authType });
  }
  return {
    ipcache,
    policy,
    pairs,
    localIdentities: [...new Set(locals.map((e) => e.spiffeId))],
    interfaces: interfaceBindings(locals, ids, interfaceOf),
  };
}
