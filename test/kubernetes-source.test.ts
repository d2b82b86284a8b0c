// KubernetesSource against the test API server: the real client-node informers over HTTP, with
// the event sequence and the resulting state asserted after each step.
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { KubeConfig } from '@kubernetes/client-node';
import { KubernetesSource, loadKubeConfig } from '../src/cluster/kubernetes/source.js';
import type { ClusterEvent, EndpointInfo } from '../src/cluster/types.js';
import { KubeApiServer, type KubeResource, type RequestRecord } from './servers/kube-api-server.js';
import { EventRecorder, node, pod, policy, until } from './helpers/cluster-events.js';
import { agentClusterRoleRules, assertRequestsAuthorized, unusedGrants } from './helpers/rbac.js';

// Each test's API servers, for the RBAC check after it.
const test = anyTest as TestFn<{ servers: KubeApiServer[] }>;

const TD = 'cluster.test';

interface Harness {
  server: KubeApiServer;
  source: KubernetesSource;
  recorder: EventRecorder;
  logs: Record<string, unknown>[];
}

function kubeConfigFor(server: KubeApiServer): KubeConfig {
  const config = new KubeConfig();
  config.loadFromOptions({
    // client-node refuses plain http unless TLS verification is "skipped"; there is no TLS to verify.
    clusters: [{ name: 'test', server: server.url, skipTLSVerify: true }],
    users: [{ name: 'meshauth', token: server.token }],
    contexts: [{ name: 'test', cluster: 'test', user: 'meshauth' }],
    currentContext: 'test',
  });
  return config;
}

async function harness(
  t: ExecutionContext<{ servers: KubeApiServer[] }>,
  options: { historyLimit?: number; before?: (server: KubeApiServer) => void; start?: boolean } = {},
): Promise<Harness> {
  const server = await KubeApiServer.start({ historyLimit: options.historyLimit ?? 50 });
  t.context.servers.push(server);
  options.before?.(server);
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logs.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  const source = new KubernetesSource({
    kubeConfig: kubeConfigFor(server),
    trustDomain: TD,
    logger: pino({ level: 'debug' }, sink),
    backoff: { initialMs: 10, maxMs: 50 },
    pageSize: 2,
  });
  const recorder = new EventRecorder();
  t.teardown(async () => {
    await source.stop();
    await server.close();
  });
  if (options.start !== false) await source.start(recorder.push);
  return { server, source, recorder, logs };
}

async function startSynced(t: ExecutionContext<{ servers: KubeApiServer[] }>, options: Parameters<typeof harness>[1] = {}): Promise<Harness> {
  const h = await harness(t, options);
  await h.recorder.until(() => h.recorder.state.synced, 'synced');
  await until(() => h.server.openWatches() === 3, 'three open watches');
  return h;
}

/**
 * Proves the source has processed everything the server sent on a resource's watch: a bookmark at
 * the current resourceVersion, then a clean end; the re-watch asks for exactly that version.
 */
async function settle(h: Harness, resource: KubeResource): Promise<void> {
  const rv = h.server.resourceVersion;
  const seen = h.server.requests.length;
  h.server.bookmark();
  h.server.endWatches(resource);
  await until(
    () => h.server.requests.slice(seen).some((r) => r.verb === 'watch' && r.resource === resource && r.query.resourceVersion === rv),
    `${resource} re-watch from ${rv}`,
  );
}

function upsertIps(events: ClusterEvent[]): string[] {
  return events.flatMap((e) => (e.type === 'endpoint' && e.action === 'upsert' ? [e.endpoint.ip] : []));
}

// Every scenario below doubles as an RBAC check: the requests the real client made, token and
// all, must be ones deploy/rbac.yaml lets the agent's service account make.
const everyRequest: RequestRecord[] = [];

test.beforeEach((t) => {
  t.context = { servers: [] };
});

test.afterEach('every request carried the token and is allowed by deploy/rbac.yaml', async (t) => {
  // Some scenarios are refused before any request (a second start(), no kubeconfig).
  everyRequest.push(...(await assertRequestsAuthorized(t, t.context.servers, { eachMadeRequests: false })));
});

test.after('deploy/rbac.yaml grants nothing the scenarios did not use (least privilege)', async (t) => {
  t.true(everyRequest.length > 0, 'the scenarios made requests');
  t.deepEqual(unusedGrants(await agentClusterRoleRules(), everyRequest), []);
});

