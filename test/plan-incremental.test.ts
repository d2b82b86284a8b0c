// The incremental planner against the full recomputation (#14): after any sequence of node,
// endpoint, policy and default-mode changes, the plan it holds equals the plan computed from
// scratch, and the deltas it handed out, applied in order, rebuild exactly that plan while never
// writing an entry that did not change.
import test from 'ava';
import fc from 'fast-check';
import { NumericIds } from '../src/auth/numeric-ids.js';
import type { KeyedPair } from '../src/auth/types.js';
import { NodePlanner } from '../src/agent/node-planner.js';
import { policyId, type NodePlan, type PolicyEntry } from '../src/agent/plan.js';
import { ClusterState } from '../src/cluster/state.js';
import type { ClusterEvent, ClusterSnapshot, EndpointInfo, NodeInfo, PolicyMode, PolicyRule, WorkloadSelector } from '../src/cluster/types.js';
import type { IpcacheEntry } from '../src/datapath/gate/layout.js';
import { fullPlan } from './helpers/full-plan.js';

const LOCAL = 'a';
const interfaceOf = (endpoint: EndpointInfo) => endpoint.interface;

const nodeArb: fc.Arbitrary<NodeInfo> = fc.record({
  name: fc.constantFrom('a', 'b', 'c'),
  // Few addresses, so that nodes sometimes claim the same one.
  address: fc.constantFrom('192.0.2.1', '192.0.2.2', '192.0.2.3'),
  podCidrs: fc.constantFrom(['10.0.1.0/24'], ['10.0.2.0/24'], ['10.0.3.0/24', 'fd00:3::/64'], ['10.0.0.0/16'], []),
});

const endpointArb: fc.Arbitrary<EndpointInfo> = fc
  .record({
    ip: fc.constantFrom('10.0.1.1', '10.0.1.2', '10.0.1.3', '10.0.2.1', '10.0.2.2', '10.0.3.1', 'fd00:3::1'),
    sa: fc.constantFrom('web', 'api', 'db'),
    namespace: fc.constantFrom('shop', 'bank'),
    node: fc.constantFrom('a', 'a', 'b', 'c'),
    app: fc.option(fc.constantFrom('x', 'y'), { nil: undefined }),
    owner: fc.constantFrom('p1', 'p2', 'p3', 'p4'),
    interface: fc.option(fc.constantFrom('veth1', 'veth2', 'veth3'), { nil: undefined }),
  })
  .map(({ ip, sa, namespace, node, app, owner, interface: name }): EndpointInfo => ({
    ip,
    spiffeId: `spiffe://td/ns/${namespace}/sa/${sa}`,
    node,
    namespace,
    serviceAccount: sa,
    labels: app === undefined ? {} : { app: app },
    owner: `${namespace}/${owner}`,
    ...(name !== undefined && { interface: name }),
  }));

const selectorArb: fc.Arbitrary<WorkloadSelector> = fc.oneof(
  fc.constant({}),
  fc.record({ spiffeId: fc.constantFrom('spiffe://td/ns/shop/sa/web', 'spiffe://td/ns/*/sa/db', 'spiffe://td/**') }),
  fc.record({ namespace: fc.constantFrom('shop', 'bank') }),
  fc.record({ labels: fc.constantFrom({ app: 'x' }, { app: 'y' }) }),
  fc.record({ namespace: fc.constantFrom('shop', 'bank'), serviceAccount: fc.constantFrom('web', 'api') }),
);

const policyArb: fc.Arbitrary<PolicyRule> = fc.record({
  name: fc.constantFrom('p1', 'p2', 'p3'),
  source: selectorArb,
  destination: selectorArb,
  mode: fc.constantFrom<PolicyMode>('required', 'required', 'disabled'),
});

