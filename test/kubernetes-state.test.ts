import test from 'ava';
import fc from 'fast-check';
import { isDeepStrictEqual } from 'node:util';
import type { V1Node, V1Pod } from '@kubernetes/client-node';
import { ClusterStateTracker } from '../src/cluster/kubernetes/cluster-state.js';
import { ConversionError, nodeInfo, podEndpoints, policyRule, wiredPodEndpoints } from '../src/cluster/kubernetes/convert.js';
import { kubernetesOptionsSchema } from '../src/cluster/kubernetes/options.js';
import type { ClusterEvent, EndpointInfo } from '../src/cluster/types.js';
import { AppliedState, node, pod, policy } from './helpers/cluster-events.js';

const TD = 'cluster.test';

function endpoint(ip: string, owner: string, serviceAccount = 'sa', labels: Record<string, string> = {}): EndpointInfo {
  const [namespace = 'default'] = owner.split('/');
  return {
    ip,
    spiffeId: `spiffe://${TD}/ns/${namespace}/sa/${serviceAccount}`,
    node: 'node-a',
    namespace,
    serviceAccount,
    labels,
    owner,
  };
}

function synced(tracker: ClusterStateTracker, state = new AppliedState()): AppliedState {
  for (const event of tracker.markSynced()) state.apply(event);
  return state;
}

function applyAll(state: AppliedState, events: ClusterEvent[]): ClusterEvent[] {
  for (const event of events) state.apply(event);
  return events;
}

// ---- the tracker ----

test('nothing is emitted before markSynced; then the whole state, nodes first, then synced once', (t) => {
  const tracker = new ClusterStateTracker();
  t.deepEqual(tracker.setPolicy({ name: 'ns/p', source: {}, destination: { namespace: 'ns' }, mode: 'required' }), []);
  t.deepEqual(tracker.setPod('default/a', [endpoint('10.0.0.1', 'default/a')]), []);
  t.deepEqual(tracker.setPod('default/gone', [endpoint('10.0.0.2', 'default/gone')]), []);
  t.deepEqual(tracker.removePod('default/gone'), [], 'a deletion before sync is not emitted');
  t.deepEqual(tracker.setNode({ name: 'node-a', address: '192.0.2.1', podCidrs: [] }), []);
  t.deepEqual(tracker.setNode({ name: 'node-x', address: '192.0.2.9', podCidrs: [] }), []);
  t.deepEqual(tracker.removeNode('node-x'), []);
  t.false(tracker.isSynced);
  const events = tracker.markSynced();
  t.deepEqual(
    events.map((event) => event.type),
    ['node', 'endpoint', 'policy', 'synced'],
  );
  t.true(events.every((event) => event.type === 'synced' || event.action === 'upsert'));
  t.deepEqual(tracker.markSynced(), [], 'synced is emitted once');
  const state = new AppliedState();
  applyAll(state, events);
  t.deepEqual(state.owners(), { '10.0.0.1': 'default/a' });
  t.deepEqual([...state.nodes.keys()], ['node-a']);
  t.deepEqual(state.violations, []);
});

