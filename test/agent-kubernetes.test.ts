// Two real agents fed by the real KubernetesSource (client-node informers over HTTP) from one test
// API server: nodes, pods and MutualAuthPolicies are created, changed and deleted on the server,
// and the agents' own state (status(): identities held, pairs, peers; readiness) is asserted
// after each event sequence. The Kubernetes source cannot carry a handshake port, so each agent
// listens on the default port 4250 on a loopback address of its own (127.0.30.x, used by no
// other test file); the handshakes run for real, the datapath and transport are off.
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import type { Agent } from '../src/agent/agent.js';
import type { AuthCache, AuthMap } from '../src/auth/cache.js';
import type { ClusterState } from '../src/cluster/state.js';
import type { ClusterEvent } from '../src/cluster/types.js';
import { DEFAULT_PORT } from '../src/handshake/protocol.js';
import { agentConfig, eventually, startAgent, tempDir } from './helpers/agents.js';
import { node, pod, policy } from './helpers/cluster-events.js';
import { KubeApiServer, type KubeResource } from './servers/kube-api-server.js';
import { assertRequestsAuthorized } from './helpers/rbac.js';
import { writeKubeConfig } from './helpers/kube-config.js';

// Each test's API server, for the RBAC check after it.
const test = anyTest as TestFn<{ servers: KubeApiServer[] }>;

test.beforeEach((t) => {
  t.context = { servers: [] };
});

// Whatever the agent asks the API server for, with the token of its kubeconfig, must be allowed
// by the ClusterRole deploy/rbac.yaml binds to its service account.
test.afterEach('every request carried the token and is allowed by deploy/rbac.yaml', async (t) => {
  await assertRequestsAuthorized(t, t.context.servers, { eachMadeRequests: true });
});

const TD = 'example.org';
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;
const API = `spiffe://${TD}/ns/shop/sa/api`;
const NODE_A = `spiffe://${TD}/meshauth/node/node-a`;
const NODE_B = `spiffe://${TD}/meshauth/node/node-b`;
/** The pod IP that is deleted and reused. */
const WEB_IP = '10.30.1.11';
const DB_IP = '10.30.2.20';

interface TestCluster {
  server: KubeApiServer;
  a: Agent;
  b: Agent;
  addresses: { a: string; b: string };
}

/** Test n (1, 2, ...) owns 127.0.30.(2n-1) and 127.0.30.(2n). */
function addressesOf(n: number): { a: string; b: string } {
  return { a: `127.0.30.${2 * n - 1}`, b: `127.0.30.${2 * n}` };
}

/** node-a and node-b at the agents' addresses; web on node-a, db on node-b; shop's pods must
 *  authenticate to db. */
function seed(server: KubeApiServer, addresses: { a: string; b: string }): void {
  server.create('nodes', node('node-a', [{ type: 'InternalIP', address: addresses.a }], ['10.30.1.0/24']));
  server.create('nodes', node('node-b', [{ type: 'InternalIP', address: addresses.b }], ['10.30.2.0/24']));
  server.create('pods', pod({ namespace: 'shop', name: 'web-1', serviceAccount: 'web', node: 'node-a', ips: [WEB_IP] }));
  server.create('pods', pod({ namespace: 'shop', name: 'db-0', serviceAccount: 'db', node: 'node-b', ips: [DB_IP] }));
  server.create('mutualauthpolicies', dbPolicy);
}

const dbPolicy = policy('shop', 'db-auth', { mode: 'required', source: { namespace: 'shop' }, destination: { serviceAccount: 'db' } });

