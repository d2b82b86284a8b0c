// The spire-delegated provider against a faithful SPIRE Delegated Identity API server on a unix
// socket: the shared provider conformance suite, then subscriptions per wanted workload,
// full-state merging, bundle key normalisation and the error rules.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { DevCa } from '../src/identity/dev-ca.js';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import { GrpcEndpointError } from '../src/identity/providers/grpc-endpoint.js';
import { SpireDelegatedProvider, kubernetesSelectors } from '../src/identity/providers/spire-delegated.js';
import { spireDelegatedOptionsSchema } from '../src/identity/providers/spire-delegated-options.js';
import { sleep, type BackoffOptions } from '../src/util/backoff.js';
import { providerConformance } from './helpers/provider-conformance.js';
import { bundleDomainsAre, idsAre, withRunningProvider, type RecordingSink } from './helpers/recording-sink.js';
import { permissionDeniedWithdrawsAndRecovers, reportedAndNeverRetried, unavailableKeepsStateAndBacksOff } from './helpers/identity-api-checks.js';
import { DelegatedIdentityServer, type DelegatedIdentityServerOptions, type RegistrationEntry } from './servers/delegated-identity-server.js';

const FAST: BackoffOptions = { initialMs: 40, maxMs: 200, jitter: 0 };
const TD = 'example.org';
const NODE = `spiffe://${TD}/meshauth/node/n1`;
const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = `spiffe://${TD}/ns/shop/sa/db`;
const ELSEWHERE = `spiffe://${TD}/ns/batch/sa/job`;
const NODE_SELECTORS = [
  { type: 'k8s', value: 'ns:meshauth' },
  { type: 'k8s', value: 'pod-label:app:meshauth-n1' },
];
const k8s = (ns: string, sa: string) => [
  { type: 'k8s', value: `ns:${ns}` },
  { type: 'k8s', value: `sa:${sa}` },
];

const ENTRIES: RegistrationEntry[] = [
  { id: NODE, selectors: NODE_SELECTORS },
  { id: WEB, selectors: k8s('shop', 'web') },
  { id: DB, selectors: k8s('shop', 'db') },
  // Runs on another node: this node must never subscribe to it.
  { id: ELSEWHERE, selectors: k8s('batch', 'job') },
  // Matches every pod of the namespace, so also the web subscription: not a wanted ID, dropped.
  { id: `spiffe://${TD}/shop-wide`, selectors: [{ type: 'k8s', value: 'ns:shop' }] },
];

let ca: DevCa;
let partner: DevCa;
test.before(async () => {
  [ca, partner] = await Promise.all([DevCa.create({ trustDomain: TD }), DevCa.create({ trustDomain: 'partner.test' })]);
});

providerConformance('spire-delegated', async ({ logger }) => {
  const server = await DelegatedIdentityServer.start({ ca, entries: ENTRIES });
  const provider = new SpireDelegatedProvider({ endpoint: server.address, nodeSelectors: NODE_SELECTORS }, { logger, backoff: FAST });
  return { provider, wanted: [NODE, WEB, DB].map((id) => SpiffeId.parse(id)), rotate: () => server.rotate(), close: () => server.close() };
});

interface Running {
  server: DelegatedIdentityServer;
  provider: SpireDelegatedProvider;
  sink: RecordingSink;
}

async function withProvider(wanted: string[], options: Partial<DelegatedIdentityServerOptions>, body: (running: Running) => Promise<void>): Promise<void> {
  const ids = wanted.map((id) => SpiffeId.parse(id));
  const server = await DelegatedIdentityServer.start({ ca, entries: ENTRIES, ...options });
  const provider = new SpireDelegatedProvider({ endpoint: server.address, nodeSelectors: NODE_SELECTORS }, { backoff: FAST });
  await withRunningProvider(provider, () => server.close(), (sink) => body({ server, provider, sink }), ids);
}

const selectorSet = (selectors: { type: string; value: string }[]) => selectors.map((s) => `${s.type}:${s.value}`).sort();
const sortedSets = (sets: string[][]) => sets.map((set) => set.join(',')).sort();