test('unchanged objects emit nothing; changes emit upserts; removals emit deletes', (t) => {
  const tracker = new ClusterStateTracker();
  const state = synced(tracker);
  const n = { name: 'node-a', address: '192.0.2.1', podCidrs: ['10.0.0.0/24'] };
  t.is(applyAll(state, tracker.setNode(n)).length, 1);
  t.deepEqual(tracker.setNode({ ...n, podCidrs: ['10.0.0.0/24'] }), [], 'same content, new object');
  t.deepEqual(applyAll(state, tracker.setNode({ ...n, address: '192.0.2.2' })), [{ type: 'node', action: 'upsert', node: { ...n, address: '192.0.2.2' } }]);
  t.deepEqual(applyAll(state, tracker.removeNode('node-a')), [{ type: 'node', action: 'delete', name: 'node-a' }]);
  t.deepEqual(tracker.removeNode('node-a'), [], 'deleting twice emits once');

  const a = endpoint('10.0.0.1', 'default/a', 'sa', { app: 'v1' });
  t.deepEqual(applyAll(state, tracker.setPod('default/a', [a])), [{ type: 'endpoint', action: 'upsert', endpoint: a }]);
  t.deepEqual(tracker.setPod('default/a', [{ ...a, labels: { app: 'v1' } }]), []);
  const relabelled = { ...a, labels: { app: 'v2' } };
  t.deepEqual(
    applyAll(state, tracker.setPod('default/a', [relabelled])),
    [{ type: 'endpoint', action: 'upsert', endpoint: relabelled }],
    'the same pod with new labels is a plain upsert',
  );
  t.deepEqual(applyAll(state, tracker.removePod('default/a')), [{ type: 'endpoint', action: 'delete', ip: '10.0.0.1', owner: 'default/a' }]);
  t.deepEqual(tracker.removePod('default/a'), []);
  t.deepEqual(state.violations, []);
});

test('a pod whose IP changes: the old IP is deleted before the new one is upserted', (t) => {
  const tracker = new ClusterStateTracker();
  const state = synced(tracker);
  applyAll(state, tracker.setPod('default/a', [endpoint('10.0.0.1', 'default/a'), endpoint('fd00::1', 'default/a')]));
  const events = applyAll(state, tracker.setPod('default/a', [endpoint('10.0.0.7', 'default/a'), endpoint('fd00::1', 'default/a')]));
  t.deepEqual(events, [
    { type: 'endpoint', action: 'delete', ip: '10.0.0.1', owner: 'default/a' },
    { type: 'endpoint', action: 'upsert', endpoint: endpoint('10.0.0.7', 'default/a') },
  ]);
  t.deepEqual(state.owners(), { '10.0.0.7': 'default/a', 'fd00::1': 'default/a' });
  t.deepEqual(state.violations, []);
});

test('IP reuse, old pod deleted first: delete(old owner) then upsert(new pod)', (t) => {
  const tracker = new ClusterStateTracker();
  const state = synced(tracker);
  applyAll(state, tracker.setPod('default/old', [endpoint('10.0.0.5', 'default/old', 'frontend')]));
  const events = [...tracker.removePod('default/old'), ...tracker.setPod('default/new', [endpoint('10.0.0.5', 'default/new', 'db')])];
  t.deepEqual(events, [
    { type: 'endpoint', action: 'delete', ip: '10.0.0.5', owner: 'default/old' },
    { type: 'endpoint', action: 'upsert', endpoint: endpoint('10.0.0.5', 'default/new', 'db') },
  ]);
  applyAll(state, events);
  t.deepEqual(state.violations, []);
});

test('IP reuse, new pod reported first: the old owner is deleted before the upsert, its later deletion is silent', (t) => {
  const tracker = new ClusterStateTracker();
  const state = synced(tracker);
  applyAll(state, tracker.setPod('default/old', [endpoint('10.0.0.5', 'default/old', 'frontend')]));
  t.deepEqual(applyAll(state, tracker.setPod('default/new', [endpoint('10.0.0.5', 'default/new', 'db')])), [
    { type: 'endpoint', action: 'delete', ip: '10.0.0.5', owner: 'default/old' },
    { type: 'endpoint', action: 'upsert', endpoint: endpoint('10.0.0.5', 'default/new', 'db') },
  ]);
  t.deepEqual(tracker.removePod('default/old'), [], 'the old pod no longer owns the IP');
  t.deepEqual(state.owners(), { '10.0.0.5': 'default/new' });
  t.deepEqual(state.violations, []);
});