async function startCluster(
  t: ExecutionContext<{ servers: KubeApiServer[] }>,
  n: number,
  options: { before?: (server: KubeApiServer) => void; waitForPair?: boolean } = {},
): Promise<TestCluster> {
  const dir = await tempDir(t, 'meshauth-agent-k8s-');
  const server = await KubeApiServer.start();
  t.teardown(() => server.close());
  t.context.servers.push(server);
  const addresses = addressesOf(n);
  seed(server, addresses);
  options.before?.(server);
  const kubeconfig = await writeKubeConfig(dir, server);
  const start = (name: string, address: string): Promise<Agent> =>
    startAgent(
      t,
      agentConfig(
        dir,
        {
          name,
          address,
          overrides: {
            kubernetes: { enabled: true, kubeconfig },
            metrics: { enabled: true, address, port: 0 },
          },
        },
        // No static nodes, endpoints or rules: only the default mode, so that what is required
        // is what the MutualAuthPolicies say.
        { policy: { default: 'disabled' } },
        DEFAULT_PORT,
      ),
    );
  // One after the other: the first creates the shared dev CA.
  const a = await start('node-a', addresses.a);
  const b = await start('node-b', addresses.b);
  const cluster = { server, a, b, addresses };
  if (options.waitForPair !== false) await eventually(() => bothHoldWebDb(cluster), 'web ↔ db authenticated on both nodes');
  return cluster;
}

// ---- views of the agents' public status ----

/** "local → remote @ node" for each pair in the given state. */
function pairs(agent: Agent, state = 'authenticated'): string[] {
  return agent
    .status()
    .pairs.filter((p) => p.state === state)
    .map((p) => `${short(p.localId)} → ${short(p.remoteId)} @ ${p.remoteNode}`)
    .sort();
}

/** Every desired pair, whatever its state. */
function desired(agent: Agent): string[] {
  return agent
    .status()
    .pairs.map((p) => `${short(p.localId)} → ${short(p.remoteId)} @ ${p.remoteNode}`)
    .sort();
}

function short(spiffeId: string): string {
  return spiffeId.split('/').at(-1) ?? spiffeId;
}

function identities(agent: Agent): string[] {
  return agent
    .status()
    .identities.map((i) => i.spiffeId)
    .sort();
}

function bothHoldWebDb({ a, b }: TestCluster): boolean {
  return sameList(pairs(a), ['web → db @ node-b']) && sameList(pairs(b), ['db → web @ node-a']);
}

function sameList(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((item, i) => item === b[i]);
}

async function readyz(agent: Agent, address: string): Promise<{ status: number; body: unknown }> {
  const response = await fetch(`http://${address}:${agent.metricsPort}/readyz`);
  return { status: response.status, body: await response.json() };
}

/** meshauth_handshakes_total successes by "kind/role". */
async function handshakeSuccesses(agent: Agent, address: string): Promise<Record<string, number>> {
  const text = await (await fetch(`http://${address}:${agent.metricsPort}/metrics`)).text();
  const counts: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const match = /^meshauth_handshakes_total\{([^}]*)\} (\d+)$/.exec(line);
    if (!match) continue;
    const labels = new Map([...match[1]!.matchAll(/(\w+)="([^"]*)"/g)].map((m): [string, string] => [m[1]!, m[2]!]));
    if (labels.get('result') === 'success') counts[`${labels.get('kind')}/${labels.get('role')}`] = Number(match[2]);
  }
  return counts;
}

/** The counters that grew from `before` to `after`, by how much. */
function increase(before: Record<string, number>, after: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(after).flatMap(([key, value]) => (value > (before[key] ?? 0) ? [[key, value - (before[key] ?? 0)]] : [])));
}

// ---- observation of one agent's internals, in order ----

/** What one agent holds at one moment: the identity its cluster state (hence its plan) gives the
 *  watched IP, and the authenticated pairs. */
interface Snapshot {
  why: string;
  ipIdentity: string | undefined;
  authenticated: string[];
}

interface Observation {
  /** Cluster events for the watched IP, in the order the agent applied them. */
  ipEvents: string[];
  /** Every cluster event the agent applied, whatever it concerned. */
  events: ClusterEvent[];
  /** Auth map writes (set/delete) since the observation started. */
  mapWrites: number;
  snapshots: Snapshot[];
}

/**
 * Records, for one agent, a snapshot after every cluster event it applies and after every write
 * to its auth map (the memory stand-in for the BPF map when the datapath is off). A snapshot is
 * taken in a microtask queued at that moment: after the agent's own re-plan for the event (queued
 * earlier, by the listener the agent registered first), so each snapshot is a state the agent
 * really was in between two steps. Private fields are read through a cast: the order of events
 * inside an agent is not part of its public status.
 */