type Step =
  | { kind: 'event'; event: ClusterEvent }
  | { kind: 'snapshot'; snapshot: ClusterSnapshot }
  | { kind: 'default'; mode: PolicyMode }
  | { kind: 'delta' };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 3, arbitrary: nodeArb.map((node): Step => ({ kind: 'event', event: { type: 'node', action: 'upsert', node } })) },
  { weight: 1, arbitrary: fc.constantFrom('a', 'b', 'c').map((name): Step => ({ kind: 'event', event: { type: 'node', action: 'delete', name } })) },
  { weight: 8, arbitrary: endpointArb.map((endpoint): Step => ({ kind: 'event', event: { type: 'endpoint', action: 'upsert', endpoint } })) },
  {
    weight: 3,
    arbitrary: fc
      .record({ endpoint: endpointArb, named: fc.boolean() })
      .map(({ endpoint, named }): Step => ({ kind: 'event', event: { type: 'endpoint', action: 'delete', ip: endpoint.ip, ...(named && { owner: endpoint.owner! }) } })),
  },
  { weight: 3, arbitrary: policyArb.map((policy): Step => ({ kind: 'event', event: { type: 'policy', action: 'upsert', policy } })) },
  { weight: 1, arbitrary: fc.constantFrom('p1', 'p2', 'p3').map((name): Step => ({ kind: 'event', event: { type: 'policy', action: 'delete', name } })) },
  { weight: 1, arbitrary: fc.constantFrom<PolicyMode>('required', 'disabled').map((mode): Step => ({ kind: 'default', mode })) },
  {
    weight: 1,
    arbitrary: fc
      .record({ nodes: fc.array(nodeArb, { maxLength: 3 }), endpoints: fc.array(endpointArb, { maxLength: 6 }), policies: fc.array(policyArb, { maxLength: 3 }) })
      .map((snapshot): Step => ({ kind: 'snapshot', snapshot })),
  },
  { weight: 4, arbitrary: fc.constant<Step>({ kind: 'delta' }) },
);

/** What the datapath and the auth manager hold after applying every delta so far. */
interface Applied {
  ipcache: Map<string, IpcacheEntry>;
  policy: Map<string, PolicyEntry>;
  pairs: Map<string, KeyedPair>;
}

function comparable(plan: Pick<NodePlan, 'ipcache' | 'policy' | 'pairs'>): unknown {
  return {
    ipcache: [...plan.ipcache].sort(([a], [b]) => a.localeCompare(b)),
    policy: [...plan.policy].sort(([a], [b]) => a.localeCompare(b)),
    pairs: [...plan.pairs.keys()].sort(),
  };
}

test('the incremental plan equals a full recomputation after any sequence of events, and its deltas hold exactly the changes', async (t) => {
  await fc.assert(
    fc.asyncProperty(fc.array(stepArb, { minLength: 1, maxLength: 60 }), async (steps) => {
      const ids = await NumericIds.load();
      const state = new ClusterState(LOCAL);
      let defaultMode: PolicyMode = 'disabled';
      const planner = new NodePlanner({ localNode: LOCAL, ids, defaultMode });
      state.on('changed', (event) => planner.apply(event));
      const applied: Applied = { ipcache: new Map(), policy: new Map(), pairs: new Map() };
      const applyDelta = (): void => {
        const delta = planner.delta(interfaceOf);
        for (const prefix of delta.ipcache.deleted) if (!applied.ipcache.delete(prefix)) throw new Error(`deleted ${prefix}, which was not there`);
        for (const [prefix, entry] of delta.ipcache.set) {
          const old = applied.ipcache.get(prefix);
          if (old && old.identity === entry.identity && old.node === entry.node) throw new Error(`rewrote ${prefix} unchanged`);
          applied.ipcache.set(prefix, entry);
        }
        for (const key of delta.policy.deleted) if (!applied.policy.delete(policyId(key))) throw new Error(`deleted policy ${policyId(key)}, which was not there`);
        for (const entry of delta.policy.set) {
          if (applied.policy.get(policyId(entry.key))?.authType === entry.authType) throw new Error(`rewrote policy ${policyId(entry.key)} unchanged`);
          applied.policy.set(policyId(entry.key), entry);
        }
        for (const pair of delta.pairs.removed) if (!applied.pairs.delete(pair.key)) throw new Error('removed a pair that was not desired');
        for (const pair of delta.pairs.added) {
          if (applied.pairs.has(pair.key)) throw new Error('added a pair that was desired already');
          applied.pairs.set(pair.key, pair);
        }
        planner.releaseUnused();
      };
      for (const step of steps) {
        if (step.kind === 'event') state.apply(step.event);
        else if (step.kind === 'snapshot') state.replaceAll(step.snapshot);
        else if (step.kind === 'default') {
          defaultMode = step.mode;
          planner.setDefaultMode(step.mode);
        } else applyDelta();
        const incremental = planner.plan(interfaceOf);
        const full = fullPlan(state, ids, defaultMode, interfaceOf);
        t.deepEqual(comparable(incremental), comparable(full));
        t.deepEqual([...incremental.interfaces].sort(), [...full.interfaces].sort());
        t.deepEqual(incremental.localIdentities.sort(), full.localIdentities.sort());
      }
      applyDelta();
      t.deepEqual(comparable(applied), comparable(planner.plan(interfaceOf)), 'the deltas rebuild the plan');
    }),
    { numRuns: 400 },
  );
});
