// Reserved peers: the senders and receivers of a workload's traffic that are not workloads. They
// hold no SVID and run no agent, so they can never authenticate a pair: policy decides only
// whether their traffic passes (mode disabled) or is dropped (mode required).

/**
 * - `host`: this node's own addresses — the kubelet (its probes), host-network pods of this node;
 * - `remote-node`: another node's address — its kubelet, its host-network pods, NodePort traffic
 *   it masqueraded;
 * - `world`: anything outside the cluster's pod and Service CIDRs and its nodes;
 * - `kube-apiserver`: the API server's addresses (webhooks, aggregated APIs, and calls to it).
 */
export const RESERVED_PEERS = ['host', 'remote-node', 'world', 'kube-apiserver'] as const;
export type ReservedPeer = (typeof RESERVED_PEERS)[number];

/** A reserved peer where policy evaluates a pair (it takes the place of an endpoint). */
export interface ReservedPeerRef {
  reserved: ReservedPeer;
}

/**
 * Exempt from authentication unless the config says otherwise: the kubelet's probes come from
 * `host`, and every pod that talks to the API server talks to `kube-apiserver`. A policy that
 * requires authentication from "anywhere" would otherwise break both.
 */
export const DEFAULT_EXEMPT_PEERS: readonly ReservedPeer[] = ['host', 'kube-apiserver'];
