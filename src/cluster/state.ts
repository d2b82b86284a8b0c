import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import { PodCidrs } from './pod-cidrs.js';
import type { ClusterEvent, ClusterSnapshot, EndpointInfo, NodeInfo, PolicyRule } from './types.js';

/** Why a claim from the source was refused (the meshauth_cluster_rejected_total{reason} label). */
export type RejectionReason = 'endpoint_outside_node_cidrs' | 'node_address_conflict';

export interface Rejection {
  reason: RejectionReason;
  /** The node that made the claim. */
  node: string;
  /** The address claimed: an endpoint's IP, or a node's address. */
  address: string;
  /** For an address conflict: the other node claiming it. */
  other?: string;
}

interface ClusterStateEvents {
  /**
   * An effective change, in the order it must be applied: an endpoint appears here only while
   * its node vouches for it, so one source event may cause several of these (a node's new pod
   * CIDRs admit or withdraw its endpoints) or none (a claim refused or waiting for its node).
   */
  changed: [ClusterEvent];
  /** A claim was refused; emitted once when it starts being refused, not on every repeat. */
  rejected: [Rejection];
}

/**
 * What the agent currently believes about the cluster, built from ClusterEvents. `isSynced`
 * turns true once the source delivered its complete initial state: until then the agent must
 * not garbage-collect datapath entries, because a restarting agent has simply not listed
 * everything yet.
 *
 * A node vouches only for its own addresses. An endpoint takes effect only while its node is
 * known and the node's pod CIDRs contain its IP: a node cannot claim another node's pod IP (the
 * claim is refused and counted), and an endpoint whose node is not known (yet, or any more) waits
 * for it. A node address claimed by two nodes resolves to neither: a handshake from it is not
 * attributed to either node.
 *
 * Every event costs work proportional to what it touches: endpoints are indexed by node, node
 * addresses by address, and a full snapshot is applied in one linear pass.
 */
export class ClusterState extends EventEmitter<ClusterStateEvents> {
  readonly nodes = new Map<string, NodeInfo>();
  /** The effective endpoints: those whose node vouches for them. */
  readonly endpoints = new Map<string, EndpointInfo>();
  readonly policies = new Map<string, PolicyRule>();
  /** Local addresses whose pod the CNI deleted, by the owner it had: see revoke(). */
  private readonly revoked = new Map<string, string | undefined>();
  /** What the source claims, by IP, whether or not it is in effect. */
  private readonly claims = new Map<string, EndpointInfo>();
  private readonly claimsByNode = new Map<string, Set<string>>();
  /** Effective endpoints by node. */
  private readonly endpointsByNode = new Map<string, Map<string, EndpointInfo>>();
  private readonly cidrs = new Map<string, PodCidrs>();
  /** Normalised node address → the nodes that claim it. */
  private readonly addressClaims = new Map<string, Set<string>>();
  /** IPs whose claim is currently refused, so a refusal is reported once. */
  private readonly refused = new Set<string>();
  private synced = false;

  constructor(readonly localNode: string) {
    super();
  }

  get isSynced(): boolean {
    return this.synced;
  }

  apply(event: ClusterEvent): void {
    switch (event.type) {
      case 'node':
        if (event.action === 'upsert') this.upsertNode(event.node);
        else this.deleteNode(event.name);
        return;
      case 'endpoint':
        if (event.action === 'upsert') {
          const ip = normalizeIp(event.endpoint.ip);
          // The pod is gone (CNI DEL) though its source has not said so yet: not brought back.
          if (this.revoked.has(ip) && sameOwner(this.revoked.get(ip), event.endpoint.owner)) return;
          this.upsertEndpoint({ ...event.endpoint, ip });
        } else {
          const ip = normalizeIp(event.ip);
          this.deleteEndpoint(ip, event.owner);
          // The source caught up with the revocation.
          if (this.revoked.has(ip) && sameOwner(this.revoked.get(ip), event.owner)) this.revoked.delete(ip);
        }
        return;
      case 'policy':
        if (event.action === 'upsert') this.policies.set(event.policy.name, event.policy);
        else if (!this.policies.delete(event.name)) return;
        this.emit('changed', event);
        return;
      case 'synced':
        this.synced = true;
        this.emit('changed', event);
        return;
    }
  }

