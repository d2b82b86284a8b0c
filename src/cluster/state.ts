import { EventEmitter } from 'node:events';
import { isIP } from 'node:net';
import type { ClusterEvent, EndpointInfo, NodeInfo, PolicyRule } from './types.js';

interface ClusterStateEvents {
  /** Something changed; the agent recomputes what it needs from the state. */
  changed: [ClusterEvent];
}

/**
 * What the agent currently believes about the cluster, built from ClusterEvents. `isSynced`
 * turns true once the source delivered its complete initial state: until then the agent must
 * not garbage-collect datapath entries, because a restarting agent has simply not listed
 * everything yet.
 */
export class ClusterState extends EventEmitter<ClusterStateEvents> {
  readonly nodes = new Map<string, NodeInfo>();
  readonly endpoints = new Map<string, EndpointInfo>();
  readonly policies = new Map<string, PolicyRule>();
  /** Local addresses whose pod the CNI deleted, by the owner it had: see revoke(). */
  private readonly revoked = new Map<string, string | undefined>();
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
        if (event.action === 'upsert') this.nodes.set(event.node.name, event.node);
        else this.nodes.delete(event.name);
        break;
      case 'endpoint':
        if (event.action === 'upsert') {
          const ip = normalizeIp(event.endpoint.ip);
          // The pod is gone (CNI DEL) though its source has not said so yet: not brought back.
          if (this.revoked.has(ip) && sameOwner(this.revoked.get(ip), event.endpoint.owner)) return;
          this.endpoints.set(ip, { ...event.endpoint, ip });
        } else {
          const ip = normalizeIp(event.ip);
          // A delete names the owner it is about, so a late delete cannot remove a new pod's endpoint.
          if (event.owner === undefined || this.endpoints.get(ip)?.owner === event.owner) this.endpoints.delete(ip);
          // The source caught up with the revocation.
          if (this.revoked.has(ip) && sameOwner(this.revoked.get(ip), event.owner)) this.revoked.delete(ip);
        }
        break;
      case 'policy':
        if (event.action === 'upsert') this.policies.set(event.policy.name, event.policy);
        else this.policies.delete(event.name);
        break;
      case 'synced':
        this.synced = true;
        break;
    }
    this.emit('changed', event);
  }

  /** Replaces everything with a full snapshot, as a sequence of events (deletes first). */
  replaceAll(snapshot: { nodes: NodeInfo[]; endpoints: EndpointInfo[]; policies: PolicyRule[] }): void {
    const nodeNames = new Set(snapshot.nodes.map((n) => n.name));
    const ips = new Set(snapshot.endpoints.map((e) => normalizeIp(e.ip)));
    const policyNames = new Set(snapshot.policies.map((p) => p.name));
    for (const name of [...this.policies.keys()]) if (!policyNames.has(name)) this.apply({ type: 'policy', action: 'delete', name });
    for (const [ip, endpoint] of [...this.endpoints]) {
      const next = snapshot.endpoints.find((e) => normalizeIp(e.ip) === ip);
      // An IP that now belongs to another identity is deleted first, then re-added.
      if (!ips.has(ip) || next?.spiffeId !== endpoint.spiffeId) this.apply({ type: 'endpoint', action: 'delete', ip });
    }
    for (const name of [...this.nodes.keys()]) if (!nodeNames.has(name)) this.apply({ type: 'node', action: 'delete', name });
    for (const node of snapshot.nodes) if (!sameJson(this.nodes.get(node.name), node)) this.apply({ type: 'node', action: 'upsert', node });
    for (const endpoint of snapshot.endpoints) {
      if (!sameJson(this.endpoints.get(normalizeIp(endpoint.ip)), { ...endpoint, ip: normalizeIp(endpoint.ip) })) {
        this.apply({ type: 'endpoint', action: 'upsert', endpoint });
      }
    }
    for (const policy of snapshot.policies) if (!sameJson(this.policies.get(policy.name), policy)) this.apply({ type: 'policy', action: 'upsert', policy });
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
    const endpoint = this.endpoints.get(ip);
    if (endpoint && sameOwner(owner, endpoint.owner)) this.apply({ type: 'endpoint', action: 'delete', ip, ...(endpoint.owner !== undefined && { owner: endpoint.owner }) });
    this.revoked.set(ip, owner); // after the delete, which would clear it
  }

  /** The address was given to a pod again (CNI ADD): its source's endpoints count again. */
  unrevoke(address: string): boolean {
    return this.revoked.delete(normalizeIp(address));
  }

  localEndpoints(): EndpointInfo[] {
    return [...this.endpoints.values()].filter((e) => e.node === this.localNode);
  }

  remoteEndpoints(): EndpointInfo[] {
    return [...this.endpoints.values()].filter((e) => e.node !== this.localNode);
  }

  /** The node whose agent has this address: how a responder knows where a handshake came from. */
  nodeByAddress(address: string): NodeInfo | undefined {
    const ip = normalizeIp(address);
    for (const node of this.nodes.values()) if (normalizeIp(node.address) === ip) return node;
    return undefined;
  }

  endpointByIp(ip: string): EndpointInfo | undefined {
    return this.endpoints.get(normalizeIp(ip));
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
