import test from 'ava';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NumericIds } from '../src/auth/numeric-ids.js';
import { NodePlanner } from '../src/agent/node-planner.js';
import type { NodePlan } from '../src/agent/plan.js';
import { ClusterState, normalizeIp, type Rejection } from '../src/cluster/state.js';
import type { ClusterEvent, PolicyMode } from '../src/cluster/types.js';

function stateWith(events: ClusterEvent[]): ClusterState {
  const state = new ClusterState('a');
  for (const event of events) state.apply(event);
  return state;
}

/** The plan the agent's incremental planner holds after these events. */
function planNode(events: ClusterEvent[], ids: NumericIds, defaultMode: PolicyMode): NodePlan {
  const state = new ClusterState('a');
  const planner = new NodePlanner({ localNode: 'a', ids, defaultMode });
  state.on('changed', (event) => planner.apply(event));
  for (const event of events) state.apply(event);
  return planner.plan((endpoint) => endpoint.interface);
}

const nodeA = { name: 'a', address: '192.0.2.1', podCidrs: ['10.0.1.0/24'] };
const nodes: ClusterEvent[] = [
  { type: 'node', action: 'upsert', node: nodeA },
  { type: 'node', action: 'upsert', node: { name: 'b', address: '2001:db8::2', podCidrs: ['10.0.2.0/24', 'fd00:2::/64'] } },
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
    nodes[0]!,
    { type: 'endpoint', action: 'upsert', endpoint: web },
    { type: 'endpoint', action: 'upsert', endpoint: { ...web, spiffeId: 'spiffe://td/ns/shop/sa/other', owner: 'shop/other-1' } },
    { type: 'endpoint', action: 'delete', ip: web.ip, owner: 'shop/web-1' },
  ]);
  t.is(state.endpointByIp(web.ip)?.owner, 'shop/other-1');
});

test('a revoked address (CNI DEL) leaves at once and stays out until its source deletes it or a pod gets it again', (t) => {
  const state = stateWith([nodes[0]!, { type: 'endpoint', action: 'upsert', endpoint: web }]);
  t.is(state.endpointByIp(web.ip)?.owner, 'shop/web-1');
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
  const events: ClusterEvent[] = [
    ...nodes,
    { type: 'endpoint', action: 'upsert', endpoint: web },
    { type: 'endpoint', action: 'upsert', endpoint: api },
    { type: 'endpoint', action: 'upsert', endpoint: db },
    { type: 'policy', action: 'upsert', policy: { name: 'p', source: { spiffeId: 'spiffe://td/ns/shop/sa/web' }, destination: { spiffeId: 'spiffe://td/ns/shop/sa/db' }, mode: 'required' } },
  ];
  const plan = planNode(events, ids, 'disabled');
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
      ['veth-api', [{ address: api.ip, identity: ids.identity(api.spiffeId), node: ids.node('a') }]],
      ['veth-web', [{ address: web.ip, identity: ids.identity(web.spiffeId), node: ids.node('a') }]],
    ],
    'each interface bound to its endpoint address and identity',
  );
  // Two addresses on one interface are each bound to their own identity: the gate tells them apart by address.
  const other = 'spiffe://td/ns/shop/sa/other';
  const shared = planNode([...nodes, { type: 'endpoint', action: 'upsert', endpoint: web }, { type: 'endpoint', action: 'upsert', endpoint: { ...web, ip: '10.0.1.9', spiffeId: other } }], ids, 'disabled');
  t.deepEqual(
    new Set(shared.interfaces.get('veth-web')),
    new Set([
      { address: web.ip, identity: ids.identity(web.spiffeId), node: ids.node('a') },
      { address: '10.0.1.9', identity: ids.identity(other), node: ids.node('a') },
    ]),
  );
  // Default disabled: only web→db (egress on this node) is an exception.
  t.deepEqual([...plan.policy.values()], [{ key: { localIdentity: ids.identity(web.spiffeId), remoteIdentity: ids.identity(db.spiffeId), direction: 'egress' }, authType: 1 }]);

  const strict = planNode(events, ids, 'required');
  t.is(strict.policy.size, 0, 'with default required every pair is required: no exceptions');
  t.is(strict.pairs.size, 4, 'web↔api, web→db, api→db; same-node pairs included');
});