test('the test API server refuses a request without the bearer token (401), as a real one does', async (t) => {
  const server = await KubeApiServer.start();
  t.teardown(() => server.close());
  const anonymous = await fetch(`${server.url}/api/v1/nodes`);
  t.is(anonymous.status, 401);
  t.like(await anonymous.json(), { kind: 'Status', reason: 'Unauthorized', code: 401 });
  const wrong = await fetch(`${server.url}/api/v1/nodes`, { headers: { Authorization: 'Bearer not-the-token' } });
  t.is(wrong.status, 401);
  t.is(server.unauthenticated, 2);
  t.deepEqual(server.requests, [], 'an unauthenticated request never reaches authorization');
  const authorized = await fetch(`${server.url}/api/v1/nodes`, { headers: { Authorization: `Bearer ${server.token}` } });
  t.is(authorized.status, 200);
  t.like(server.requests[0], { verb: 'list', apiGroup: '', resource: 'nodes' });
});

const nodeA = node('node-a', [{ type: 'InternalIP', address: '192.0.2.1' }], ['10.0.0.0/24']);
const nodeB = node('node-b', [{ type: 'InternalIP', address: '192.0.2.2' }], ['10.0.1.0/24', 'fd00:1::/64']);

function seed(server: KubeApiServer): void {
  server.create('nodes', nodeA);
  server.create('nodes', nodeB);
  server.create('pods', pod({ name: 'web-1', serviceAccount: 'web', ips: ['10.0.0.11'], labels: { app: 'web' } }));
  server.create('pods', pod({ name: 'web-2', serviceAccount: 'web', node: 'node-b', ips: ['10.0.1.12', 'fd00:1::12'] }));
  server.create('pods', pod({ namespace: 'db', name: 'pg-0', serviceAccount: 'pg', node: 'node-b', ips: ['10.0.1.20'] }));
  server.create('pods', pod({ name: 'starting', ips: ['10.0.0.30'], phase: 'Pending' }));
  server.create('pods', pod({ name: 'done', ips: ['10.0.0.31'], phase: 'Succeeded' }));
  server.create('pods', pod({ namespace: 'kube-system', name: 'proxy', ips: ['192.0.2.1'], hostNetwork: true }));
  server.create('mutualauthpolicies', policy('db', 'pg-auth', { mode: 'required', destination: { serviceAccount: 'pg' } }));
}

test('initial sync: paged lists, the complete state, then synced; watches resume from the list with bookmarks', async (t) => {
  const h = await startSynced(t, { before: seed });
  const { events, state } = h.recorder;
  t.deepEqual(events.at(-1), { type: 'synced' });
  t.deepEqual(
    events.slice(0, -1).map((e) => e.type),
    ['node', 'node', 'endpoint', 'endpoint', 'endpoint', 'endpoint', 'policy'],
  );
  t.deepEqual(state.violations, []);
  t.deepEqual([...state.nodes.values()], [
    { name: 'node-a', address: '192.0.2.1', podCidrs: ['10.0.0.0/24'] },
    { name: 'node-b', address: '192.0.2.2', podCidrs: ['10.0.1.0/24', 'fd00:1::/64'] },
  ]);
  t.deepEqual(state.owners(), { '10.0.1.20': 'db/pg-0', '10.0.0.11': 'default/web-1', '10.0.1.12': 'default/web-2', 'fd00:1::12': 'default/web-2' });
  t.deepEqual(state.endpoints.get('10.0.0.11'), {
    ip: '10.0.0.11',
    spiffeId: 'spiffe://cluster.test/ns/default/sa/web',
    node: 'node-a',
    namespace: 'default',
    serviceAccount: 'web',
    labels: { app: 'web' },
    owner: 'default/web-1',
  } satisfies EndpointInfo);
  t.deepEqual([...state.policies.values()], [{ name: 'db/pg-auth', mode: 'required', source: {}, destination: { namespace: 'db', serviceAccount: 'pg' } }]);

  // Six pods in pages of two: three list requests, the later ones with continue tokens.
  const podLists = h.server.requests.filter((r) => r.verb === 'list' && r.resource === 'pods');
  t.is(podLists.length, 3);
  t.deepEqual(podLists.map((r) => Boolean(r.query.continue)), [false, true, true]);
  for (const watch of h.server.requests.filter((r) => r.verb === 'watch')) {
    t.is(watch.query.allowWatchBookmarks, 'true');
    t.is(watch.query.resourceVersion, h.server.resourceVersion, 'the watch starts at the list resourceVersion');
    const timeout = Number(watch.query.timeoutSeconds);
    t.true(timeout >= 300 && timeout < 600);
  }
});

