import type { NumericIds } from '../auth/numeric-ids.js';
import { keyed, type KeyedPair } from '../auth/types.js';
import { decide, matches } from '../cluster/policy.js';
import type { ClusterEvent, EndpointInfo, PolicyMode, PolicyRule } from '../cluster/types.js';
import type { Direction, IpcacheEntry, PolicyKey } from '../datapath/gate/layout.js';
import { hostPrefix, interfaceBindings, policyAuthType, policyId, type NodePlan, type PlanDelta, type PolicyEntry } from './plan.js';

// The node's plan (plan.ts), kept up to date event by event. Every event costs work proportional to
// what it touches, never a pass over the whole cluster:
//
// - Endpoints that policy cannot tell apart — same SPIFFE ID, namespace, service account and
//   labels — form one *profile*. Policy is decided once per (local endpoint, profile), not per
//   endpoint pair: 150,000 pods are a few thousand profiles, and this node has ~100 local pods.
// - The outputs are counted: a policy entry from how many (local endpoint, profile) couples of its
//   identities exist (and how many of them require authentication), a desired pair from how many
//   couples that require it have a member on its node. An endpoint that appears or leaves changes a
//   count only where it makes a couple or a pair appear or vanish — the first member of a profile,
//   or of a profile on a node — so most pod events cost a few map operations; a local endpoint
//   counts its couple with every profile.
// - A policy change re-decides only the (local endpoint, profile) couples its old or new selectors
//   match; a change of the default mode re-decides everything (a restart-class change).
// - Each output remembers its value at the last delta the first time it is touched, so a delta
//   holds exactly the entries whose value differs, and nothing is diffed in full.

/** Whether a couple needs authentication, by direction from the local endpoint's side. */
interface Decision {
  egress: boolean;
  ingress: boolean;
}

/** The policy entries a couple counts towards, built once per couple rather than per member. */
interface CouplePolicy {
  egress: { key: PolicyKey; id: string };
  ingress: { key: PolicyKey; id: string };
}

/** Endpoints alike for every policy rule. */
interface Profile {
  readonly key: string;
  /** One member, standing for all: selectors read only what the key is made of. */
  readonly subject: EndpointInfo;
  readonly identity: number;
  members: number;
  /** Members per node: one pair per (local identity, remote identity, remote node). */
  readonly byNode: Map<string, number>;
  /** Local endpoints that are members of this profile themselves. */
  readonly locals: Set<Local>;
  /** Local endpoints whose couple with this profile requires authentication in either direction. */
  readonly requiredBy: Set<Local>;
}

interface Member {
  endpoint: EndpointInfo;
  profile: Profile;
}

interface Local extends Member {
  identity: number;
  /** The decision for every profile, by profile key. */
  decisions: Map<string, Decision>;
  /** The policy entries of every profile, by profile key. */
  policyEntries: Map<string, CouplePolicy>;
}

interface PolicyCount {
  key: PolicyEntry['key'];
  /** Endpoint pairs of these identities in this direction, and how many of them require authentication. */
  total: number;
  required: number;
}

interface PairCount {
  pair: KeyedPair;
  count: number;
}

export interface NodePlannerOptions {
  localNode: string;
  ids: NumericIds;
  defaultMode: PolicyMode;
}

export class NodePlanner {
  private readonly localNode: string;
  private readonly ids: NumericIds;
  private defaultMode: PolicyMode;
  private rules = new Map<string, PolicyRule>();
  private ruleList: PolicyRule[] = [];
  private readonly profiles = new Map<string, Profile>();
  private readonly members = new Map<string, Member>();
  private readonly locals = new Map<string, Local>();
  private readonly policy = new Map<string, PolicyCount>();
  private readonly pairs = new Map<string, PairCount>();
  /** Endpoints holding each identity number and each node number: at zero the number is released. */
  private readonly identityRefs = new Map<string, number>();
  private readonly nodeRefs = new Map<string, number>();
  private readonly unreferenced = { identities: new Set<string>(), nodes: new Set<string>() };
  /** Values at the last delta of every output touched since. */
  private readonly before = {
    /** By IP: the ipcache entry is derived from the member (its profile's identity, its node). */
    ipcache: new Map<string, IpcacheEntry | undefined>(),
    policy: new Map<string, PolicyEntry | undefined>(),
    pairs: new Map<string, KeyedPair | undefined>(),
  };
  private nodesChanged = false;