/** Waits until the server's open SVID subscriptions are exactly these selector sets. */
async function subscriptionsAre(server: DelegatedIdentityServer, expected: string[][]): Promise<void> {
  const want = JSON.stringify(sortedSets(expected));
  for (let waited = 0; waited < 5_000; waited += 20) {
    if (JSON.stringify(sortedSets(server.openSubscriptions())) === want) return;
    await sleep(20);
  }
  throw new Error(`open subscriptions are ${JSON.stringify(server.openSubscriptions())}, expected ${want}`);
}

test('kubernetesSelectors maps spiffe://td/ns/<ns>/sa/<sa> to the k8s attestor selectors, and nothing else', (t) => {
  t.deepEqual(kubernetesSelectors(SpiffeId.parse(WEB)), k8s('shop', 'web'));
  t.is(kubernetesSelectors(SpiffeId.parse(NODE)), undefined);
  t.is(kubernetesSelectors(SpiffeId.parse(`spiffe://${TD}/ns/shop/sa/web/extra`)), undefined);
  t.is(kubernetesSelectors(SpiffeId.parse(`spiffe://${TD}/ns/shop`)), undefined);
});

test('subscribes for the node and each wanted workload only; delivers node first, then exactly the wanted workloads', async (t) => {
  await withProvider([NODE, WEB, DB], { federated: [partner] }, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE, DB, WEB]), 'node, then workloads in ID order');
    await subscriptionsAre(server, [selectorSet(NODE_SELECTORS), selectorSet(k8s('shop', 'web')), selectorSet(k8s('shop', 'db'))]);
    t.false(server.calls.some((call) => call.selectors.includes('k8s:ns:batch')), 'subscribed to a workload of another node');
    await sink.until(bundleDomainsAre(sink, ['example.org', 'partner.test']), 'own and federated bundles');
    t.deepEqual(sink.bundleStates.at(-1)!.get('partner.test'), [partner.certificate.raw]);
    t.deepEqual(sink.errors, []);
  });
});

test('setWanted opens subscriptions for new workloads and cancels those of workloads gone from the node', async (t) => {
  await withProvider([NODE, WEB], {}, async ({ server, provider, sink }) => {
    await sink.until(idsAre(sink, [NODE, WEB]), 'node and web');
    provider.setWanted([NODE, DB].map((id) => SpiffeId.parse(id)));
    await sink.until(idsAre(sink, [NODE, DB]), 'web withdrawn, db added');
    await subscriptionsAre(server, [selectorSet(NODE_SELECTORS), selectorSet(k8s('shop', 'db'))]);
    provider.setWanted([NODE].map((id) => SpiffeId.parse(id)));
    await sink.until(idsAre(sink, [NODE]), 'only the node left');
    await subscriptionsAre(server, [selectorSet(NODE_SELECTORS)]);
    t.is(server.callCount('SubscribeToX509SVIDs'), 3, 'an unchanged subscription was reopened');
  });
});

test('a wanted workload without a registration entry yet gets its SVID once the entry appears', async (t) => {
  const entries = ENTRIES.filter((entry) => entry.id !== DB);
  await withProvider([NODE, DB], { entries }, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the node only');
    await server.setEntries([...entries, { id: DB, selectors: k8s('shop', 'db') }]);
    await sink.until(idsAre(sink, [NODE, DB]), 'db after registration');
    t.deepEqual(sink.errors, []);
  });
});

test('full states: an entry and a federated bundle removed server-side disappear', async (t) => {
  await withProvider([NODE, WEB, DB], { federated: [partner] }, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE, DB, WEB]), 'all three');
    await sink.until(bundleDomainsAre(sink, ['example.org', 'partner.test']), 'two bundles');
    await server.setEntries(ENTRIES.filter((entry) => entry.id !== WEB));
    await sink.until(idsAre(sink, [NODE, DB]), 'web withdrawn');
    server.setFederated([]);
    await sink.until(bundleDomainsAre(sink, ['example.org']), 'the federated bundle unloaded');
    t.deepEqual(sink.errors, []);
  });
});