test('add, modify and delete of each kind after sync', async (t) => {
  const h = await startSynced(t, { before: seed });
  const { recorder, server } = h;

  let mark = recorder.events.length;
  server.create('pods', pod({ name: 'api-1', serviceAccount: 'api', ips: ['10.0.0.40'] }));
  await recorder.until(() => recorder.events.length > mark, 'pod add');
  t.deepEqual(upsertIps(recorder.since(mark)), ['10.0.0.40']);

  mark = recorder.events.length;
  server.update('pods', pod({ name: 'api-1', serviceAccount: 'api', ips: ['10.0.0.40'], labels: { version: '2' } }));
  await recorder.until(() => recorder.events.length > mark, 'pod modify');
  t.deepEqual(recorder.since(mark).map((e) => e.type + ':' + ('action' in e ? e.action : '')), ['endpoint:upsert']);
  t.deepEqual(recorder.state.endpoints.get('10.0.0.40')?.labels, { version: '2' });

  // A pod that stops running leaves, even before its object is deleted.
  mark = recorder.events.length;
  server.update('pods', pod({ name: 'api-1', serviceAccount: 'api', ips: ['10.0.0.40'], phase: 'Succeeded' }));
  await recorder.until(() => recorder.events.length > mark, 'pod finished');
  t.deepEqual(recorder.since(mark), [{ type: 'endpoint', action: 'delete', ip: '10.0.0.40', owner: 'default/api-1' }]);
  mark = recorder.events.length;
  server.remove('pods', 'web-2', 'default');
  await recorder.until(() => recorder.events.length >= mark + 2, 'pod delete');
  t.deepEqual(recorder.since(mark), [
    { type: 'endpoint', action: 'delete', ip: '10.0.1.12', owner: 'default/web-2' },
    { type: 'endpoint', action: 'delete', ip: 'fd00:1::12', owner: 'default/web-2' },
  ]);

  mark = recorder.events.length;
  server.create('nodes', node('node-c', [{ type: 'InternalIP', address: '192.0.2.3' }]));
  server.update('nodes', node('node-a', [{ type: 'InternalIP', address: '192.0.2.100' }], ['10.0.0.0/24']));
  server.remove('nodes', 'node-b');
  await recorder.until(() => recorder.events.length >= mark + 3, 'node changes');
  t.deepEqual(recorder.since(mark), [
    { type: 'node', action: 'upsert', node: { name: 'node-c', address: '192.0.2.3', podCidrs: [] } },
    { type: 'node', action: 'upsert', node: { name: 'node-a', address: '192.0.2.100', podCidrs: ['10.0.0.0/24'] } },
    { type: 'node', action: 'delete', name: 'node-b' },
  ]);

  mark = recorder.events.length;
  server.create('mutualauthpolicies', policy('shop', 'open', { mode: 'disabled', source: { namespace: 'monitoring' } }));
  server.update('mutualauthpolicies', policy('db', 'pg-auth', { mode: 'required', source: { serviceAccount: 'api' }, destination: { serviceAccount: 'pg' } }));
  server.remove('mutualauthpolicies', 'open', 'shop');
  await recorder.until(() => recorder.events.length >= mark + 3, 'policy changes');
  t.deepEqual(recorder.since(mark), [
    { type: 'policy', action: 'upsert', policy: { name: 'shop/open', mode: 'disabled', source: { namespace: 'monitoring' }, destination: { namespace: 'shop' } } },
    {
      type: 'policy',
      action: 'upsert',
      policy: { name: 'db/pg-auth', mode: 'required', source: { serviceAccount: 'api' }, destination: { namespace: 'db', serviceAccount: 'pg' } },
    },
    { type: 'policy', action: 'delete', name: 'shop/open' },
  ]);
  t.deepEqual(recorder.state.violations, []);
  t.deepEqual(recorder.state.owners(), { '10.0.1.20': 'db/pg-0', '10.0.0.11': 'default/web-1' });
  t.deepEqual([...recorder.state.nodes.keys()].sort(), ['node-a', 'node-c']);
  t.deepEqual([...recorder.state.policies.keys()], ['db/pg-auth']);
});

