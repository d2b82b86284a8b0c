import test from 'ava';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NumericIds } from '../src/auth/numeric-ids.js';
import { planNode } from '../src/agent/plan.js';
import { ClusterState, normalizeIp } from '../src/cluster/state.js';
import type { ClusterEvent } from '../src/cluster/types.js';

function stateWith(events: ClusterEvent[]): ClusterState {
  const state = new ClusterState('a');
  for (const event of events) state.apply(event);
  return state;
}

const nodeA = { name: 'a', address: '192.0.2.1', podCidrs: ['10.0.1.0/24'] };
const nodes: ClusterEvent[] = [
  { type: 'node', action: 'upsert', node: nodeA },
  { type: 'node', action: 'upsert', node: { name: 'b', address: '2001:db8::2', podCidrs: ['10.0.2.0/24'] } },
];
const web = { ip: '10.0.1.2', spiffeId: 'spiffe://td/ns/shop/sa/web', node: 'a', interface: 'veth-web', owner: 'shop/web-1' };
const api = { ip: '10.0.1.3', spiffeId: 'spiffe://td/ns/shop/sa/api', node: 'a', interface: 'veth-api' };
const db = { ip: 'fd00:2::2', spiffeId: 'spiffe://td/ns/shop/sa/db', node: 'b' };

test('IP addresses are normalised so lookups match however an address was written', (t) => {
  t.is(normalizeIp('::ffff:10.0.0.1'), '10.0.0.1');
  t.is(normalizeIp('FD00:0:0::0002'), 'fd00::2');
  const state = stateWith([...nodes, { type: 'endpoint', action: 'upsert', endpoint: { ...db, ip: 'FD00:2:0::2' } }]);
  t.is(state.endpointByIp('fd00:2::2')?.spiffeId, db.spiffeId);
  t.is(state.nodeByAddress('2001:DB8::2')?.name, 'b');
  t.is(state.nodeByAddress('::ffff:192.0.2.1')?.name, 'a');
});

test('a late delete for the previous owner of an IP does not remove the new owner', (t) => {
  const state = stateWith([
    { type: 'endpoint', action: 'upsert', endpoint: web },
    { type: 'endpoint', action: 'upsert', endpoint: { ...web, spiffeId: 'spiffe://td/ns/shop/sa/other', owner: 'shop/other-1' } },
    { type: 'endpoint', action: 'delete', ip: web.ip, owner: 'shop/web-1' },
  ]);
  t.is(state.endpointByIp(web.ip)?.owner, 'shop/other-1');
});

test('a revoked address (CNI DEL) leaves at once and stays out until its source deletes it or a pod gets it again', (t) => {
  const state = stateWith([{ type: 'endpoint', action: 'upsert', endpoint: web }]);
  state.revoke(web.ip, 'shop/web-1');
  t.is(state.endpointByIp(web.ip), undefined);
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: web });
  t.is(state.endpointByIp(web.ip), undefined, 'a late informer update does not bring it back');
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: { ...web, owner: 'shop/web-2' } });
  t.is(state.endpointByIp(web.ip)?.owner, 'shop/web-2', 'another pod on the address is not held back');
  state.apply({ type: 'endpoint', action: 'delete', ip: web.ip, owner: 'shop/web-2' });
  state.apply({ type: 'endpoint', action: 'delete', ip: web.ip, owner: 'shop/web-1' });
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: web });
  t.is(state.endpointByIp(web.ip)?.owner, 'shop/web-1', 'the source deleted it: the revocation is over');

  state.revoke(web.ip, undefined);
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: web });
  t.is(state.endpointByIp(web.ip), undefined, 'a revocation without an owner holds any owner back');
  t.true(state.unrevoke(web.ip));
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: web });
  t.is(state.endpointByIp(web.ip)?.owner, 'shop/web-1', 'given to a pod again');
});

test('replaceAll turns a new snapshot into ordered events: deletes first, identity changes as delete + upsert', (t) => {
  const state = stateWith([...nodes, { type: 'endpoint', action: 'upsert', endpoint: web }, { type: 'endpoint', action: 'upsert', endpoint: db }]);
  const seen: string[] = [];
  state.on('changed', (event) => seen.push(`${event.type}:${'action' in event ? event.action : ''}`));
  state.replaceAll({
    nodes: [nodeA],
    endpoints: [{ ...web, spiffeId: 'spiffe://td/ns/shop/sa/new' }],
    policies: [],
  });
  t.deepEqual(seen, ['endpoint:delete', 'endpoint:delete', 'node:delete', 'endpoint:upsert', 'synced:']);
  t.is(state.endpointByIp(web.ip)?.spiffeId, 'spiffe://td/ns/shop/sa/new');
  t.true(state.isSynced);
});