for (const bundleKeys of ['spiffe-id', 'name'] as const) {
  test(`bundle keys sent as ${bundleKeys === 'spiffe-id' ? 'spiffe://td (as SPIRE does)' : 'bare names'} reach the sink as trust domain names`, async (t) => {
    await withProvider([NODE], { bundleKeys, federated: [partner] }, async ({ sink }) => {
      await sink.until(bundleDomainsAre(sink, ['example.org', 'partner.test']), 'normalised keys');
      t.deepEqual(sink.bundleStates.at(-1)!.get('example.org'), [ca.certificate.raw]);
    });
  });
}

test('of SVIDs in one subscription sharing a hint the first is kept', async (t) => {
  const second = `spiffe://${TD}/meshauth/node/n1-alt`;
  const entries = [{ ...ENTRIES[0]!, hint: 'node' }, { id: second, selectors: NODE_SELECTORS, hint: 'node' }, ...ENTRIES.slice(1)];
  await withProvider([NODE], { entries }, async ({ sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'only the first "node" SVID');
    t.is(sink.svidStates.at(-1)![0]!.hint, 'node');
  });
});

test('PermissionDenied (not an authorized delegate) withdraws SVIDs and bundles, retries with backoff and recovers', async (t) => {
  await withProvider([NODE, WEB], {}, async ({ server, sink }) => {
    const message = 'caller not configured as an authorized delegate';
    await permissionDeniedWithdrawsAndRecovers(t, { server, sink, method: 'SubscribeToX509SVIDs', streams: 2, message, expectedIds: [NODE, WEB], expectedDomains: ['example.org'] });
  });
});

test('Unavailable keeps the last SVIDs, backs off instead of spinning, and recovers', async (t) => {
  await withProvider([NODE], {}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the first state');
    await unavailableKeepsStateAndBacksOff(t, { server, sink, method: 'SubscribeToX509SVIDs', expectedIds: [NODE] });
  });
});

test('an agent restart drops every subscription; all are reopened', async (t) => {
  await withProvider([NODE, WEB, DB], {}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE, DB, WEB]), 'the first state');
    await server.restart();
    await subscriptionsAre(server, [selectorSet(NODE_SELECTORS), selectorSet(k8s('shop', 'web')), selectorSet(k8s('shop', 'db'))]);
    const states = sink.svidStates.length;
    await server.rotate();
    await sink.until(() => (sink.svidStates.length > states ? true : undefined), 'rotated SVIDs over the new connection');
    await sink.until(idsAre(sink, [NODE, DB, WEB]), 'the full state again');
    t.pass();
  });
});

test('InvalidArgument is reported and never retried', async (t) => {
  await withProvider([NODE, WEB], {}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE, WEB]), 'the first state');
    const message = 'could not parse provided selectors';
    await reportedAndNeverRetried(t, { server, sink, status: grpc.status.INVALID_ARGUMENT, message, kind: 'invalid_argument', streams: 3 });
  });
});

test('Unimplemented is reported and never retried', async (t) => {
  await withProvider([NODE], {}, async ({ server, sink }) => {
    await sink.until(idsAre(sink, [NODE]), 'the first state');
    const message = 'unknown service spire.api.agent.delegatedidentity.v1.DelegatedIdentity';
    await reportedAndNeverRetried(t, { server, sink, status: grpc.status.UNIMPLEMENTED, message, kind: 'unimplemented', streams: 2 });
  });
});

test('works over tcp://IP:port', async (t) => {
  await withProvider([NODE, WEB], { tcp: true }, async ({ server, sink }) => {
    t.regex(server.address, /^tcp:\/\/127\.0\.0\.1:\d+$/);
    await sink.until(idsAre(sink, [NODE, WEB]), 'SVIDs over TCP');
  });
});

test('malformed endpoint addresses are rejected by the provider and by the config schema', (t) => {
  for (const endpoint of ['/run/spire/admin.sock', 'unix:admin.sock', 'tcp://spire-agent:8081', 'dns:///x']) {
    t.throws(() => new SpireDelegatedProvider({ endpoint, nodeSelectors: NODE_SELECTORS }), { instanceOf: GrpcEndpointError }, endpoint);
    t.false(spireDelegatedOptionsSchema.safeParse({ endpoint, nodeSelectors: NODE_SELECTORS }).success, endpoint);
  }
  t.true(spireDelegatedOptionsSchema.safeParse({ endpoint: 'unix:///run/spire/admin/admin.sock', nodeSelectors: NODE_SELECTORS }).success);
});