test('an invalid policy update keeps the last valid version; deleting it removes it', async (t) => {
  const h = await startSynced(t, { before: seed });
  const { recorder, server } = h;
  const before = recorder.events.length;
  server.update('mutualauthpolicies', policy('db', 'pg-auth', { mode: 'sometimes' }));
  await settle(h, 'mutualauthpolicies');
  t.is(recorder.events.length, before, 'no event for an invalid policy');
  t.is(recorder.state.policies.get('db/pg-auth')?.mode, 'required');
  t.true(h.logs.some((line) => line.msg === 'MutualAuthPolicy ignored' && line.policy === 'db/pg-auth' && String(line.err).includes('spec.mode')));
  server.remove('mutualauthpolicies', 'pg-auth', 'db');
  await recorder.until(() => recorder.events.length > before, 'policy delete');
  t.deepEqual(recorder.since(before), [{ type: 'policy', action: 'delete', name: 'db/pg-auth' }]);
});

test('bookmarks move the resume point: after history is compacted, a re-watch from a bookmark needs no relist', async (t) => {
  const h = await startSynced(t, { before: seed, historyLimit: 10 });
  const { recorder, server } = h;
  // Twenty node changes push the pods watch's resourceVersion out of the bounded history...
  for (let i = 0; i < 20; i += 1) server.update('nodes', node('node-a', [{ type: 'InternalIP', address: `192.0.2.${100 + i}` }]));
  // ...but a bookmark brings it up to date.
  server.bookmark();
  const bookmarkRv = server.resourceVersion;
  await recorder.until(() => recorder.state.nodes.get('node-a')?.address === '192.0.2.119', 'node changes');
  const lists = server.requestCount('list');
  const seen = server.requests.length;
  const events = recorder.events.length;
  server.dropWatches();
  await until(() => server.openWatches() === 3, 'reconnected');
  const rewatches = server.requests.slice(seen).filter((r) => r.verb === 'watch');
  t.deepEqual(
    rewatches.map((r) => [r.resource, r.query.resourceVersion]).sort(),
    [
      ['mutualauthpolicies', bookmarkRv],
      ['nodes', bookmarkRv],
      ['pods', bookmarkRv],
    ],
  );
  t.is(server.requestCount('list'), lists, 'no relist');
  t.is(recorder.events.length, events, 'nothing changed, nothing emitted');
});

test('410 on an open watch (ERROR event, Expired): relist emits only the real differences', async (t) => {
  const h = await startSynced(t, { before: seed });
  const { recorder, server } = h;
  const mark = recorder.events.length;
  const lists = server.requestCount('list', 'pods');
  // The watch cache expires the watchers; the changes happen while they are away and history is gone.
  server.expireWatches();
  server.remove('pods', 'web-1', 'default');
  server.update('pods', pod({ name: 'web-2', serviceAccount: 'web', node: 'node-b', ips: ['10.0.1.12', 'fd00:1::12'], labels: { v: '2' } }));
  server.create('pods', pod({ name: 'new', ips: ['10.0.0.50'] }));
  server.update('pods', pod({ name: 'starting', ips: ['10.0.0.30'], phase: 'Pending' })); // new version, same meaning
  server.remove('nodes', 'node-a');
  server.compact();
  await recorder.until(() => recorder.events.length >= mark + 5, 'relist diff');
  await until(() => server.openWatches() === 3, 'watching again');
  t.true(server.requestCount('list', 'pods') > lists, 'the pods were listed again');
  const diff = recorder.since(mark);
  t.is(diff.length, 5, JSON.stringify(diff));
  t.deepEqual(
    diff.filter((e) => e.type === 'endpoint' || e.type === 'node').map((e) => ('action' in e ? `${e.type}:${e.action}:${e.type === 'endpoint' && e.action === 'upsert' ? e.endpoint.ip : e.type === 'endpoint' && e.action === 'delete' ? e.ip : ''}` : '')).sort(),
    ['endpoint:delete:10.0.0.11', 'endpoint:upsert:10.0.0.50', 'endpoint:upsert:10.0.1.12', 'endpoint:upsert:fd00:1::12', 'node:delete:'].sort(),
  );
  t.false(diff.some((e) => e.type === 'synced'), 'synced is not repeated');
  t.deepEqual(recorder.state.violations, []);
  t.deepEqual(recorder.state.owners(), { '10.0.1.20': 'db/pg-0', '10.0.1.12': 'default/web-2', 'fd00:1::12': 'default/web-2', '10.0.0.50': 'default/new' });
  t.deepEqual([...recorder.state.nodes.keys()], ['node-b']);
});