function observe(agent: Agent, ip: string): Observation {
  const internals = agent as unknown as { state: ClusterState; cache: AuthCache };
  const map = (internals.cache as unknown as { options: { map: AuthMap } }).options.map;
  const observation: Observation = { ipEvents: [], events: [], mapWrites: 0, snapshots: [] };
  const snapshot = (why: string): Snapshot => ({ why, ipIdentity: internals.state.endpointByIp(ip)?.spiffeId, authenticated: pairs(agent) });
  const later = (why: string): void => queueMicrotask(() => observation.snapshots.push(snapshot(why)));
  observation.snapshots.push(snapshot('start'));
  internals.state.on('changed', (event) => {
    observation.events.push(event);
    if (event.type === 'endpoint' && event.action === 'delete' && event.ip === ip) observation.ipEvents.push(`delete ${event.owner ?? '?'}`);
    if (event.type === 'endpoint' && event.action === 'upsert' && event.endpoint.ip === ip) {
      observation.ipEvents.push(`upsert ${event.endpoint.owner ?? '?'} as ${short(event.endpoint.spiffeId)}`);
    }
    later(`cluster ${event.type}${'action' in event ? ` ${event.action}` : ''}`);
  });
  const setAuth = map.setAuth.bind(map);
  const deleteAuth = map.deleteAuth.bind(map);
  map.setAuth = (key, expiryNs) => {
    setAuth(key, expiryNs);
    observation.mapWrites += 1;
    later('auth map set');
  };
  map.deleteAuth = (key) => {
    const deleted = deleteAuth(key);
    observation.mapWrites += 1;
    later('auth map delete');
    return deleted;
  };
  return observation;
}

/**
 * The IP moved from the old identity's pair to the new one's without a window: no snapshot has
 * the IP mapped to the new identity while the old pair is authenticated (the new pod would ride on
 * the old pod's authentication), the mapping only ever moves forward (old, maybe none, new), and
 * the new pair is authenticated only once the IP is the new identity's.
 */
function assertNoInheritance(t: ExecutionContext, who: string, observation: Observation, moves: { from: string; to: string; oldPair: string; newPair: string }): void {
  const { snapshots } = observation;
  const window = snapshots.filter((s) => s.ipIdentity === moves.to && s.authenticated.includes(moves.oldPair));
  t.deepEqual(window, [], `${who}: the IP maps to ${short(moves.to)} while ${moves.oldPair} is still authenticated`);
  const early = snapshots.filter((s) => s.authenticated.includes(moves.newPair) && s.ipIdentity !== moves.to);
  t.deepEqual(early, [], `${who}: ${moves.newPair} authenticated before the IP is ${short(moves.to)}'s`);
  const mappings = snapshots.map((s) => s.ipIdentity).filter((id, i, all) => i === 0 || id !== all[i - 1]);
  t.true(
    sameList(mappings as string[], [moves.from, moves.to]) || sameList(mappings as string[], [moves.from, undefined as unknown as string, moves.to]),
    `${who}: the IP's identity went ${JSON.stringify(mappings)}`,
  );
  const lastOld = snapshots.findLastIndex((s) => s.authenticated.includes(moves.oldPair));
  const firstNew = snapshots.findIndex((s) => s.ipIdentity === moves.to);
  t.true(lastOld < firstNew, `${who}: the old pair's last snapshot precedes the IP's first new mapping`);
  t.true(snapshots.at(-1)!.authenticated.includes(moves.newPair), `${who}: ${moves.newPair} is authenticated in the end`);
}

/**
 * Proves both agents have processed everything the server sent on a resource's watch: a bookmark
 * at the current resourceVersion, then a clean end; each agent re-watches from exactly that
 * version. (Events that change nothing emit nothing, so there is nothing else to wait for.)
 */