  constructor(options: NodePlannerOptions) {
    this.localNode = options.localNode;
    this.ids = options.ids;
    this.defaultMode = options.defaultMode;
  }

  /** An effective change of the cluster state (ClusterState's 'changed' events). */
  apply(event: ClusterEvent): void {
    switch (event.type) {
      case 'endpoint':
        if (event.action === 'upsert') this.upsertEndpoint(event.endpoint);
        else this.removeEndpoint(event.ip);
        return;
      case 'policy': {
        const previous = event.action === 'upsert' ? this.rules.get(event.policy.name) : this.rules.get(event.name);
        if (event.action === 'upsert') this.rules.set(event.policy.name, event.policy);
        else this.rules.delete(event.name);
        this.ruleList = [...this.rules.values()];
        this.redecide([previous, event.action === 'upsert' ? event.policy : undefined]);
        return;
      }
      case 'node':
        this.nodesChanged = true;
        return;
      case 'synced':
        return;
    }
  }

  /** The policy for pairs no rule matches (a SIGHUP may change it): every couple is decided again. */
  setDefaultMode(mode: PolicyMode): void {
    if (mode === this.defaultMode) return;
    for (const id of this.policy.keys()) this.touchPolicy(id);
    this.defaultMode = mode;
    this.redecide('all');
  }

  /**
   * What changed since the last delta. The caller applies it (pairs first, so revoked entries leave
   * before an address is re-mapped), then calls releaseUnused().
   */
  delta(interfaceOf: (endpoint: EndpointInfo) => string | undefined): PlanDelta {
    const delta: PlanDelta = {
      ipcache: { set: [], deleted: [] },
      policy: { set: [], deleted: [] },
      pairs: { added: [], removed: [] },
      nodesChanged: this.nodesChanged,
      localIdentities: this.localIdentities(),
      interfaces: interfaceBindings(this.localEndpoints(), this.ids, interfaceOf),
    };
    for (const [ip, old] of this.before.ipcache) {
      const now = this.ipcacheEntry(ip);
      if (!now) {
        if (old) delta.ipcache.deleted.push(hostPrefix(ip));
      } else if (!old || old.identity !== now.identity || old.node !== now.node) {
        delta.ipcache.set.push([hostPrefix(ip), now]);
      }
    }
    for (const [id, old] of this.before.policy) {
      const now = this.policyEntry(id);
      if (!now) {
        if (old) delta.policy.deleted.push(old.key);
      } else if (old?.authType !== now.authType) {
        delta.policy.set.push(now);
      }
    }
    for (const [key, old] of this.before.pairs) {
      const now = this.pairs.get(key)?.pair;
      if (now && !old) delta.pairs.added.push(now);
      else if (!now && old) delta.pairs.removed.push(old);
    }
    this.before.ipcache.clear();
    this.before.policy.clear();
    this.before.pairs.clear();
    this.nodesChanged = false;
    return delta;
  }

  /**
   * Frees the numbers no endpoint holds any more; call once the delta that dropped them is applied.
   * `everything`: also those allocated before (a previous run's, in the persisted file) that the
   * first complete plan does not use, once the entries restored with them have been swept.
   */
  releaseUnused(everything = false): void {
    if (everything) {
      for (const spiffeId of this.ids.identityNames()) this.unreferenced.identities.add(spiffeId);
      for (const node of this.ids.nodeNames()) this.unreferenced.nodes.add(node);
    }
    for (const spiffeId of this.unreferenced.identities) if (!this.identityRefs.has(spiffeId)) this.ids.releaseIdentity(spiffeId);
    for (const node of this.unreferenced.nodes) if (!this.nodeRefs.has(node)) this.ids.releaseNode(node);
    this.unreferenced.identities.clear();
    this.unreferenced.nodes.clear();
  }