test('410 on reconnect (resourceVersion compacted while disconnected): relist with correct deletions', async (t) => {
  const h = await startSynced(t, { before: seed });
  const { recorder, server } = h;
  const mark = recorder.events.length;
  server.dropWatches();
  server.remove('pods', 'pg-0', 'db');
  server.remove('mutualauthpolicies', 'pg-auth', 'db');
  server.create('mutualauthpolicies', policy('db', 'replacement', { mode: 'disabled' }));
  server.compact();
  await recorder.until(() => recorder.events.length >= mark + 3, 'relist diff');
  const diff = recorder.since(mark);
  t.is(diff.length, 3, JSON.stringify(diff));
  t.deepEqual(diff.find((e) => e.type === 'endpoint'), { type: 'endpoint', action: 'delete', ip: '10.0.1.20', owner: 'db/pg-0' });
  t.deepEqual(
    diff.filter((e) => e.type === 'policy').map((e) => (e.type === 'policy' && e.action === 'delete' ? `delete ${e.name}` : e.type === 'policy' && e.action === 'upsert' ? `upsert ${e.policy.name}` : '')),
    ['delete db/pg-auth', 'upsert db/replacement'],
  );
  // The watches that hit 410 were answered with an ERROR event and followed by a list.
  t.true(server.requests.some((r) => r.verb === 'watch' && r.resource === 'pods' && Number(r.query.resourceVersion) < Number(server.resourceVersion)));
  t.deepEqual(recorder.state.violations, []);
});

test('dropped and cleanly ended watches reconnect from the last resourceVersion and replay what was missed', async (t) => {
  const h = await startSynced(t, { before: seed });
  const { recorder, server } = h;
  const lists = server.requestCount('list');
  let mark = recorder.events.length;
  server.dropWatches();
  server.create('pods', pod({ name: 'while-away', ips: ['10.0.0.60'] }));
  await recorder.until(() => recorder.state.endpoints.has('10.0.0.60'), 'replayed add');
  t.deepEqual(upsertIps(recorder.since(mark)), ['10.0.0.60']);

  mark = recorder.events.length;
  server.endWatches();
  server.remove('pods', 'while-away', 'default');
  await recorder.until(() => !recorder.state.endpoints.has('10.0.0.60'), 'replayed delete');
  t.deepEqual(recorder.since(mark), [{ type: 'endpoint', action: 'delete', ip: '10.0.0.60', owner: 'default/while-away' }]);
  await until(() => server.openWatches() === 3, 'watching again');
  t.is(server.requestCount('list'), lists, 'resumed without a relist');
  t.deepEqual(recorder.state.violations, []);
});

test('failed lists and watches are retried with backoff until they succeed', async (t) => {
  const h = await harness(t, {
    before: (server) => {
      seed(server);
      server.failNext('list', 'pods', 403, 2);
      server.failNext('watch', 'nodes', 500, 2);
    },
  });
  await h.recorder.until(() => h.recorder.state.synced, 'synced');
  t.is(h.server.requestCount('list', 'pods'), 2 + 3, 'two refused lists, then three pages');
  await until(() => h.server.openWatches() === 3, 'three watches');
  t.is(h.server.requestCount('watch', 'nodes'), 3);
  const warnings = h.logs.filter((line) => line.msg === 'list/watch failed; retrying');
  t.true(warnings.some((line) => line.resource === 'pods' && String(line.err).startsWith('403') && String(line.hint).includes('rbac')));
  t.true(warnings.some((line) => line.resource === 'nodes' && String(line.err).startsWith('500')));
  t.deepEqual(h.recorder.state.violations, []);
});

