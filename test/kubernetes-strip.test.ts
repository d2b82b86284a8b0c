// What the informers cache of each object (#14): only what the conversions read, so a cluster's
// pods and nodes cost the agent a few hundred bytes each, and the conversions see no difference.
import test from 'ava';
import type { V1Node, V1Pod } from '@kubernetes/client-node';
import { nodeInfo, podEndpoints, wiredPodEndpoints } from '../src/cluster/kubernetes/convert.js';
import { stripNode, stripPod } from '../src/cluster/kubernetes/strip.js';
import { node, pod } from './helpers/cluster-events.js';

/** A pod as the API server sends it: managed fields, containers, conditions, annotations. */
function realisticPod(spec: Parameters<typeof pod>[0]): V1Pod {
  const base = pod(spec) as V1Pod;
  return {
    ...base,
    metadata: {
      ...base.metadata,
      resourceVersion: '4242',
      uid: '6f1c0d4e-0000-4000-8000-000000000001',
      annotations: { 'kubectl.kubernetes.io/last-applied-configuration': 'x'.repeat(2000) },
      managedFields: [{ manager: 'kubelet', operation: 'Update', fieldsType: 'FieldsV1', fieldsV1: { 'f:status': { 'f:conditions': {} } } }],
    },
    spec: {
      ...base.spec!,
      containers: [{ name: 'app', image: 'registry.example/app:1.2.3', env: [{ name: 'A', value: 'b'.repeat(500) }], ports: [{ containerPort: 8080 }] }],
      volumes: [{ name: 'token', projected: { sources: [{ serviceAccountToken: { path: 'token', expirationSeconds: 3607 } }] } }],
    },
    status: {
      ...base.status!,
      conditions: [{ type: 'Ready', status: 'True' }],
      containerStatuses: [{ name: 'app', image: 'registry.example/app:1.2.3', imageID: 'sha256:'.padEnd(71, 'a'), ready: true, restartCount: 0 }],
      hostIP: '192.0.2.1',
    },
  };
}

test('a stripped pod converts to the same endpoints as the full pod, at a fraction of the size', (t) => {
  const cases = [
    realisticPod({ namespace: 'shop', name: 'web-1', serviceAccount: 'web', node: 'node-a', ips: ['10.0.0.5', 'fd00::5'], labels: { app: 'web' } }),
    realisticPod({ namespace: 'shop', name: 'pending', node: 'node-a', phase: 'Pending' }),
    realisticPod({ namespace: 'kube-system', name: 'proxy', node: 'node-a', ips: ['192.0.2.1'], hostNetwork: true }),
    realisticPod({ namespace: 'shop', name: 'no-sa', node: 'node-b', ips: ['10.0.1.9'] }),
  ];
  for (const full of cases) {
    const stripped = stripPod(full);
    t.deepEqual(podEndpoints(stripped, 'td'), podEndpoints(full, 'td'), full.metadata?.name);
    t.is(stripped.metadata?.resourceVersion, '4242', 'the informer cache compares resourceVersions');
    t.true(JSON.stringify(stripped).length * 5 < JSON.stringify(full).length, 'far smaller');
  }
  t.throws(() => podEndpoints(stripPod({ ...cases[0]!, status: { ...cases[0]!.status, podIPs: [{ ip: 'bogus' }] } }), 'td'), { message: /invalid IP/ });
  // The CNI's lookup of a scheduled pod reads its uid (the same pod, not one of the same name) and deletion.
  const pending = cases[1]!;
  t.is(stripPod(pending).metadata?.uid, pending.metadata?.uid);
  t.deepEqual(wiredPodEndpoints(stripPod(pending), 'td', 'node-a', ['10.0.0.7']), wiredPodEndpoints(pending, 'td', 'node-a', ['10.0.0.7']));
  const deleting = { ...pending, metadata: { ...pending.metadata, deletionTimestamp: new Date() } };
  t.throws(() => wiredPodEndpoints(stripPod(deleting), 'td', 'node-a', ['10.0.0.7']), { message: /being deleted/ });
});

test('a stripped node converts to the same node', (t) => {
  const full = node('node-a', [{ type: 'Hostname', address: 'node-a' }, { type: 'InternalIP', address: '192.0.2.1' }], ['10.0.0.0/24', 'fd00::/64']) as V1Node;
  const real: V1Node = {
    ...full,
    metadata: { ...full.metadata, resourceVersion: '7' },
    status: { ...full.status, images: [{ names: ['registry.example/app:1.2.3'], sizeBytes: 1e8 }], conditions: [{ type: 'Ready', status: 'True' }] },
  };
  t.deepEqual(nodeInfo(stripNode(real)), nodeInfo(real));
  const legacy: V1Node = { metadata: { name: 'old' }, spec: { podCIDR: '10.9.0.0/24' }, status: { addresses: [{ type: 'InternalIP', address: '192.0.2.9' }] } };
  t.deepEqual(nodeInfo(stripNode(legacy)), nodeInfo(legacy));
});