async function settle(server: KubeApiServer, resource: KubeResource): Promise<void> {
  const rv = server.resourceVersion;
  const seen = server.requests.length;
  server.bookmark();
  server.endWatches(resource);
  await eventually(
    () => server.requests.slice(seen).filter((r) => r.verb === 'watch' && r.resource === resource && r.query.resourceVersion === rv).length >= 2,
    `both agents re-watch ${resource} from ${rv}`,
  );
}

// ---- the tests ----

test('initial sync: not ready and nothing desired until every list is complete; then the required pair on both nodes', async (t) => {
  // The policies list fails until the test lets it through: pods and nodes are listed, the state
  // is not complete.
  const cluster = await startCluster(t, 1, { waitForPair: false, before: (server) => server.failNext('list', 'mutualauthpolicies', 503, 1_000) });
  const { server, a, b, addresses } = cluster;
  await eventually(
    () => server.requestCount('list', 'mutualauthpolicies') >= 2 && identities(a).includes(NODE_A) && identities(b).includes(NODE_B),
    'both agents have their node SVID and tried to list the policies',
  );
  for (const [agent, address] of [
    [a, addresses.a],
    [b, addresses.b],
  ] as const) {
    t.false(agent.status().ready);
    t.deepEqual(await readyz(agent, address), { status: 503, body: { ready: false, reason: 'cluster state not synced yet' } });
    // Nothing applied before the sync: no pairs, no peers, no workload SVIDs.
    t.deepEqual(agent.status().pairs, []);
    t.deepEqual(agent.status().peers, []);
  }
  t.deepEqual(identities(a), [NODE_A]);

  server.clearFailures();
  await eventually(() => a.status().ready && b.status().ready, 'both ready after the sync');
  t.deepEqual(await readyz(a, addresses.a), { status: 200, body: { ready: true } });
  await eventually(() => bothHoldWebDb(cluster), 'web ↔ db authenticated on both nodes');

  // Identities: only those of the node's own pods, plus the node's.
  t.deepEqual(identities(a), [NODE_A, WEB].sort());
  t.deepEqual(identities(b), [NODE_B, DB].sort());
  t.like(a.status().peers, [{ node: 'node-b', address: addresses.b, state: 'up' }]);
  t.like(b.status().peers, [{ node: 'node-a', address: addresses.a, state: 'up' }]);
  const [onA] = a.status().pairs;
  const [onB] = b.status().pairs;
  t.like(onA, { localId: WEB, remoteId: DB, remoteNode: 'node-b', state: 'authenticated' });
  t.like(onB, { localId: DB, remoteId: WEB, remoteNode: 'node-a', state: 'authenticated' });
  t.is(onA!.expiresAt, onB!.expiresAt, 'both sides apply the same expiry rule to the same chains');
  // One node handshake, node-a leading. Which side runs the pair handshake depends on which SVID
  // arrives when (a node that receives its SVID after its link is up initiates at once), so only
  // the two sides' counts are matched here; the policy test below counts one exactly.
  await Promise.all([a.settled(), b.settled()]);
  const [countsA, countsB] = [await handshakeSuccesses(a, addresses.a), await handshakeSuccesses(b, addresses.b)];
  t.like(countsA, { 'node/initiator': 1 });
  t.like(countsB, { 'node/responder': 1 });
  t.is(countsA['node/responder'] ?? 0, 0);
  t.is(countsB['node/initiator'] ?? 0, 0);
  t.is(countsA['pair/initiator'] ?? 0, countsB['pair/responder'] ?? 0, "every pair handshake node-a ran, node-b answered");
  t.is(countsB['pair/initiator'] ?? 0, countsA['pair/responder'] ?? 0, "every pair handshake node-b ran, node-a answered");
  t.true((countsA['pair/initiator'] ?? 0) + (countsB['pair/initiator'] ?? 0) >= 1);
  // Every family the dashboard charts is exported, whatever the transport (here none).
  const exposition = await (await fetch(`http://${addresses.a}:${a.metricsPort}/metrics`)).text();
  for (const family of ['meshauth_transport_peers', 'meshauth_transport_operations_total', 'meshauth_transport_operation_duration_seconds']) {
    t.regex(exposition, new RegExp(`^# TYPE ${family} `, 'm'), `${family} is exported`);
  }
});