test('IP reuse: when the newest claimant goes away, a pod that still reports the IP owns it again', (t) => {
  const tracker = new ClusterStateTracker();
  const state = synced(tracker);
  applyAll(state, tracker.setPod('default/a', [endpoint('10.0.0.5', 'default/a', 'one')]));
  applyAll(state, tracker.setPod('default/b', [endpoint('10.0.0.5', 'default/b', 'two')]));
  t.deepEqual(applyAll(state, tracker.setPod('default/a', [endpoint('10.0.0.5', 'default/a', 'one', { x: 'y' })])), [], 'an older claim does not win by updating');
  t.deepEqual(applyAll(state, tracker.removePod('default/b')), [
    { type: 'endpoint', action: 'delete', ip: '10.0.0.5', owner: 'default/b' },
    { type: 'endpoint', action: 'upsert', endpoint: endpoint('10.0.0.5', 'default/a', 'one', { x: 'y' }) },
  ]);
  t.deepEqual(state.violations, []);
});

test('property: any sequence of pod changes keeps the ordering rules and ends in the latest-claim state', (t) => {
  const ips = ['10.0.0.1', '10.0.0.2', 'fd00::1'];
  const pods = ['ns/a', 'ns/b', 'ns/c'];
  const step = fc.record({
    pod: fc.constantFrom(...pods),
    ips: fc.subarray(ips),
    sa: fc.constantFrom('x', 'y'),
    label: fc.constantFrom('1', '2'),
  });
  fc.assert(
    fc.property(fc.array(step, { maxLength: 30 }), fc.integer({ min: 0, max: 30 }), (steps, syncAt) => {
      const tracker = new ClusterStateTracker();
      const state = new AppliedState();
      // The model: each (pod, ip) claim gets a timestamp when it first appears; the latest wins.
      const claimedAt = new Map<string, Map<string, number>>();
      const current = new Map<string, EndpointInfo[]>();
      steps.forEach((s, index) => {
        if (index === syncAt) applyAll(state, tracker.markSynced());
        const endpoints = s.ips.map((ip) => endpoint(ip, s.pod, s.sa, { v: s.label }));
        const claims = claimedAt.get(s.pod) ?? new Map<string, number>();
        for (const ip of [...claims.keys()]) if (!s.ips.includes(ip)) claims.delete(ip);
        for (const ip of s.ips) if (!claims.has(ip)) claims.set(ip, index);
        claimedAt.set(s.pod, claims);
        current.set(s.pod, endpoints);
        applyAll(state, tracker.setPod(s.pod, endpoints));
      });
      applyAll(state, tracker.markSynced());
      const expected: Record<string, EndpointInfo> = {};
      for (const ip of ips) {
        let best: { at: number; endpoint: EndpointInfo } | undefined;
        for (const [podKey, claims] of claimedAt) {
          const at = claims.get(ip);
          const held = current.get(podKey)?.find((e) => e.ip === ip);
          if (at !== undefined && held && (!best || at > best.at)) best = { at, endpoint: held };
        }
        if (best) expected[ip] = best.endpoint;
      }
      return state.violations.length === 0 && isDeepStrictEqual(Object.fromEntries(state.endpoints), expected);
    }),
    { numRuns: 300 },
  );
  t.pass();
});

// ---- conversions ----

test('podEndpoints: a running dual-stack pod gives one endpoint per IP with its SPIFFE ID and metadata', (t) => {
  const object = pod({ namespace: 'shop', name: 'web-1', serviceAccount: 'web', node: 'n1', ips: ['10.1.0.4', 'fd00:1::4'], labels: { app: 'web' } });
  const endpoints = podEndpoints(object, TD);
  t.deepEqual(endpoints, [
    { ip: '10.1.0.4', spiffeId: 'spiffe://cluster.test/ns/shop/sa/web', node: 'n1', namespace: 'shop', serviceAccount: 'web', labels: { app: 'web' }, owner: 'shop/web-1' },
    { ip: 'fd00:1::4', spiffeId: 'spiffe://cluster.test/ns/shop/sa/web', node: 'n1', namespace: 'shop', serviceAccount: 'web', labels: { app: 'web' }, owner: 'shop/web-1' },
  ]);
});

