// Pure conversions from Kubernetes objects to the agent's cluster types. Objects come from list
// responses (deserialised models) and from watch events (plain JSON) alike, so every field is
// treated as possibly missing; what cannot be converted is reported, never guessed.
import { isIP } from 'node:net';
import { z } from 'zod';
import type { V1Node, V1Pod } from '@kubernetes/client-node';
import { SpiffeId } from '../../identity/spiffe-id.js';
import { RESERVED_PEERS } from '../reserved.js';
import type { EndpointInfo, NodeInfo, PolicyRule, WorkloadSelector } from '../types.js';

export class ConversionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConversionError';
  }
}

/** "ns/name" for namespaced objects, "name" for cluster-scoped ones. */
export function objectKey(metadata: { namespace?: string; name?: string } | undefined): string {
  const name = metadata?.name ?? '';
  return metadata?.namespace ? `${metadata.namespace}/${name}` : name;
}

/** The SPIFFE ID Kubernetes workloads get: spiffe://<td>/ns/<namespace>/sa/<service account>. */
export function workloadSpiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  const id = `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
  SpiffeId.parse(id);
  return id;
}

/**
 * The endpoints of a pod: one per pod IP (IPv4 and IPv6). Only running pods count: a pod that
 * has not started or has finished may hold an IP that the CNI is about to give to another pod.
 * Host-network pods share the node's address and are not workload endpoints.
 */
export function podEndpoints(pod: V1Pod, trustDomain: string): EndpointInfo[] {
  const namespace = pod.metadata?.namespace;
  const name = pod.metadata?.name;
  if (!namespace || !name) throw new ConversionError('pod without metadata.namespace/name');
  if (pod.spec?.hostNetwork === true || pod.status?.phase !== 'Running') return [];
  const node = pod.spec?.nodeName;
  if (!node) throw new ConversionError(`running pod ${namespace}/${name} has no spec.nodeName`);
  const serviceAccount = pod.spec?.serviceAccountName || 'default';
  const spiffeId = workloadSpiffeId(trustDomain, namespace, serviceAccount);
  const listed = pod.status?.podIPs?.map((entry) => entry.ip) ?? [];
  const ips = listed.length > 0 ? listed : pod.status?.podIP ? [pod.status.podIP] : [];
  const bad = ips.find((ip) => isIP(ip) === 0);
  if (bad !== undefined) throw new ConversionError(`pod ${namespace}/${name} has an invalid IP "${bad}"`);
  return [...new Set(ips)].map((ip) => ({
    ip,
    spiffeId,
    node,
    namespace,
    serviceAccount,
    labels: { ...(pod.metadata?.labels ?? {}) },
    owner: `${namespace}/${name}`,
  }));
}

/**
 * The endpoints of a pod the CNI has just wired on `node` (CNI ADD: the pod is not Running yet,
 * and its status may not list the addresses yet): the runtime's addresses, under the identity
 * the pod's spec names. Refused unless the pod is scheduled to that node (a node vouches only for
 * its own pods) and is neither finished nor being deleted.
 */
export function wiredPodEndpoints(pod: V1Pod, trustDomain: string, node: string, ips: readonly string[]): EndpointInfo[] {
  const namespace = pod.metadata?.namespace;
  const name = pod.metadata?.name;
  if (!namespace || !name) throw new ConversionError('pod without metadata.namespace/name');
  if (pod.spec?.nodeName !== node) throw new ConversionError(`pod ${namespace}/${name} is not scheduled to node ${node}`);
  if (pod.metadata?.deletionTimestamp !== undefined || pod.status?.phase === 'Succeeded' || pod.status?.phase === 'Failed') {
    throw new ConversionError(`pod ${namespace}/${name} is finished or being deleted`);
  }
  const serviceAccount = pod.spec?.serviceAccountName || 'default';
  const spiffeId = workloadSpiffeId(trustDomain, namespace, serviceAccount);
  return [...new Set(ips)].map((ip) => ({ ip, spiffeId, node, namespace, serviceAccount, labels: { ...(pod.metadata?.labels ?? {}) }, owner: `${namespace}/${name}` }));
}

/**
 * A node and the address peers reach it at: its first InternalIP (the primary address family on
 * dual-stack nodes). A node without one is refused rather than reached at some other address.
 */
export function nodeInfo(node: V1Node): NodeInfo {
  const name = node.metadata?.name;
  if (!name) throw new ConversionError('node without metadata.name');
  const address = node.status?.addresses?.find((entry) => entry.type === 'InternalIP')?.address;
  if (!address) throw new ConversionError(`node ${name} has no InternalIP address`);
  if (isIP(address) === 0) throw new ConversionError(`node ${name} has an invalid InternalIP "${address}"`);
  const cidrs = node.spec?.podCIDRs ?? (node.spec?.podCIDR ? [node.spec.podCIDR] : []);
  return { name, address, podCidrs: [...new Set(cidrs)] };
}

/** A SPIFFE ID or pattern ("*" within a segment, "**" across); the CRD's schema uses the same. */
export const SPIFFE_ID_PATTERN = /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._*-]+)*$/;

const labels = z.record(z.string(), z.string());
const policySchema = z.object({
  metadata: z.object({ name: z.string().min(1), namespace: z.string().min(1) }),
  spec: z.object({
    mode: z.enum(['required', 'disabled']),
    source: z
      .object({
        reserved: z.enum(RESERVED_PEERS).optional(),
        namespace: z.string().min(1).optional(),
        serviceAccount: z.string().min(1).optional(),
        spiffeId: z.string().regex(SPIFFE_ID_PATTERN, 'must be spiffe://<trust domain>[/path], "*" and "**" as wildcards').optional(),
        matchLabels: labels.optional(),
      })
      .optional(),
    destination: z
      .object({
        namespace: z.string().min(1).optional(),
        serviceAccount: z.string().min(1).optional(),
        matchLabels: labels.optional(),
      })
      .optional(),
  }),
});

/**
 * A MutualAuthPolicy as a rule. A policy governs traffic *to* workloads in its own namespace:
 * the destination's namespace is the policy's namespace (naming another one is refused), so whoever
 * may write policies in a namespace decides only about that namespace's inbound traffic. The source
 * may be any namespace, or a reserved peer (`source.reserved`: host, remote-node, world,
 * kube-apiserver; alone); an omitted source matches every workload and every reserved peer.
 */
export function policyRule(object: unknown): PolicyRule {
  const parsed = policySchema.safeParse(object);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ConversionError(`invalid MutualAuthPolicy: ${issue ? `${issue.path.join('.')}: ${issue.message}` : 'unreadable'}`);
  }
  const { metadata, spec } = parsed.data;
  const name = `${metadata.namespace}/${metadata.name}`;
  const destinationNamespace = spec.destination?.namespace ?? metadata.namespace;
  if (destinationNamespace !== metadata.namespace) {
    throw new ConversionError(
      `MutualAuthPolicy ${name}: spec.destination.namespace "${destinationNamespace}" differs from the policy's own namespace`,
    );
  }
  const source: WorkloadSelector = {};
  if (spec.source?.reserved !== undefined) {
    const { reserved, ...workloadFields } = spec.source;
    if (Object.keys(workloadFields).length > 0) {
      throw new ConversionError(`MutualAuthPolicy ${name}: spec.source.reserved selects a peer that is not a workload and cannot be combined with ${Object.keys(workloadFields).join(', ')}`);
    }
    return { name, source: { reserved }, destination: destinationSelector(spec.destination, destinationNamespace), mode: spec.mode };
  }
  if (spec.source?.namespace !== undefined) source.namespace = spec.source.namespace;
  if (spec.source?.serviceAccount !== undefined) source.serviceAccount = spec.source.serviceAccount;
  if (spec.source?.spiffeId !== undefined) source.spiffeId = spec.source.spiffeId;
  if (spec.source?.matchLabels !== undefined) source.labels = { ...spec.source.matchLabels };
  return { name, source, destination: destinationSelector(spec.destination, destinationNamespace), mode: spec.mode };
}

function destinationSelector(spec: z.output<typeof policySchema>['spec']['destination'], namespace: string): WorkloadSelector {
  const destination: WorkloadSelector = { namespace };
  if (spec?.serviceAccount !== undefined) destination.serviceAccount = spec.serviceAccount;
  if (spec?.matchLabels !== undefined) destination.labels = { ...spec.matchLabels };
  return destination;
}