test('watches that end at once without an event are retried with backoff, not in a loop', async (t) => {
  const h = await startSynced(t, { before: seed });
  const seen = h.server.requests.length;
  h.server.endNextWatchesAtOnce('pods', 4);
  h.server.endWatches('pods');
  await until(() => h.server.openWatches('pods') === 1, 'pods watched again');
  const watches = h.server.requests.slice(seen).filter((r) => r.verb === 'watch' && r.resource === 'pods');
  t.is(watches.length, 5);
  // Each watch here ended without an event, so each next one waited the jittered backoff first:
  // 10, 20, 40, 50, 50 ms, each at least 80 % of that (jitter 0.2). Without it they come at once.
  const gaps = watches.slice(1).map((w, i) => w.at - (watches[i]?.at ?? 0));
  const minimum = [16, 32, 40, 40];
  gaps.forEach((gap, i) => t.true(gap >= (minimum[i] ?? 0) - 1, `gap ${i}: ${gap} ms`));
  const lastEvent = h.recorder.events.length;
  h.server.create('pods', pod({ name: 'after-backoff', ips: ['10.0.0.80'] }));
  await h.recorder.until(() => h.recorder.events.length > lastEvent, 'event after the backoff');
});

test('nothing is emitted, and so nothing deleted, before all three informers have listed', async (t) => {
  const h = await harness(t, {
    before: (server) => {
      seed(server);
      server.failNext('list', 'mutualauthpolicies', 404, Number.POSITIVE_INFINITY);
    },
  });
  const { recorder, server } = h;
  await until(() => server.openWatches('pods') === 1 && server.openWatches('nodes') === 1, 'pods and nodes watched');
  await until(() => server.requestCount('list', 'mutualauthpolicies') >= 2, 'policy list retried');
  // Changes while the policies are still unknown: a pod and a node leave, a pod arrives.
  server.remove('pods', 'web-1', 'default');
  server.create('pods', pod({ name: 'early', ips: ['10.0.0.70'] }));
  server.remove('nodes', 'node-b');
  await settle(h, 'pods');
  await settle(h, 'nodes');
  t.deepEqual(recorder.events, [], 'not a single event before synced');
  t.true(h.logs.some((line) => line.resource === 'policies' && String(line.hint).includes('CRD')));

  server.clearFailures();
  await recorder.until(() => recorder.state.synced, 'synced');
  t.false(recorder.events.some((e) => e.type !== 'synced' && e.action === 'delete'));
  t.deepEqual(recorder.state.owners(), { '10.0.1.20': 'db/pg-0', '10.0.1.12': 'default/web-2', 'fd00:1::12': 'default/web-2', '10.0.0.70': 'default/early' });
  t.deepEqual([...recorder.state.nodes.keys()], ['node-a']);
  t.deepEqual(recorder.state.violations, []);
});

test('pod IP reuse: the old owner is deleted before the new pod is upserted, in either report order', async (t) => {
  const h = await startSynced(t, { before: seed });
  const { recorder, server } = h;

  // The usual order: the old pod is deleted, then a pod with another service account gets its IP.
  let mark = recorder.events.length;
  server.remove('pods', 'web-1', 'default');
  server.create('pods', pod({ namespace: 'db', name: 'reuser', serviceAccount: 'pg', ips: ['10.0.0.11'] }));
  await recorder.until(() => recorder.state.endpoints.get('10.0.0.11')?.owner === 'db/reuser', 'reused IP');
  t.deepEqual(recorder.since(mark), [
    { type: 'endpoint', action: 'delete', ip: '10.0.0.11', owner: 'default/web-1' },
    {
      type: 'endpoint',
      action: 'upsert',
      endpoint: { ip: '10.0.0.11', spiffeId: 'spiffe://cluster.test/ns/db/sa/pg', node: 'node-a', namespace: 'db', serviceAccount: 'pg', labels: {}, owner: 'db/reuser' },
    },
  ]);

  // The CNI freed the IP before the old pod's object went away: the new pod is reported first.
  mark = recorder.events.length;
  server.create('pods', pod({ name: 'next', serviceAccount: 'other', node: 'node-b', ips: ['10.0.1.20'] }));
  server.remove('pods', 'pg-0', 'db');
  await settle(h, 'pods');
  t.deepEqual(recorder.since(mark).map((e) => (e.type === 'endpoint' ? (e.action === 'delete' ? `delete ${e.ip} ${e.owner}` : `upsert ${e.endpoint.ip} ${e.endpoint.owner}`) : e.type)), [
    'delete 10.0.1.20 db/pg-0',
    'upsert 10.0.1.20 default/next',
  ]);
  t.is(recorder.state.endpoints.get('10.0.1.20')?.spiffeId, 'spiffe://cluster.test/ns/default/sa/other');
  t.deepEqual(recorder.state.violations, []);
});