test('an endpoint takes effect only while its node is known: it waits for its node and leaves with it', async (t) => {
  const ids = await NumericIds.load();
  const rule: ClusterEvent = {
    type: 'policy',
    action: 'upsert',
    policy: { name: 'p', source: { spiffeId: 'spiffe://td/ns/shop/sa/web' }, destination: { spiffeId: 'spiffe://td/ns/shop/sa/db' }, mode: 'required' },
  };
  const waiting: ClusterEvent[] = [nodes[0]!, { type: 'endpoint', action: 'upsert', endpoint: web }, { type: 'endpoint', action: 'upsert', endpoint: db }, rule];
  const plan = planNode(waiting, ids, 'disabled');
  t.is(plan.pairs.size, 0);
  t.false(plan.ipcache.has('fd00:2::2/128'), 'no node vouches for db yet');
  t.deepEqual([...planNode([...waiting, nodes[1]!], ids, 'disabled').pairs.values()].map((p) => p.remoteNode), ['b'], 'in with the node');
  const gone = planNode([...waiting, nodes[1]!, { type: 'node', action: 'delete', name: 'b' }], ids, 'disabled');
  t.is(gone.pairs.size, 0);
  t.false(gone.ipcache.has('fd00:2::2/128'), 'out with the node (Kubernetes deletes its pods later)');
});

test('a node vouches only for its own addresses: a pod IP outside its pod CIDRs is refused and reported once (#16, item 8)', (t) => {
  const state = stateWith(nodes);
  const rejected: Rejection[] = [];
  state.on('rejected', (rejection) => rejected.push(rejection));
  // Node b claims an address of node a's pod CIDR, twice (a relist): refused, reported once.
  const stolen = { ip: '10.0.1.7', spiffeId: 'spiffe://td/ns/evil/sa/x', node: 'b', owner: 'evil/x' };
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: stolen });
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: stolen });
  t.is(state.endpointByIp(stolen.ip), undefined);
  t.deepEqual(rejected, [{ reason: 'endpoint_outside_node_cidrs', node: 'b', address: '10.0.1.7' }]);
  // The rightful owner's pod takes the address.
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: { ...web, ip: '10.0.1.7' } });
  t.is(state.endpointByIp('10.0.1.7')?.spiffeId, web.spiffeId);
  // A node whose pod CIDRs change admits and withdraws its endpoints with them.
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: { ...db, ip: '10.9.0.5' } });
  t.is(state.endpointByIp('10.9.0.5'), undefined);
  state.apply({ type: 'node', action: 'upsert', node: { name: 'b', address: '2001:db8::2', podCidrs: ['10.9.0.0/16'] } });
  t.is(state.endpointByIp('10.9.0.5')?.node, 'b');
  t.deepEqual(
    state.endpointsOn('b').map((e) => e.ip),
    ['10.9.0.5'],
  );
});

test('an address two nodes claim resolves to neither, and is reported (#16, item 8)', (t) => {
  const state = stateWith(nodes);
  const rejected: Rejection[] = [];
  state.on('rejected', (rejection) => rejected.push(rejection));
  state.apply({ type: 'node', action: 'upsert', node: { name: 'c', address: '192.0.2.1', podCidrs: ['10.0.3.0/24'] } });
  t.is(state.nodeByAddress('192.0.2.1'), undefined, 'a handshake from the address is attributed to no node');
  t.deepEqual(rejected, [{ reason: 'node_address_conflict', node: 'c', address: '192.0.2.1', other: 'a' }]);
  t.is(state.nodeByAddress('2001:db8::2')?.name, 'b');
  state.apply({ type: 'node', action: 'delete', name: 'c' });
  t.is(state.nodeByAddress('192.0.2.1')?.name, 'a');
  state.apply({ type: 'node', action: 'upsert', node: { ...nodeA, address: '192.0.2.9' } });
  t.is(state.nodeByAddress('192.0.2.1'), undefined, 'an old address is forgotten');
  t.is(state.nodeByAddress('192.0.2.9')?.name, 'a');
});

test('a node number is released when its node and endpoints are gone, an identity number with its last endpoint (#16, item 9)', async (t) => {
  const ids = await NumericIds.load();
  const state = new ClusterState('a');
  const planner = new NodePlanner({ localNode: 'a', ids, defaultMode: 'disabled' });
  state.on('changed', (event) => planner.apply(event));
  const settle = () => {
    planner.delta((endpoint) => endpoint.interface);
    planner.releaseUnused();
  };
  for (const event of [...nodes, { type: 'endpoint', action: 'upsert', endpoint: web }, { type: 'endpoint', action: 'upsert', endpoint: db }] as ClusterEvent[]) state.apply(event);
  settle();
  const dbNumber = ids.identity(db.spiffeId);
  t.is(ids.nodeName(ids.node('b')), 'b');
  state.apply({ type: 'node', action: 'delete', name: 'b' });
  settle();
  t.deepEqual(ids.nodeNames(), ['a']);
  t.is(ids.identityName(dbNumber), undefined);
  t.deepEqual(ids.identityNames(), [web.spiffeId]);
});

