// The static cluster the scale benchmark serves: nodes with one /24 pod CIDR each, the same number
// of running pods on every node, 50 namespaces of 10 service accounts, and one MutualAuthPolicy per
// namespace (its sa-1 pods must authenticate to its sa-0 pods). The local node is node 0.
import type { KubeObject } from '../../test/servers/kube-api-server.js';
import { node, pod, policy } from '../../test/helpers/cluster-events.js';

export interface Scale {
  nodes: number;
  pods: number;
  /** MutualAuthPolicies (one per namespace; at most NAMESPACES). */
  rules: number;
}

export const NAMESPACES = 50;
const SERVICE_ACCOUNTS = 10;

export const nodeName = (index: number): string => `node-${String(index).padStart(5, '0')}`;
export const LOCAL_NODE = nodeName(0);

/** 10.64.0.0/24, 10.64.1.0/24, ...: node n's pod addresses. */
function podPrefix(index: number): string {
  return `10.${64 + (index >> 8)}.${index & 255}`;
}

export function podsPerNode(scale: Scale): number {
  return Math.floor(scale.pods / scale.nodes);
}

export function clusterNode(index: number): KubeObject {
  // 172.20.0.0/16: addresses the agent's private network namespace has no route to.
  return node(nodeName(index), [{ type: 'InternalIP', address: `172.20.${index >> 8}.${index & 255}` }], [`${podPrefix(index)}.0/24`]);
}

/** Pod `slot` of node `index` (slots 0..podsPerNode-1 are the static cluster; higher ones churn). */
export function clusterPod(index: number, slot: number, serial: number): KubeObject {
  const namespace = `ns-${serial % NAMESPACES}`;
  const serviceAccount = `sa-${Math.floor(serial / NAMESPACES) % SERVICE_ACCOUNTS}`;
  return pod({
    namespace,
    name: `pod-${index}-${slot}`,
    serviceAccount,
    node: nodeName(index),
    ips: [podIp(index, slot)],
    labels: { app: serviceAccount, 'pod-template-hash': `${namespace}-${serviceAccount}` },
  });
}

export function podIp(index: number, slot: number): string {
  return `${podPrefix(index)}.${2 + slot}`;
}

export function clusterPolicy(namespace: number): KubeObject {
  return policy(`ns-${namespace}`, 'sa-0-inbound', {
    mode: 'required',
    source: { namespace: `ns-${namespace}`, serviceAccount: 'sa-1' },
    destination: { serviceAccount: 'sa-0' },
  });
}

/** Every object of the cluster, nodes first. */
export function* clusterObjects(scale: Scale): Generator<['nodes' | 'pods' | 'mutualauthpolicies', KubeObject]> {
  for (let index = 0; index < scale.nodes; index++) yield ['nodes', clusterNode(index)];
  const perNode = podsPerNode(scale);
  for (let index = 0; index < scale.nodes; index++) {
    for (let slot = 0; slot < perNode; slot++) yield ['pods', clusterPod(index, slot, index * perNode + slot)];
  }
  for (let namespace = 0; namespace < Math.min(scale.rules, NAMESPACES); namespace++) yield ['mutualauthpolicies', clusterPolicy(namespace)];
}