test('pod IP reuse across a relist: delete of the old owner precedes the upsert', async (t) => {
  const h = await startSynced(t, { before: seed });
  const { recorder, server } = h;
  const mark = recorder.events.length;
  server.dropWatches();
  server.remove('pods', 'pg-0', 'db');
  server.create('pods', pod({ namespace: 'aaa', name: 'reuser', serviceAccount: 'x', node: 'node-b', ips: ['10.0.1.20'] }));
  server.compact();
  await recorder.until(() => recorder.state.endpoints.get('10.0.1.20')?.owner === 'aaa/reuser', 'reused IP after relist');
  t.deepEqual(recorder.since(mark).map((e) => (e.type === 'endpoint' ? `${e.action} ${e.action === 'delete' ? e.owner : e.endpoint.owner}` : e.type)), [
    'delete db/pg-0',
    'upsert aaa/reuser',
  ]);
  t.deepEqual(recorder.state.violations, []);
});

test('a node without an InternalIP is skipped and logged once, never reached at another address', async (t) => {
  const h = await startSynced(t, {
    before: (server) => {
      seed(server);
      server.create('nodes', node('edge', [{ type: 'ExternalIP', address: '203.0.113.5' }, { type: 'Hostname', address: 'edge' }]));
    },
  });
  const { recorder, server, logs } = h;
  t.false(recorder.state.nodes.has('edge'));
  t.false(recorder.events.some((e) => e.type === 'node' && e.action === 'upsert' && e.node.address === '203.0.113.5'));
  const skipped = () => logs.filter((line) => line.msg?.toString().startsWith('node skipped') && line.node === 'edge').length;
  t.is(skipped(), 1);
  // A status update of the same unusable node does not repeat the warning.
  server.update('nodes', node('edge', [{ type: 'ExternalIP', address: '203.0.113.6' }]));
  await settle(h, 'nodes');
  t.is(skipped(), 1);

  let mark = recorder.events.length;
  server.update('nodes', node('edge', [{ type: 'ExternalIP', address: '203.0.113.6' }, { type: 'InternalIP', address: '192.0.2.50' }]));
  await recorder.until(() => recorder.events.length > mark, 'node usable');
  t.deepEqual(recorder.since(mark), [{ type: 'node', action: 'upsert', node: { name: 'edge', address: '192.0.2.50', podCidrs: [] } }]);

  // Losing its InternalIP later removes it: the agent must not keep using a stale address.
  mark = recorder.events.length;
  server.update('nodes', node('edge', [{ type: 'ExternalIP', address: '203.0.113.6' }]));
  await recorder.until(() => recorder.events.length > mark, 'node unusable');
  t.deepEqual(recorder.since(mark), [{ type: 'node', action: 'delete', name: 'edge' }]);
  t.is(skipped(), 2);
  t.deepEqual(recorder.state.violations, []);
});

test('stop() closes the watches and ends the events', async (t) => {
  const h = await startSynced(t, { before: seed });
  await h.source.stop();
  await until(() => h.server.openWatches() === 0, 'watches closed');
  const count = h.recorder.events.length;
  const requests = h.server.requests.length;
  h.server.create('pods', pod({ name: 'after-stop', ips: ['10.0.0.99'] }));
  await new Promise((resolve) => setTimeout(resolve, 100));
  t.is(h.recorder.events.length, count);
  t.is(h.server.requests.length, requests, 'no reconnection after stop');
  await h.source.stop();
});

test('start() twice is refused; loadKubeConfig needs a kubeconfig outside a pod', async (t) => {
  const h = await harness(t, { start: false });
  await h.source.start(() => undefined);
  t.throws(() => void h.source.start(() => undefined), { message: /already started/ });
  const saved = process.env.KUBERNETES_SERVICE_HOST;
  delete process.env.KUBERNETES_SERVICE_HOST;
  try {
    t.throws(() => loadKubeConfig(), { message: /KUBERNETES_SERVICE_HOST/ });
  } finally {
    if (saved !== undefined) process.env.KUBERNETES_SERVICE_HOST = saved;
  }
});
