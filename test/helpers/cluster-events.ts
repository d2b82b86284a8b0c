// Test helpers for ClusterEvent streams: a Map-based model of the agent's view that applies events
// and records every ordering rule an event breaks, a recorder to wait on, and Kubernetes object
// builders for the test API server.
import type { ClusterEvent, EndpointInfo, NodeInfo, PolicyRule } from '../../src/cluster/types.js';
import type { KubeObject } from '../servers/kube-api-server.js';

/** What an agent would hold after applying the events, plus every rule the stream broke. */
export class AppliedState {
  readonly nodes = new Map<string, NodeInfo>();
  readonly endpoints = new Map<string, EndpointInfo>();
  readonly policies = new Map<string, PolicyRule>();
  synced = false;
  readonly violations: string[] = [];

  apply(event: ClusterEvent): void {
    if (event.type === 'synced') {
      if (this.synced) this.violations.push('synced twice');
      this.synced = true;
      return;
    }
    if (event.action === 'delete' && !this.synced) this.violations.push(`${event.type} delete before synced`);
    switch (event.type) {
      case 'node':
        if (event.action === 'upsert') this.nodes.set(event.node.name, event.node);
        else if (!this.nodes.delete(event.name)) this.violations.push(`delete of unknown node ${event.name}`);
        break;
      case 'policy':
        if (event.action === 'upsert') this.policies.set(event.policy.name, event.policy);
        else if (!this.policies.delete(event.name)) this.violations.push(`delete of unknown policy ${event.name}`);
        break;
      case 'endpoint':
        if (event.action === 'upsert') {
          const held = this.endpoints.get(event.endpoint.ip);
          if (held && (held.owner !== event.endpoint.owner || held.spiffeId !== event.endpoint.spiffeId)) {
            this.violations.push(`upsert of ${event.endpoint.ip} for ${event.endpoint.owner} while ${held.owner} holds it`);
          }
          this.endpoints.set(event.endpoint.ip, event.endpoint);
        } else {
          const held = this.endpoints.get(event.ip);
          if (!held) this.violations.push(`delete of unknown endpoint ${event.ip}`);
          else if (held.owner !== event.owner) this.violations.push(`delete of ${event.ip} names ${event.owner}, held by ${held.owner}`);
          this.endpoints.delete(event.ip);
        }
        break;
    }
  }

  /** IP → owner, for compact assertions. */
  owners(): Record<string, string | undefined> {
    return Object.fromEntries([...this.endpoints].map(([ip, endpoint]) => [ip, endpoint.owner]));
  }
}

/** Collects events from a source, applies them, and lets a test wait for a condition. */
export class EventRecorder {
  readonly events: ClusterEvent[] = [];
  readonly state = new AppliedState();
  private waiters: (() => void)[] = [];

  readonly push = (event: ClusterEvent): void => {
    this.events.push(event);
    this.state.apply(event);
    for (const wake of this.waiters.splice(0)) wake();
  };

  /** Events from index `from` on (to assert what one step produced). */
  since(from: number): ClusterEvent[] {
    return this.events.slice(from);
  }

  async until(condition: () => boolean, what = 'condition', timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!condition()) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; events: ${JSON.stringify(this.events)}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 20);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }
}

/** Polls a condition that no event announces (server-side state). */
export async function until(condition: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

export interface PodSpec {
  namespace?: string;
  name: string;
  serviceAccount?: string;
  node?: string;
  ips?: string[];
  phase?: string;
  labels?: Record<string, string>;
  hostNetwork?: boolean;
}

export function pod(spec: PodSpec): KubeObject {
  const ips = spec.ips ?? [];
  return {
    metadata: { namespace: spec.namespace ?? 'default', name: spec.name, labels: spec.labels ?? {} },
    spec: {
      nodeName: spec.node ?? 'node-a',
      ...(spec.serviceAccount ? { serviceAccountName: spec.serviceAccount } : {}),
      ...(spec.hostNetwork ? { hostNetwork: true } : {}),
      containers: [{ name: 'app', image: 'example/app:1' }],
    },
    status: {
      phase: spec.phase ?? 'Running',
      ...(ips[0] ? { podIP: ips[0] } : {}),
      ...(ips.length ? { podIPs: ips.map((ip) => ({ ip })) } : {}),
    },
  };
}

export function node(name: string, addresses: { type: string; address: string }[], podCidrs: string[] = []): KubeObject {
  return {
    metadata: { name },
    spec: podCidrs.length ? { podCIDR: podCidrs[0], podCIDRs: podCidrs } : {},
    status: { addresses },
  };
}

export function policy(namespace: string, name: string, spec: Record<string, unknown>): KubeObject {
  return { metadata: { namespace, name }, spec };
}