test('wiredPodEndpoints: a pod the CNI just wired, not running yet, gets the runtime’s addresses; only on its own node, never finished', (t) => {
  const pending = pod({ namespace: 'shop', name: 'web-1', serviceAccount: 'web', node: 'n1', phase: 'Pending', labels: { app: 'web' } }) as V1Pod;
  t.deepEqual(wiredPodEndpoints(pending, TD, 'n1', ['10.1.0.9']), [
    { ip: '10.1.0.9', spiffeId: 'spiffe://cluster.test/ns/shop/sa/web', node: 'n1', namespace: 'shop', serviceAccount: 'web', labels: { app: 'web' }, owner: 'shop/web-1' },
  ]);
  t.throws(() => wiredPodEndpoints(pending, TD, 'n2', ['10.1.0.9']), { instanceOf: ConversionError, message: /not scheduled to node n2/ });
  t.throws(() => wiredPodEndpoints(pod({ name: 'p', node: 'n1', phase: 'Succeeded' }) as V1Pod, TD, 'n1', ['10.1.0.9']), { instanceOf: ConversionError });
  t.throws(() => wiredPodEndpoints({ ...pending, metadata: { ...pending.metadata, deletionTimestamp: new Date() } }, TD, 'n1', ['10.1.0.9']), { instanceOf: ConversionError });
});

test('podEndpoints: only running pods with IPs, never host-network pods; default service account', (t) => {
  t.deepEqual(podEndpoints(pod({ name: 'p', ips: ['10.0.0.1'], phase: 'Pending' }) as V1Pod, TD), []);
  t.deepEqual(podEndpoints(pod({ name: 'p', ips: ['10.0.0.1'], phase: 'Succeeded' }) as V1Pod, TD), []);
  t.deepEqual(podEndpoints(pod({ name: 'p', ips: ['10.0.0.1'], phase: 'Failed' }) as V1Pod, TD), []);
  t.deepEqual(podEndpoints(pod({ name: 'p', ips: ['192.0.2.1'], hostNetwork: true }) as V1Pod, TD), []);
  t.deepEqual(podEndpoints(pod({ name: 'p', ips: [] }) as V1Pod, TD), []);
  const [only] = podEndpoints(pod({ name: 'p', ips: ['10.0.0.1'] }), TD);
  t.is(only?.spiffeId, 'spiffe://cluster.test/ns/default/sa/default');
  // Old API servers report only status.podIP.
  const legacy = pod({ name: 'old', ips: [] }) as V1Pod;
  legacy.status = { phase: 'Running', podIP: '10.0.0.9' };
  t.deepEqual(podEndpoints(legacy, TD).map((e) => e.ip), ['10.0.0.9']);
});

test('podEndpoints: unreadable pods are errors, not guesses', (t) => {
  t.throws(() => podEndpoints(pod({ name: 'p', ips: ['10.0.0.300'] }) as V1Pod, TD), { instanceOf: ConversionError, message: /invalid IP/ });
  const noNode = pod({ name: 'p', ips: ['10.0.0.1'] }) as V1Pod;
  delete noNode.spec?.nodeName;
  t.throws(() => podEndpoints(noNode, TD), { message: /nodeName/ });
  t.throws(() => podEndpoints({ metadata: {} }, TD), { message: /metadata/ });
});

test('nodeInfo: the InternalIP, never another address; no InternalIP is an error', (t) => {
  const n = node(
    'n1',
    [
      { type: 'Hostname', address: 'n1' },
      { type: 'ExternalIP', address: '203.0.113.7' },
      { type: 'InternalIP', address: '192.0.2.11' },
      { type: 'InternalIP', address: '2001:db8::11' },
    ],
    ['10.1.0.0/24', 'fd00:1::/64'],
  );
  t.deepEqual(nodeInfo(n as V1Node), { name: 'n1', address: '192.0.2.11', podCidrs: ['10.1.0.0/24', 'fd00:1::/64'] });
  const external = node('n2', [
    { type: 'ExternalIP', address: '203.0.113.8' },
    { type: 'Hostname', address: 'n2' },
  ]);
  t.throws(() => nodeInfo(external as V1Node), { instanceOf: ConversionError, message: /n2 has no InternalIP/ });
  const legacy = { metadata: { name: 'n3' }, spec: { podCIDR: '10.3.0.0/24' }, status: { addresses: [{ type: 'InternalIP', address: '192.0.2.13' }] } };
  t.deepEqual(nodeInfo(legacy as V1Node).podCidrs, ['10.3.0.0/24']);
  t.throws(() => nodeInfo(node('n4', [{ type: 'InternalIP', address: 'not-an-ip' }]) as V1Node), { message: /invalid InternalIP/ });
});