test('the first plan releases the numbers a previous run left that nothing uses any more', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-ids-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const previous = await NumericIds.load(join(dir, 'ids.json'));
  previous.identity('spiffe://td/gone');
  previous.node('gone-node');
  await previous.save();
  const ids = await NumericIds.load(join(dir, 'ids.json'));
  const planner = new NodePlanner({ localNode: 'a', ids, defaultMode: 'disabled' });
  const state = new ClusterState('a');
  state.on('changed', (event) => planner.apply(event));
  state.replaceAll({ nodes: [nodeA], endpoints: [web], policies: [] });
  planner.delta((endpoint) => endpoint.interface);
  planner.releaseUnused(true);
  t.deepEqual(ids.identityNames(), [web.spiffeId]);
  t.deepEqual(ids.nodeNames(), ['a']);
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

test('the numeric-id file is written only when a number was allocated or released', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-ids-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'ids.json');
  const ids = await NumericIds.load(path);
  ids.identity('spiffe://td/a');
  await ids.save();
  await rm(path);
  ids.identity('spiffe://td/a');
  await ids.save();
  await t.throwsAsync(stat(path), { code: 'ENOENT' }, 'nothing changed: not written');
  ids.releaseIdentity('spiffe://td/a');
  await ids.save();
  t.deepEqual(JSON.parse(await readFile(path, 'utf8')), { identities: {}, nodes: {} });
});

test('requiring wins per identity pair: one exempted pod does not exempt the other pods of its identity under default required', async (t) => {
  const ids = await NumericIds.load();
  const exemptX: ClusterEvent = {
    type: 'policy',
    action: 'upsert',
    policy: { name: 'x-to-db', source: { labels: { app: 'x' } }, destination: { spiffeId: db.spiffeId }, mode: 'disabled' },
  };
  const events: ClusterEvent[] = [
    ...nodes,
    { type: 'endpoint', action: 'upsert', endpoint: { ...web, labels: { app: 'x' } } },
    { type: 'endpoint', action: 'upsert', endpoint: { ...web, ip: '10.0.1.9', owner: 'shop/web-2' } },
    { type: 'endpoint', action: 'upsert', endpoint: db },
    exemptX,
  ];
  const plan = planNode(events, ids, 'required');
  // The gate keys policy by identity: an exemption entry would let web-2 reach db unauthenticated.
  t.false(plan.policy.has(`${ids.identity(web.spiffeId)}:${ids.identity(db.spiffeId)}:egress`));
  t.true([...plan.pairs.values()].some((pair) => pair.localId === web.spiffeId && pair.remoteId === db.spiffeId));
  // With every web pod exempted, the exemption is written.
  const allExempt = planNode([...events, { type: 'endpoint', action: 'upsert', endpoint: { ...web, ip: '10.0.1.9', owner: 'shop/web-2', labels: { app: 'x' } } }], ids, 'required');
  t.is(allExempt.policy.get(`${ids.identity(web.spiffeId)}:${ids.identity(db.spiffeId)}:egress`)?.authType, 0);
});

test('a remote endpoint joining a profile that held only a local endpoint brings the couple of that local endpoint with it', async (t) => {
  const ids = await NumericIds.load();
  const sameNamespace: ClusterEvent = {
    type: 'policy',
    action: 'upsert',
    policy: { name: 'shop', source: { namespace: 'shop' }, destination: { namespace: 'shop' }, mode: 'required' },
  };
  const local = { ...web, namespace: 'shop', serviceAccount: 'web' };
  const twin = { ...local, ip: '10.0.2.7', node: 'b', owner: 'shop/web-2', interface: undefined };
  const state = new ClusterState('a');
  const planner = new NodePlanner({ localNode: 'a', ids, defaultMode: 'disabled' });
  state.on('changed', (event) => planner.apply(event));
  for (const event of [...nodes, sameNamespace, { type: 'endpoint', action: 'upsert', endpoint: local }] as ClusterEvent[]) state.apply(event);
  const entry = `${ids.identity(web.spiffeId)}:${ids.identity(web.spiffeId)}:egress`;
  t.false(planner.plan(() => undefined).policy.has(entry), 'alone, web has no couple with itself');
  state.apply({ type: 'endpoint', action: 'upsert', endpoint: twin });
  const plan = planner.plan(() => undefined);
  t.is(plan.policy.get(entry)?.authType, 1);
  t.deepEqual([...plan.pairs.values()].map((pair) => pair.remoteNode), ['b']);
  state.apply({ type: 'endpoint', action: 'delete', ip: twin.ip });
  t.false(planner.plan(() => undefined).policy.has(entry));
  t.is(planner.plan(() => undefined).pairs.size, 0);
});