test('a deleted MutualAuthPolicy takes its pair out of both agents; re-added, it is back with one handshake', async (t) => {
  const cluster = await startCluster(t, 2);
  const { server, a, b, addresses } = cluster;
  const before = a.status().pairs[0]!.lastAuthenticatedAt;

  server.remove('mutualauthpolicies', 'db-auth', 'shop');
  await eventually(() => a.status().pairs.length === 0 && b.status().pairs.length === 0, 'the pair leaves both agents');
  // The endpoints are still there: identities stay, links stay.
  t.deepEqual(identities(a), [NODE_A, WEB].sort());
  t.like(a.status().peers, [{ node: 'node-b', state: 'up' }]);

  // Re-added while SVIDs and the link are in place: node-a, the leader, authenticates the pair at
  // once, and that one handshake serves both nodes (node-b would wait out its 5 s grace first).
  await Promise.all([a.settled(), b.settled()]);
  const countsBefore = { a: await handshakeSuccesses(a, addresses.a), b: await handshakeSuccesses(b, addresses.b) };
  server.create('mutualauthpolicies', dbPolicy);
  await eventually(() => bothHoldWebDb(cluster), 'the pair is back on both');
  t.not(a.status().pairs[0]!.lastAuthenticatedAt, before, 'authenticated anew, not left over');
  t.like(a.status().pairs[0], { trigger: 'proactive' });
  t.like(b.status().pairs[0], { trigger: 'responder' });
  await Promise.all([a.settled(), b.settled()]);
  t.deepEqual(increase(countsBefore.a, await handshakeSuccesses(a, addresses.a)), { 'pair/initiator': 1 });
  t.deepEqual(increase(countsBefore.b, await handshakeSuccesses(b, addresses.b)), { 'pair/responder': 1 });
});

test('a deleted pod takes its pair and identity; a new pod reusing its IP never inherits the old pair', async (t) => {
  const cluster = await startCluster(t, 3);
  const { server, a, b } = cluster;

  // The pod goes: its pair leaves both nodes, its SVID leaves node-a.
  server.remove('pods', 'web-1', 'shop');
  await eventually(() => desired(a).length === 0 && desired(b).length === 0, 'the pair leaves both agents');
  await eventually(() => sameList(identities(a), [NODE_A]), "node-a drops web's SVID");
  t.deepEqual(identities(b), [NODE_B, DB].sort());

  // A new web pod on the same IP brings the pair back.
  server.create('pods', pod({ namespace: 'shop', name: 'web-2', serviceAccount: 'web', node: 'node-a', ips: [WEB_IP] }));
  await eventually(() => bothHoldWebDb(cluster), 'web ↔ db back');

  // 1. The new pod (another service account) is reported while the old one still exists (it is
  //    terminating; its deletion comes later): the IP is the new pod's at once, and the old pod's
  //    late deletion does not take it away.
  let onA = observe(a, WEB_IP);
  let onB = observe(b, WEB_IP);
  server.create('pods', pod({ namespace: 'shop', name: 'api-1', serviceAccount: 'api', node: 'node-a', ips: [WEB_IP] }));
  await eventually(() => sameList(pairs(a), ['api → db @ node-b']) && sameList(pairs(b), ['db → api @ node-a']), 'api ↔ db on both');
  server.remove('pods', 'web-2', 'shop');
  await settle(server, 'pods');
  for (const [who, observation, moves] of [
    ['node-a', onA, { from: WEB, to: API, oldPair: 'web → db @ node-b', newPair: 'api → db @ node-b' }],
    ['node-b', onB, { from: WEB, to: API, oldPair: 'db → web @ node-a', newPair: 'db → api @ node-a' }],
  ] as const) {
    t.deepEqual(observation.ipEvents, ['delete shop/web-2', 'upsert shop/api-1 as api'], `${who}: old owner out, then new owner in`);
    assertNoInheritance(t, who, observation, moves);
  }
  t.deepEqual(desired(a), ['api → db @ node-b']);
  t.deepEqual(desired(b), ['db → api @ node-a']);
  await eventually(() => sameList(identities(a), [NODE_A, API].sort()), "node-a holds api's SVID and not web's");

  // 2. Deletion and re-use in one step (as a relist would report them): the same guarantees.
  onA = observe(a, WEB_IP);
  onB = observe(b, WEB_IP);
  server.remove('pods', 'api-1', 'shop');
  server.create('pods', pod({ namespace: 'shop', name: 'web-3', serviceAccount: 'web', node: 'node-a', ips: [WEB_IP] }));
  await eventually(() => bothHoldWebDb(cluster), 'web ↔ db on both');
  for (const [who, observation, moves] of [
    ['node-a', onA, { from: API, to: WEB, oldPair: 'api → db @ node-b', newPair: 'web → db @ node-b' }],
    ['node-b', onB, { from: API, to: WEB, oldPair: 'db → api @ node-a', newPair: 'db → web @ node-a' }],
  ] as const) {
    t.deepEqual(observation.ipEvents, ['delete shop/api-1', 'upsert shop/web-3 as web'], `${who}: old owner out, then new owner in`);
    assertNoInheritance(t, who, observation, moves);
  }
  await eventually(() => sameList(identities(a), [NODE_A, WEB].sort()), "node-a holds web's SVID and not api's");
});