test('policyRule: destination is the policy namespace; source fields map to selectors', (t) => {
  const rule = policyRule(
    policy('shop', 'db-needs-auth', {
      mode: 'required',
      source: { namespace: 'web', serviceAccount: 'frontend', matchLabels: { tier: 'fe' } },
      destination: { serviceAccount: 'db', matchLabels: { app: 'db' } },
    }),
  );
  t.deepEqual(rule, {
    name: 'shop/db-needs-auth',
    mode: 'required',
    source: { namespace: 'web', serviceAccount: 'frontend', labels: { tier: 'fe' } },
    destination: { namespace: 'shop', serviceAccount: 'db', labels: { app: 'db' } },
  });
  t.deepEqual(policyRule(policy('shop', 'all', { mode: 'disabled' })), { name: 'shop/all', mode: 'disabled', source: {}, destination: { namespace: 'shop' } });
  t.deepEqual(policyRule(policy('shop', 'fed', { mode: 'required', source: { spiffeId: 'spiffe://partner.example/ns/*/sa/*' } })).source, {
    spiffeId: 'spiffe://partner.example/ns/*/sa/*',
  });
});

test('policyRule: a reserved source selects a peer that is not a workload, and stands alone', (t) => {
  t.deepEqual(policyRule(policy('shop', 'world', { mode: 'required', source: { reserved: 'world' } })), {
    name: 'shop/world',
    mode: 'required',
    source: { reserved: 'world' },
    destination: { namespace: 'shop' },
  });
  t.throws(() => policyRule(policy('shop', 'p', { mode: 'required', source: { reserved: 'host', namespace: 'web' } })), {
    instanceOf: ConversionError,
    message: /cannot be combined with namespace/,
  });
  t.throws(() => policyRule(policy('shop', 'p', { mode: 'required', source: { reserved: 'cluster' } })), { message: /spec\.source\.reserved/ });
});

test('policyRule: invalid policies are refused with the reason', (t) => {
  t.throws(() => policyRule(policy('shop', 'p', { mode: 'optional' })), { instanceOf: ConversionError, message: /spec\.mode/ });
  t.throws(() => policyRule(policy('shop', 'p', {})), { message: /spec\.mode/ });
  t.throws(() => policyRule(policy('shop', 'p', { mode: 'required', destination: { namespace: 'kube-system' } })), {
    message: /differs from the policy's own namespace/,
  });
  t.throws(() => policyRule(policy('shop', 'p', { mode: 'required', source: { spiffeId: 'ns/x' } })), { message: /spiffe:\/\// });
  t.throws(() => policyRule(policy('shop', 'p', { mode: 'required', source: { spiffeId: 'spiffe://td/a//b' } })), { message: /spiffeId/ });
  t.throws(() => policyRule({ metadata: { name: 'p' }, spec: { mode: 'required' } }), { message: /metadata\.namespace/ });
});

test('kubernetes options: defaults, in-cluster by default, trust domain checked', (t) => {
  t.deepEqual(kubernetesOptionsSchema.parse({}), { enabled: false });
  t.deepEqual(kubernetesOptionsSchema.parse({ enabled: true, kubeconfig: '/etc/kube/config', trustDomain: 'prod.example' }), {
    enabled: true,
    kubeconfig: '/etc/kube/config',
    trustDomain: 'prod.example',
  });
  t.false(kubernetesOptionsSchema.safeParse({ trustDomain: 'Bad_Domain!' }).success);
  t.false(kubernetesOptionsSchema.safeParse({ enabled: true, extra: 1 }).success);
});