  /** The complete desired state, as a start-up reconciliation of the pinned maps needs it. */
  plan(interfaceOf: (endpoint: EndpointInfo) => string | undefined): NodePlan {
    const policy = new Map<string, PolicyEntry>();
    for (const id of this.policy.keys()) {
      const entry = this.policyEntry(id);
      if (entry) policy.set(id, entry);
    }
    return {
      ipcache: new Map([...this.members.keys()].map((ip) => [hostPrefix(ip), this.ipcacheEntry(ip)!])),
      policy,
      pairs: new Map([...this.pairs].map(([key, { pair }]) => [key, pair])),
      localIdentities: this.localIdentities(),
      interfaces: interfaceBindings(this.localEndpoints(), this.ids, interfaceOf),
    };
  }

  localEndpoints(): EndpointInfo[] {
    return [...this.locals.values()].map((local) => local.endpoint);
  }

  /** Whether an endpoint's address is this ipcache prefix (its entry is the planner's). */
  holds(prefix: string): boolean {
    const ip = prefix.slice(0, prefix.indexOf('/'));
    return this.members.has(ip) && hostPrefix(ip) === prefix;
  }

  /** The pairs desired now. */
  desiredPairs(): KeyedPair[] {
    return [...this.pairs.values()].map(({ pair }) => pair);
  }

  private localIdentities(): string[] {
    return [...new Set([...this.locals.values()].map((local) => local.endpoint.spiffeId))];
  }

  // ---- endpoints ----

  private upsertEndpoint(endpoint: EndpointInfo): void {
    const existing = this.members.get(endpoint.ip);
    if (existing && existing.endpoint.node === endpoint.node && existing.profile.key === profileKey(endpoint)) {
      // Nothing policy or the ipcache reads has changed (an interface name, say): keep the object current.
      existing.endpoint = endpoint;
      const local = this.locals.get(endpoint.ip);
      if (local) local.endpoint = endpoint;
      return;
    }
    if (existing) this.removeEndpoint(endpoint.ip);
    this.addEndpoint(endpoint);
  }

  private addEndpoint(endpoint: EndpointInfo): void {
    const profile = this.joinProfile(endpoint);
    const member: Member = { endpoint, profile };
    this.reference(endpoint);
    this.touchIpcache(endpoint.ip);
    this.members.set(endpoint.ip, member);
    this.memberChanged(profile, endpoint, +1);
    if (endpoint.node !== this.localNode) return;
    const local: Local = { ...member, identity: profile.identity, decisions: new Map(), policyEntries: new Map() };
    this.locals.set(endpoint.ip, local);
    profile.locals.add(local);
    for (const other of this.profiles.values()) this.countCouple(local, other, this.decision(local, other), +1);
  }

  private removeEndpoint(ip: string): void {
    const member = this.members.get(ip);
    if (!member) return;
    const { endpoint, profile } = member;
    const local = this.locals.get(ip);
    if (local) {
      for (const other of this.profiles.values()) {
        this.countCouple(local, other, this.decision(local, other), -1);
        other.requiredBy.delete(local);
      }
      this.locals.delete(ip);
      profile.locals.delete(local);
    }
    this.memberChanged(profile, endpoint, -1);
    this.touchIpcache(ip);
    this.members.delete(ip);
    this.leaveProfile(profile, endpoint.node);
    this.unreference(endpoint);
  }

  private joinProfile(endpoint: EndpointInfo): Profile {
    const key = profileKey(endpoint);
    let profile = this.profiles.get(key);
    if (!profile) {
      profile = {
        key,
        subject: endpoint,
        identity: this.ids.identity(endpoint.spiffeId),
        members: 0,
        byNode: new Map(),
        locals: new Set(),
        requiredBy: new Set(),
      };
      this.profiles.set(key, profile);
      // Every couple has its decision from the moment both sides exist.
      for (const local of this.locals.values()) this.decision(local, profile);
    }
    profile.members++;
    profile.byNode.set(endpoint.node, (profile.byNode.get(endpoint.node) ?? 0) + 1);
    return profile;
  }