test('the plan: ipcache for every endpoint, desired pairs for local endpoints, policy exceptions only', async (t) => {
  const ids = await NumericIds.load();
  const state = stateWith([
    ...nodes,
    { type: 'endpoint', action: 'upsert', endpoint: web },
    { type: 'endpoint', action: 'upsert', endpoint: api },
    { type: 'endpoint', action: 'upsert', endpoint: db },
    { type: 'policy', action: 'upsert', policy: { name: 'p', source: { spiffeId: 'spiffe://td/ns/shop/sa/web' }, destination: { spiffeId: 'spiffe://td/ns/shop/sa/db' }, mode: 'required' } },
  ]);
  const plan = planNode(state, ids, 'disabled');
  t.deepEqual([...plan.ipcache.keys()].sort(), ['10.0.1.2/32', '10.0.1.3/32', 'fd00:2::2/128']);
  t.is(plan.ipcache.get('fd00:2::2/128')?.node, ids.node('b'));
  t.deepEqual(
    [...plan.pairs.values()].map(({ localId, remoteId, remoteNode }) => ({ localId, remoteId, remoteNode })),
    [{ localId: web.spiffeId, remoteId: db.spiffeId, remoteNode: 'b' }],
  );
  for (const [key, pair] of plan.pairs) t.is(pair.key, key);
  t.deepEqual(plan.localIdentities.sort(), [api.spiffeId, web.spiffeId].sort());
  t.deepEqual(
    [...plan.interfaces].sort(),
    [
      ['veth-api', { identity: ids.identity(api.spiffeId), node: ids.node('a') }],
      ['veth-web', { identity: ids.identity(web.spiffeId), node: ids.node('a') }],
    ],
    'each interface bound to its endpoint identity',
  );
  // A second address of web's on its interface keeps the binding; another identity there voids it.
  const shared = (spiffeId: string) =>
    planNode(stateWith([...nodes, { type: 'endpoint', action: 'upsert', endpoint: web }, { type: 'endpoint', action: 'upsert', endpoint: { ...web, ip: '10.0.1.9', spiffeId } }]), ids, 'disabled');
  t.deepEqual(shared(web.spiffeId).interfaces.get('veth-web'), { identity: ids.identity(web.spiffeId), node: ids.node('a') });
  t.true(shared('spiffe://td/ns/shop/sa/other').interfaces.has('veth-web'));
  t.is(shared('spiffe://td/ns/shop/sa/other').interfaces.get('veth-web'), undefined);
  // Default disabled: only web→db (egress on this node) is an exception.
  t.deepEqual([...plan.policy.values()], [{ key: { localIdentity: ids.identity(web.spiffeId), remoteIdentity: ids.identity(db.spiffeId), direction: 'egress' }, authType: 1 }]);

  const strict = planNode(state, ids, 'required');
  t.is(strict.policy.size, 0, 'with default required every pair is required: no exceptions');
  t.is(strict.pairs.size, 4, 'web↔api, web→db, api→db; same-node pairs included');
});

test('the plan desires no pair with an endpoint on a node the state does not know; the policy map is unchanged', async (t) => {
  const ids = await NumericIds.load();
  const rule: ClusterEvent = {
    type: 'policy',
    action: 'upsert',
    policy: { name: 'p', source: { spiffeId: 'spiffe://td/ns/shop/sa/web' }, destination: { spiffeId: 'spiffe://td/ns/shop/sa/db' }, mode: 'required' },
  };
  // Node b deleted while its pod is still listed (Kubernetes removes the pods later).
  const state = stateWith([nodes[0]!, { type: 'endpoint', action: 'upsert', endpoint: web }, { type: 'endpoint', action: 'upsert', endpoint: db }, rule]);
  const plan = planNode(state, ids, 'disabled');
  t.is(plan.pairs.size, 0);
  t.is(plan.policy.size, 1, 'traffic to db still needs authentication');
  t.true(plan.ipcache.has('fd00:2::2/128'));
  state.apply(nodes[1]!);
  t.deepEqual([...planNode(state, ids, 'disabled').pairs.values()].map((p) => p.remoteNode), ['b'], 'back with the node');
});

test('numeric ids are stable, reversible, persisted, and start at 1', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-ids-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const ids = await NumericIds.load(join(dir, 'ids.json'));
  t.is(ids.identity('spiffe://td/a'), 1);
  t.is(ids.identity('spiffe://td/b'), 2);
  t.is(ids.identity('spiffe://td/a'), 1);
  t.is(ids.node('n1'), 1);
  t.is(ids.identityName(2), 'spiffe://td/b');
  await ids.save();
  t.is((await stat(join(dir, 'ids.json'))).mode & 0o777, 0o600);
  const reloaded = await NumericIds.load(join(dir, 'ids.json'));
  t.is(reloaded.identity('spiffe://td/b'), 2);
  t.is(reloaded.identity('spiffe://td/c'), 3);
  reloaded.releaseIdentity('spiffe://td/a');
  t.is(reloaded.identityName(1), undefined);
  t.is(reloaded.identity('spiffe://td/d'), 1, 'a released number is reused');
});
