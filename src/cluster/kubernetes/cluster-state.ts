// Turns what the informers report (this pod now has these endpoints, this node is gone, ...) into
// the ordered ClusterEvents the agent applies. Pure and synchronous: every method returns the
// events its change causes, so the ordering rules below are unit-testable without an API server.
//
// Ordering rules:
// - Nothing is emitted before markSynced(): the agent must not see deletions (or a partial state)
//   before the complete initial state. markSynced() emits the whole state, then { type: 'synced' }.
// - An IP belongs to one pod at a time. When a pod claims an IP that another pod owns (a new pod
//   reusing a deleted pod's IP may be reported before the old pod's deletion), the old owner's
//   endpoint is deleted *before* the new one is upserted, so there is never a moment in which the
//   new pod runs under the old pod's identity. The most recent claim wins; when it goes away and an
//   older claimant still reports the IP, that one owns it again.
//   Whether a claim takes effect is then the ClusterState's to decide: only a claim whose node's
//   pod CIDRs contain the IP does (a node vouches only for its own addresses).
// - An unchanged object emits nothing, so a relist that finds the same state is silent.
import { isDeepStrictEqual } from 'node:util';
import type { ClusterEvent, EndpointInfo, NodeInfo, PolicyRule } from '../types.js';

export class ClusterStateTracker {
  private synced = false;
  /** Pod key ("ns/name") → the endpoints it reports. */
  private readonly podEndpoints = new Map<string, EndpointInfo[]>();
  /** IP → claiming pods (key → endpoint), oldest claim first. */
  // Arrays, not Maps: almost every IP has one claimant, and a Map per IP costs far more at 150,000 pods.
  private readonly claims = new Map<string, { pod: string; endpoint: EndpointInfo }[]>();
  /** IP → the endpoint the agent holds (or will hold once synced). */
  private readonly endpoints = new Map<string, EndpointInfo>();
  private readonly nodes = new Map<string, NodeInfo>();
  private readonly policies = new Map<string, PolicyRule>();

  get isSynced(): boolean {
    return this.synced;
  }

  /** The pod's current endpoints (an empty list when it has none: not running, host network, deleted). */
  setPod(podKey: string, endpoints: readonly EndpointInfo[]): ClusterEvent[] {
    const events: ClusterEvent[] = [];
    const previous = this.podEndpoints.get(podKey) ?? [];
    const nextIps = new Set(endpoints.map((endpoint) => endpoint.ip));
    // Released IPs first: their deletions must precede upserts that may reuse them elsewhere.
    for (const old of previous) {
      if (nextIps.has(old.ip)) continue;
      const claimants = this.claims.get(old.ip);
      const index = claimants?.findIndex((claim) => claim.pod === podKey) ?? -1;
      if (index !== -1) claimants!.splice(index, 1);
      if (claimants?.length === 0) this.claims.delete(old.ip);
      events.push(...this.resolve(old.ip));
    }
    for (const endpoint of endpoints) {
      let claimants = this.claims.get(endpoint.ip);
      if (!claimants) this.claims.set(endpoint.ip, (claimants = []));
      // An existing claim keeps its place; a new one is the latest.
      const existing = claimants.find((claim) => claim.pod === podKey);
      if (existing) existing.endpoint = endpoint;
      else claimants.push({ pod: podKey, endpoint });
      events.push(...this.resolve(endpoint.ip));
    }
    if (endpoints.length > 0) this.podEndpoints.set(podKey, [...endpoints]);
    else this.podEndpoints.delete(podKey);
    return this.emit(events);
  }

  removePod(podKey: string): ClusterEvent[] {
    return this.setPod(podKey, []);
  }

  setNode(node: NodeInfo): ClusterEvent[] {
    if (isDeepStrictEqual(this.nodes.get(node.name), node)) return [];
    this.nodes.set(node.name, node);
    return this.emit([{ type: 'node', action: 'upsert', node }]);
  }

  removeNode(name: string): ClusterEvent[] {
    if (!this.nodes.delete(name)) return [];
    return this.emit([{ type: 'node', action: 'delete', name }]);
  }

  setPolicy(policy: PolicyRule): ClusterEvent[] {
    if (isDeepStrictEqual(this.policies.get(policy.name), policy)) return [];
    this.policies.set(policy.name, policy);
    return this.emit([{ type: 'policy', action: 'upsert', policy }]);
  }

  removePolicy(name: string): ClusterEvent[] {
    if (!this.policies.delete(name)) return [];
    return this.emit([{ type: 'policy', action: 'delete', name }]);
  }

  /** The complete initial state (nodes before the endpoints that name them), then 'synced'. Once. */
  markSynced(): ClusterEvent[] {
    if (this.synced) return [];
    this.synced = true;
    return [
      ...[...this.nodes.values()].map((node): ClusterEvent => ({ type: 'node', action: 'upsert', node })),
      ...[...this.endpoints.values()].map((endpoint): ClusterEvent => ({ type: 'endpoint', action: 'upsert', endpoint })),
      ...[...this.policies.values()].map((policy): ClusterEvent => ({ type: 'policy', action: 'upsert', policy })),
      { type: 'synced' },
    ];
  }

  /** Brings the endpoint of one IP in line with its latest claim; returns the events that takes. */
  private resolve(ip: string): ClusterEvent[] {
    const claimants = this.claims.get(ip);
    const wanted = claimants?.at(-1)?.endpoint;
    const current = this.endpoints.get(ip);
    if (isDeepStrictEqual(wanted, current)) return [];
    const events: ClusterEvent[] = [];
    // A different owner or identity on the same IP is a different endpoint: remove the old one
    // first. The same pod with new labels is a plain upsert.
    if (current && (!wanted || wanted.owner !== current.owner || wanted.spiffeId !== current.spiffeId)) {
      events.push({ type: 'endpoint', action: 'delete', ip, owner: current.owner });
    }
    if (wanted) {
      this.endpoints.set(ip, wanted);
      events.push({ type: 'endpoint', action: 'upsert', endpoint: wanted });
    } else {
      this.endpoints.delete(ip);
    }
    return events;
  }

  /** Before the initial sync the state is only recorded; markSynced() delivers it whole. */
  private emit(events: ClusterEvent[]): ClusterEvent[] {
    return this.synced ? events : [];
  }
}