  /** Replaces everything with a full snapshot, as a sequence of events (deletes first); linear in its size. */
  replaceAll(snapshot: ClusterSnapshot): void {
    const nodes = new Map(snapshot.nodes.map((node) => [node.name, node]));
    const endpoints = new Map(snapshot.endpoints.map((endpoint) => [normalizeIp(endpoint.ip), { ...endpoint, ip: normalizeIp(endpoint.ip) }]));
    const policies = new Map(snapshot.policies.map((policy) => [policy.name, policy]));
    for (const name of [...this.policies.keys()]) if (!policies.has(name)) this.apply({ type: 'policy', action: 'delete', name });
    for (const [ip, claim] of [...this.claims]) {
      // An IP that now belongs to another identity is deleted first, then re-added.
      if (endpoints.get(ip)?.spiffeId !== claim.spiffeId) this.apply({ type: 'endpoint', action: 'delete', ip });
    }
    for (const name of [...this.nodes.keys()]) if (!nodes.has(name)) this.apply({ type: 'node', action: 'delete', name });
    for (const node of nodes.values()) if (!sameJson(this.nodes.get(node.name), node)) this.apply({ type: 'node', action: 'upsert', node });
    for (const [ip, endpoint] of endpoints) if (!sameJson(this.claims.get(ip), endpoint)) this.apply({ type: 'endpoint', action: 'upsert', endpoint });
    for (const policy of policies.values()) if (!sameJson(this.policies.get(policy.name), policy)) this.apply({ type: 'policy', action: 'upsert', policy });
    if (!this.synced) this.apply({ type: 'synced' });
  }

  /**
   * The runtime deleted the pod that had this address (CNI DEL): its endpoint goes now, before its
   * source (an informer, the static config) says so, and stays gone: the source's upserts of that
   * address for that owner are ignored until the source deletes it or the address is given to a
   * pod again (unrevoke). An undefined owner (static endpoints, runtimes without pod names)
   * matches any.
   */
  revoke(address: string, owner: string | undefined): void {
    const ip = normalizeIp(address);
    const claim = this.claims.get(ip);
    if (claim && sameOwner(owner, claim.owner)) this.apply({ type: 'endpoint', action: 'delete', ip, ...(claim.owner !== undefined && { owner: claim.owner }) });
    this.revoked.set(ip, owner); // after the delete, which would clear it
  }

  /** The address was given to a pod again (CNI ADD): its source's endpoints count again. */
  unrevoke(address: string): boolean {
    return this.revoked.delete(normalizeIp(address));
  }

  localEndpoints(): EndpointInfo[] {
    return this.endpointsOn(this.localNode);
  }

  /** The effective endpoints of one node. */
  endpointsOn(node: string): EndpointInfo[] {
    return [...(this.endpointsByNode.get(node)?.values() ?? [])];
  }

  /** The node whose agent has this address (none when two nodes claim it): how a responder knows where a handshake came from. */
  nodeByAddress(address: string): NodeInfo | undefined {
    const claimants = this.addressClaims.get(normalizeIp(address));
    if (claimants?.size !== 1) return undefined;
    const [name] = claimants;
    return this.nodes.get(name!);
  }

  endpointByIp(ip: string): EndpointInfo | undefined {
    return this.endpoints.get(normalizeIp(ip));
  }

  private upsertNode(node: NodeInfo): void {
    const previous = this.nodes.get(node.name);
    if (sameJson(previous, node)) return;
    if (previous) this.releaseAddress(previous);
    this.claimAddress(node);
    this.nodes.set(node.name, node);
    this.cidrs.set(node.name, new PodCidrs(node.podCidrs));
    // Endpoints the new CIDRs no longer cover leave before the node changes; those they now cover
    // come after it, so every endpoint event names a node the consumer knows.
    const ips = [...(this.claimsByNode.get(node.name) ?? [])];
    for (const ip of ips) if (!this.vouched(this.claims.get(ip)!)) this.resolve(ip);
    this.emit('changed', { type: 'node', action: 'upsert', node });
    for (const ip of ips) this.resolve(ip);
  }

  private deleteNode(name: string): void {
    const node = this.nodes.get(name);
    if (!node) return;
    this.nodes.delete(name);
    this.cidrs.delete(name);
    this.releaseAddress(node);
    for (const ip of this.claimsByNode.get(name) ?? []) this.resolve(ip);
    this.emit('changed', { type: 'node', action: 'delete', name });
  }

