// The agent's view of the cluster: which nodes exist, which workload endpoints live where, and
// which identity pairs policy requires to be authenticated. Two sources produce it: the static
// section of the config file and the Kubernetes informers. Both emit the same types.
import type { ReservedPeer } from './reserved.js';

/** A node of the cluster: where its agent listens and which pod addresses live behind it. */
export interface NodeInfo {
  name: string;
  /** The address peers use for handshakes and the transport (Kubernetes: the InternalIP). */
  address: string;
  /** Pod CIDRs routed to this node. */
  podCidrs: string[];
  /** Handshake port of its agent (default 4250). */
  port?: number;
}

/** One workload endpoint (a pod IP) and the identity it runs as. */
export interface EndpointInfo {
  /** Pod IP, IPv4 or IPv6. */
  ip: string;
  /** SPIFFE ID, e.g. spiffe://td/ns/<ns>/sa/<sa>. */
  spiffeId: string;
  /** Name of the node the endpoint runs on. */
  node: string;
  /** Host-side interface of the endpoint (set for local endpoints; the gate attaches there). */
  interface?: string;
  /** Kubernetes metadata, used by label/namespace selectors. */
  namespace?: string;
  serviceAccount?: string;
  labels?: Record<string, string>;
  /** Kubernetes object key ("ns/name"), to tell a new pod reusing an IP from the old one. */
  owner?: string;
}

/**
 * Selects workloads, or one reserved peer (`reserved`, alone). Every field given must match. An
 * empty selector matches every peer, reserved ones included; one with any workload field matches
 * workloads only.
 */
export interface WorkloadSelector {
  reserved?: ReservedPeer;
  /** Exact SPIFFE ID, or a pattern where "*" matches within one path segment and "**" across segments. */
  spiffeId?: string;
  namespace?: string;
  serviceAccount?: string;
  /** Label equality (Kubernetes matchLabels). */
  labels?: Record<string, string>;
}

export type PolicyMode = 'required' | 'disabled';

/** Traffic between workloads matching source and destination needs an authenticated pair (or not). */
export interface PolicyRule {
  /** Unique name ("ns/name" for a MutualAuthPolicy). */
  name: string;
  source: WorkloadSelector;
  destination: WorkloadSelector;
  mode: PolicyMode;
}

/** A full snapshot of what one source knows. */
export interface ClusterSnapshot {
  nodes: NodeInfo[];
  endpoints: EndpointInfo[];
  policies: PolicyRule[];
}

/** Incremental changes, in the order they must be applied. */
export type ClusterEvent =
  | { type: 'node'; action: 'upsert'; node: NodeInfo }
  | { type: 'node'; action: 'delete'; name: string }
  | { type: 'endpoint'; action: 'upsert'; endpoint: EndpointInfo }
  | { type: 'endpoint'; action: 'delete'; ip: string; owner?: string }
  | { type: 'policy'; action: 'upsert'; policy: PolicyRule }
  | { type: 'policy'; action: 'delete'; name: string }
  /** The source has delivered its complete initial state; deletions are safe from now on. */
  | { type: 'synced' };

/** A source of cluster state (static config or Kubernetes). */
export interface ClusterSource {
  /** Starts delivering events; the first ones describe the initial state, then 'synced'. */
  start(onEvent: (event: ClusterEvent) => void): Promise<void>;
  stop(): Promise<void>;
}