  private leaveProfile(profile: Profile, node: string): void {
    profile.members--;
    const onNode = profile.byNode.get(node)! - 1;
    if (onNode === 0) profile.byNode.delete(node);
    else profile.byNode.set(node, onNode);
    if (profile.members > 0) return;
    this.profiles.delete(profile.key);
    for (const local of this.locals.values()) {
      local.decisions.delete(profile.key);
      local.policyEntries.delete(profile.key);
    }
  }

  /**
   * A member joined (+1, counted in already) or is leaving (-1, still counted in) a profile: only
   * the couples and pairs that this makes appear or vanish change — a couple exists while the
   * profile has a member other than the local endpoint itself, a pair while it has one on that
   * node. Most members join a profile that has others on their node and change nothing.
   */
  private memberChanged(profile: Profile, endpoint: EndpointInfo, sign: 1 | -1): void {
    const node = endpoint.node;
    // The counts without this member: a local endpoint's couple or pair appears or vanishes when,
    // without the member, the profile held nothing but the local endpoint itself (or nothing).
    const others = profile.members - 1;
    const othersOnNode = profile.byNode.get(node)! - 1;
    if (others <= 1) {
      for (const local of others === 0 ? this.locals.values() : profile.locals) {
        if (local.endpoint.ip === endpoint.ip || others !== (local.profile === profile ? 1 : 0)) continue;
        const entries = this.policyEntries(local, profile);
        const decision = this.decision(local, profile);
        this.countPolicy(entries.egress, decision.egress, sign);
        this.countPolicy(entries.ingress, decision.ingress, sign);
      }
    }
    if (othersOnNode <= 1) {
      for (const local of profile.requiredBy) {
        const self = local.profile === profile && local.endpoint.node === node ? 1 : 0;
        if (local.endpoint.ip === endpoint.ip || othersOnNode !== self) continue;
        this.countPair(local.endpoint.spiffeId, profile.subject.spiffeId, node, sign);
      }
    }
  }

  private reference(endpoint: EndpointInfo): void {
    this.identityRefs.set(endpoint.spiffeId, (this.identityRefs.get(endpoint.spiffeId) ?? 0) + 1);
    this.nodeRefs.set(endpoint.node, (this.nodeRefs.get(endpoint.node) ?? 0) + 1);
  }

  private unreference(endpoint: EndpointInfo): void {
    if (decrement(this.identityRefs, endpoint.spiffeId)) this.unreferenced.identities.add(endpoint.spiffeId);
    if (decrement(this.nodeRefs, endpoint.node)) this.unreferenced.nodes.add(endpoint.node);
  }

  // ---- decisions and what they count towards ----

  private decision(local: Local, profile: Profile): Decision {
    let decision = local.decisions.get(profile.key);
    if (!decision) {
      decision = {
        egress: decide(this.ruleList, local.endpoint, profile.subject, this.defaultMode) === 'required',
        ingress: decide(this.ruleList, profile.subject, local.endpoint, this.defaultMode) === 'required',
      };
      local.decisions.set(profile.key, decision);
      if (decision.egress || decision.ingress) profile.requiredBy.add(local);
      else profile.requiredBy.delete(local);
    }
    return decision;
  }

  /** A local endpoint and a profile: present while the profile has a member other than the local endpoint. */
  private countCouple(local: Local, profile: Profile, decision: Decision, sign: 1 | -1): void {
    const self = local.profile === profile;
    if (profile.members - (self ? 1 : 0) === 0) return;
    const entries = this.policyEntries(local, profile);
    this.countPolicy(entries.egress, decision.egress, sign);
    this.countPolicy(entries.ingress, decision.ingress, sign);
    if (!decision.egress && !decision.ingress) return;
    for (const [node, members] of profile.byNode) {
      if (members - (self && node === local.endpoint.node ? 1 : 0) > 0) this.countPair(local.endpoint.spiffeId, profile.subject.spiffeId, node, sign);
    }
  }