  private upsertEndpoint(endpoint: EndpointInfo): void {
    const previous = this.claims.get(endpoint.ip);
    if (previous && previous.node !== endpoint.node) this.unindexClaim(previous);
    this.claims.set(endpoint.ip, endpoint);
    let ips = this.claimsByNode.get(endpoint.node);
    if (!ips) this.claimsByNode.set(endpoint.node, (ips = new Set<string>()));
    ips.add(endpoint.ip);
    this.resolve(endpoint.ip);
  }

  private deleteEndpoint(ip: string, owner: string | undefined): void {
    const claim = this.claims.get(ip);
    // A delete names the owner it is about, so a late delete cannot remove a new pod's endpoint.
    if (!claim || (owner !== undefined && claim.owner !== owner)) return;
    this.claims.delete(ip);
    this.unindexClaim(claim);
    this.resolve(ip);
  }

  private unindexClaim(claim: EndpointInfo): void {
    const ips = this.claimsByNode.get(claim.node);
    ips?.delete(claim.ip);
    if (ips?.size === 0) this.claimsByNode.delete(claim.node);
  }

  /** Brings the effective endpoint of one IP in line with its claim and the claimant's node. */
  private resolve(ip: string): void {
    const claim = this.claims.get(ip);
    const wanted = claim && this.vouched(claim) ? claim : undefined;
    this.noteRefusal(ip, claim);
    const current = this.endpoints.get(ip);
    if (sameJson(current, wanted) || (!current && !wanted)) return;
    // Another owner, identity or node on the same IP is another endpoint: the old one goes first.
    if (current && (!wanted || wanted.owner !== current.owner || wanted.spiffeId !== current.spiffeId || wanted.node !== current.node)) {
      this.setEffective(ip, current.node, undefined);
      this.emit('changed', { type: 'endpoint', action: 'delete', ip, ...(current.owner !== undefined && { owner: current.owner }) });
    }
    if (wanted) {
      this.setEffective(ip, wanted.node, wanted);
      this.emit('changed', { type: 'endpoint', action: 'upsert', endpoint: wanted });
    }
  }

  private setEffective(ip: string, node: string, endpoint: EndpointInfo | undefined): void {
    let onNode = this.endpointsByNode.get(node);
    if (endpoint) {
      this.endpoints.set(ip, endpoint);
      if (!onNode) this.endpointsByNode.set(node, (onNode = new Map<string, EndpointInfo>()));
      onNode.set(ip, endpoint);
      return;
    }
    this.endpoints.delete(ip);
    onNode?.delete(ip);
    if (onNode?.size === 0) this.endpointsByNode.delete(node);
  }

  private vouched(claim: EndpointInfo): boolean {
    return this.cidrs.get(claim.node)?.contains(claim.ip) ?? false;
  }

  /** A claim is refused when its node is known and does not vouch for it (a missing node is only a wait). */
  private noteRefusal(ip: string, claim: EndpointInfo | undefined): void {
    const refused = claim !== undefined && this.cidrs.has(claim.node) && !this.vouched(claim);
    if (!refused) {
      this.refused.delete(ip);
      return;
    }
    if (this.refused.has(ip)) return;
    this.refused.add(ip);
    this.emit('rejected', { reason: 'endpoint_outside_node_cidrs', node: claim.node, address: ip });
  }

  private claimAddress(node: NodeInfo): void {
    const address = normalizeIp(node.address);
    let claimants = this.addressClaims.get(address);
    if (!claimants) this.addressClaims.set(address, (claimants = new Set<string>()));
    claimants.add(node.name);
    for (const other of claimants) {
      if (other !== node.name) this.emit('rejected', { reason: 'node_address_conflict', node: node.name, address, other });
    }
  }

  private releaseAddress(node: NodeInfo): void {
    const address = normalizeIp(node.address);
    const claimants = this.addressClaims.get(address);
    claimants?.delete(node.name);
    if (claimants?.size === 0) this.addressClaims.delete(address);
  }
}

/** Canonical text form of an IP: IPv4-mapped IPv6 becomes IPv4; IPv6 is compressed and lowercased. */
export function normalizeIp(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped) return mapped[1]!;
  if (isIP(address) === 6) return new URL(`http://[${address}]`).hostname.slice(1, -1);
  return address;
}

function sameOwner(a: string | undefined, b: string | undefined): boolean {
  return a === undefined || b === undefined || a === b;
}

function sameJson(a: unknown, b: unknown): boolean {
  return a !== undefined && JSON.stringify(a) === JSON.stringify(b);
}