test('a dropped watch and a 410 Gone relist leave both agents exactly as they were', async (t) => {
  const cluster = await startCluster(t, 4);
  const { server, a, b } = cluster;
  await Promise.all([a.settled(), b.settled()]);
  await eventually(() => server.openWatches() === 6, 'three watches per agent');
  const before = { a: a.status(), b: b.status() };
  const onA = observe(a, WEB_IP);
  const onB = observe(b, WEB_IP);

  // The connections of every watch are cut.
  let lists = server.requestCount('list');
  let watches = server.requestCount('watch');
  server.dropWatches();
  await eventually(() => server.requestCount('watch') >= watches + 6 && server.openWatches() === 6, 'both agents watch again');

  // The watch cache expires every watcher while history is compacted, and an object gets a new
  // resourceVersion with the same content: the relist finds no real difference.
  lists = server.requestCount('list');
  watches = server.requestCount('watch');
  server.update('pods', server.get('pods', 'db-0', 'shop')!);
  server.compact();
  server.expireWatches();
  await eventually(
    () => server.requestCount('list') >= lists + 6 && server.requestCount('watch') >= watches + 6 && server.openWatches() === 6,
    'both agents relisted every resource and watch again',
  );
  for (const resource of ['pods', 'nodes', 'mutualauthpolicies'] as const) await settle(server, resource);

  t.deepEqual(onA.events, [], 'no cluster event reached node-a');
  t.deepEqual(onB.events, [], 'no cluster event reached node-b');
  t.is(onA.mapWrites + onB.mapWrites, 0, 'no pair was removed or re-added');
  for (const [agent, old] of [
    [a, before.a],
    [b, before.b],
  ] as const) {
    const now = agent.status();
    t.deepEqual(now.pairs, old.pairs, 'same pairs, same lastAuthenticatedAt');
    t.deepEqual(now.peers, old.peers, 'same links, same epochs');
    t.deepEqual(now.identities, old.identities, 'same SVIDs');
    t.true(now.ready);
  }
});

test('a deleted node takes its peer and its pairs out of the other agent; re-added, both are back', async (t) => {
  const cluster = await startCluster(t, 5);
  const { server, a, addresses } = cluster;

  server.remove('nodes', 'node-b');
  await eventually(() => a.status().peers.length === 0, "node-a drops node-b's link");
  t.deepEqual(a.status().pairs, [], 'no pair with a node that is gone, not even pending');
  // node-a's own endpoints and identity are untouched.
  t.deepEqual(identities(a), [NODE_A, WEB].sort());

  server.create('nodes', node('node-b', [{ type: 'InternalIP', address: addresses.b }], ['10.30.2.0/24']));
  await eventually(() => bothHoldWebDb(cluster) && a.status().peers[0]?.state === 'up', 'link and pair back');
});