  private policyEntries(local: Local, profile: Profile): CouplePolicy {
    let entries = local.policyEntries.get(profile.key);
    if (!entries) {
      const entry = (direction: Direction) => {
        const key = { localIdentity: local.identity, remoteIdentity: profile.identity, direction };
        return { key, id: policyId(key) };
      };
      entries = { egress: entry('egress'), ingress: entry('ingress') };
      local.policyEntries.set(profile.key, entries);
    }
    return entries;
  }

  private countPolicy({ key, id }: { key: PolicyKey; id: string }, required: boolean, change: number): void {
    this.touchPolicy(id);
    let count = this.policy.get(id);
    if (!count) this.policy.set(id, (count = { key, total: 0, required: 0 }));
    count.total += change;
    if (required) count.required += change;
    if (count.total === 0) this.policy.delete(id);
  }

  private countPair(localId: string, remoteId: string, remoteNode: string, change: number): void {
    const pair = keyed({ localId, remoteId, remoteNode });
    const existing = this.pairs.get(pair.key);
    if (!this.before.pairs.has(pair.key)) this.before.pairs.set(pair.key, existing?.pair);
    if (!existing) {
      this.pairs.set(pair.key, { pair, count: change });
      return;
    }
    existing.count += change;
    if (existing.count === 0) this.pairs.delete(pair.key);
  }

  /**
   * Decides again the couples a policy change can affect: those where one version of a changed
   * rule matches the local endpoint on one side and the profile on the other ('all': every couple).
   */
  private redecide(changed: readonly (PolicyRule | undefined)[] | 'all'): void {
    const rules = changed === 'all' ? undefined : changed.filter((rule): rule is PolicyRule => rule !== undefined);
    if (rules?.length === 0) return;
    const profileMatches = (profile: Profile, local: EndpointInfo): boolean =>
      rules === undefined ||
      rules.some(
        (rule) =>
          (matches(rule.source, local) && matches(rule.destination, profile.subject)) || (matches(rule.destination, local) && matches(rule.source, profile.subject)),
      );
    for (const local of this.locals.values()) {
      if (rules !== undefined && !rules.some((rule) => matches(rule.source, local.endpoint) || matches(rule.destination, local.endpoint))) continue;
      for (const profile of this.profiles.values()) {
        if (!profileMatches(profile, local.endpoint)) continue;
        const old = this.decision(local, profile);
        local.decisions.delete(profile.key);
        const next = this.decision(local, profile);
        if (old.egress === next.egress && old.ingress === next.ingress) continue;
        this.countCouple(local, profile, old, -1);
        this.countCouple(local, profile, next, +1);
      }
    }
  }

  // ---- outputs ----

  private touchIpcache(ip: string): void {
    if (!this.before.ipcache.has(ip)) this.before.ipcache.set(ip, this.ipcacheEntry(ip));
  }

  private ipcacheEntry(ip: string): IpcacheEntry | undefined {
    const member = this.members.get(ip);
    return member && { identity: member.profile.identity, node: this.ids.node(member.endpoint.node) };
  }

  private touchPolicy(id: string): void {
    if (!this.before.policy.has(id)) this.before.policy.set(id, this.policyEntry(id));
  }

  private policyEntry(id: string): PolicyEntry | undefined {
    const count = this.policy.get(id);
    if (!count) return undefined;
    const authType = policyAuthType(count.required > 0 ? 'required' : 'disabled', this.defaultMode);
    return authType === undefined ? undefined : { key: count.key, authType };
  }
}

/** What every selector reads of an endpoint; labels sorted so that their order does not matter. */
function profileKey(endpoint: EndpointInfo): string {
  const labels = Object.entries(endpoint.labels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify([endpoint.spiffeId, endpoint.namespace ?? null, endpoint.serviceAccount ?? null, labels]);
}

/** Decrements a count; true when it reached zero (the key is then removed). */
function decrement(counts: Map<string, number>, key: string): boolean {
  const next = (counts.get(key) ?? 0) - 1;
  if (next > 0) {
    counts.set(key, next);
    return false;
  }
  counts.delete(key);
  return true;
}
