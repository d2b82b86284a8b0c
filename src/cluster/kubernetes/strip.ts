// What the agent keeps of each object it lists and watches: only the fields the conversions in
// convert.ts read, plus what the informer's cache needs (name, namespace, resourceVersion). A real
// Pod or Node is several kilobytes (managedFields, container specs, conditions, node images); the
// informer would hold every one of them for as long as it exists. Stripped at the door — each
// list page and each watch event — the cache holds a few hundred bytes per object.
import type { KubernetesObject, V1Node, V1Pod } from '@kubernetes/client-node';
import type { WatchedResource } from './resources.js';

interface Metadata {
  name?: string;
  namespace?: string;
  resourceVersion?: string;
  labels?: Record<string, string>;
  uid?: string;
  deletionTimestamp?: Date;
}

function metadata(object: KubernetesObject, pod: boolean): Metadata {
  const { name, namespace, resourceVersion, labels, uid, deletionTimestamp } = object.metadata ?? {};
  return {
    ...(name !== undefined && { name }),
    ...(namespace !== undefined && { namespace }),
    ...(resourceVersion !== undefined && { resourceVersion }),
    // A pod's labels are read by policy; its uid and deletion by the CNI's lookup (wiredPodEndpoints).
    ...(pod && labels !== undefined && { labels }),
    ...(pod && uid !== undefined && { uid }),
    ...(pod && deletionTimestamp !== undefined && { deletionTimestamp }),
  };
}

export function stripPod(pod: V1Pod): V1Pod {
  const spec = pod.spec;
  const status = pod.status;
  return {
    metadata: metadata(pod, true),
    // containers is required by the type, never read: an empty list keeps the object well-formed.
    spec: {
      containers: [],
      ...(spec?.nodeName !== undefined && { nodeName: spec.nodeName }),
      ...(spec?.serviceAccountName !== undefined && { serviceAccountName: spec.serviceAccountName }),
      ...(spec?.hostNetwork !== undefined && { hostNetwork: spec.hostNetwork }),
    },
    status: {
      ...(status?.phase !== undefined && { phase: status.phase }),
      ...(status?.podIP !== undefined && { podIP: status.podIP }),
      ...(status?.podIPs !== undefined && { podIPs: status.podIPs.map((entry) => ({ ip: entry.ip })) }),
    },
  };
}

export function stripNode(node: V1Node): V1Node {
  return {
    metadata: metadata(node, false),
    spec: {
      ...(node.spec?.podCIDR !== undefined && { podCIDR: node.spec.podCIDR }),
      ...(node.spec?.podCIDRs !== undefined && { podCIDRs: node.spec.podCIDRs }),
    },
    status: {
      ...(node.status?.addresses !== undefined && { addresses: node.status.addresses.map(({ type, address }) => ({ type, address })) }),
    },
  };
}

/** The stripping for a resource's objects (policies are small and read whole: kept as they are). */
export function stripperFor<T extends KubernetesObject>(resource: WatchedResource): (object: T) => T {
  if (resource === 'pods') return (object) => stripPod(object) as T;
  if (resource === 'nodes') return (object) => stripNode(object) as T;
  return (object) => object;
}
