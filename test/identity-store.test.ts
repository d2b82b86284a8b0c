import test from 'ava';
import { Registry } from 'prom-client';
import { DevCa } from '../src/identity/dev-ca.js';
import { IdentityStore } from '../src/identity/store.js';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import { IdentityMetrics } from '../src/identity/identity-metrics.js';
import { ProviderError, type IdentityProvider, type ProviderSink, type RawSvid } from '../src/identity/types.js';
import { silentLogger } from '../src/util/logger.js';

const NODE_ID = SpiffeId.parse('spiffe://example.org/meshauth/node/n1');
const WORKLOAD_ID = SpiffeId.parse('spiffe://example.org/ns/default/sa/web');

/** A provider the test drives by hand: it forwards whatever the test pushes to the store. */
class ManualProvider implements IdentityProvider {
  readonly name = 'file' as const;
  sink?: ProviderSink;
  wanted: string[] = [];
  start(sink: ProviderSink): Promise<void> {
    this.sink = sink;
    return Promise.resolve();
  }
  setWanted(ids: readonly SpiffeId[]): void {
    this.wanted = ids.map((id) => id.toString());
  }
  stop(): Promise<void> {
    return Promise.resolve();
  }
}

async function setup(options: { now?: () => Date } = {}) {
  const ca = await DevCa.create({ trustDomain: 'example.org' });
  const provider = new ManualProvider();
  const registry = new Registry();
  const metrics = new IdentityMetrics(registry);
  const store = new IdentityStore({
    provider,
    nodeId: NODE_ID,
    clockSkewMs: 30_000,
    maxChainDepth: 5,
    logger: silentLogger(),
    metrics,
    ...options,
  });
  await store.start();
  const sink = provider.sink!;
  sink.bundles(new Map([['example.org', ca.bundle()]]));
  return { ca, provider, store, sink, registry };
}

async function metricValue(registry: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  const value = (metric?.values ?? []).find((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l));
  return value?.value ?? 0;
}

test('the node identity is always wanted, plus the workloads the agent names', async (t) => {
  const { provider, store } = await setup();
  t.deepEqual(provider.wanted, [NODE_ID.toString()]);
  store.setWanted([WORKLOAD_ID]);
  t.deepEqual(provider.wanted, [NODE_ID.toString(), WORKLOAD_ID.toString()]);
});

test('valid SVIDs are held with their keys and announced; health turns ready', async (t) => {
  const { ca, store, sink } = await setup();
  const announced: string[] = [];
  store.on('svid', (svid) => announced.push(svid.id.toString()));
  t.false(store.health().ready);
  sink.svids([await ca.issue({ id: NODE_ID, ttlMs: 3_600_000 }), await ca.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 })]);
  t.deepEqual(announced.sort(), [WORKLOAD_ID.toString(), NODE_ID.toString()].sort());
  const node = store.nodeSvid();
  t.truthy(node);
  t.true(node!.chain[0]!.checkPrivateKey(node!.key));
  t.true(store.health().ready);
  t.is(store.list().length, 2);
});

test('SVIDs that arrive before their bundle are accepted once the bundle arrives', async (t) => {
  const { ca, store, sink } = await setup();
  const other = await DevCa.create({ trustDomain: 'other.org' });
  const id = SpiffeId.parse('spiffe://other.org/ns/a/sa/b');
  sink.svids([await other.issue({ id, ttlMs: 3_600_000 })]);
  t.is(store.get(id), undefined);
  sink.bundles(new Map([['example.org', ca.bundle()], ['other.org', other.bundle()]]));
  t.truthy(store.get(id));
});

test('an invalid update is rejected, counted, and the last good SVID stays in use', async (t) => {
  const { ca, store, sink, registry } = await setup();
  const good = await ca.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 });
  sink.svids([good]);
  const serial = store.get(WORKLOAD_ID)!.chain[0]!.serialNumber;
  const rogue = await DevCa.create({ trustDomain: 'example.org' });
  const untrusted = await rogue.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 });
  sink.svids([untrusted]);
  t.is(store.get(WORKLOAD_ID)!.chain[0]!.serialNumber, serial);
  t.is(await metricValue(registry, 'meshauth_svid_rejected_total', { reason: 'no_path_to_trust_anchor' }), 1);
});

test('a garbage certificate or a key that does not match is rejected without losing the last good SVID', async (t) => {
  const { ca, store, sink, registry } = await setup();
  sink.svids([await ca.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 })]);
  const serial = store.get(WORKLOAD_ID)!.chain[0]!.serialNumber;
  const other = await ca.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 });
  const mismatched: RawSvid = { ...(await ca.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 })), key: other.key };
  sink.svids([mismatched]);
  sink.svids([{ chain: [Buffer.from('not a certificate')], key: Buffer.alloc(0), claimedId: WORKLOAD_ID.toString() }]);
  // Unidentifiable garbage (no claimed ID, unparsable leaf) must not withdraw anything either.
  sink.svids([{ chain: [Buffer.from('garbage')], key: Buffer.alloc(0) }]);
  t.is(store.get(WORKLOAD_ID)!.chain[0]!.serialNumber, serial);
  t.is(await metricValue(registry, 'meshauth_svid_rejected_total', { reason: 'key_mismatch' }), 1);
  t.true((await metricValue(registry, 'meshauth_svid_rejected_total', { reason: 'malformed_certificate' })) >= 1);
});

test('a full state without an ID withdraws it', async (t) => {
  const { ca, store, sink } = await setup();
  const removed: string[] = [];
  store.on('svidRemoved', (id) => removed.push(id.toString()));
  sink.svids([await ca.issue({ id: NODE_ID, ttlMs: 3_600_000 }), await ca.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 })]);
  sink.svids([await ca.issue({ id: NODE_ID, ttlMs: 3_600_000 })]);
  t.deepEqual(removed, [WORKLOAD_ID.toString()]);
  t.is(store.get(WORKLOAD_ID), undefined);
  t.truthy(store.nodeSvid());
});

test('rotation announces the new SVID; an identical re-delivery does not', async (t) => {
  const { ca, store, sink } = await setup();
  let announcements = 0;
  store.on('svid', () => announcements++);
  const first = await ca.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 });
  sink.svids([first]);
  sink.svids([first]);
  t.is(announcements, 1);
  sink.svids([await ca.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 })]);
  t.is(announcements, 2);
});

test('an expired SVID is dropped at its notAfter even without a provider update', async (t) => {
  const { ca, store, sink } = await setup();
  const removed: string[] = [];
  store.on('svidRemoved', (id) => removed.push(id.toString()));
  // DevCa backdates notBefore by a minute; a 1.5 s lifetime expires during the test.
  sink.svids([await ca.issue({ id: WORKLOAD_ID, ttlMs: 1500 })]);
  t.truthy(store.get(WORKLOAD_ID));
  await new Promise((resolve) => setTimeout(resolve, 2200));
  t.is(store.get(WORKLOAD_ID), undefined);
  t.deepEqual(removed, [WORKLOAD_ID.toString()]);
});

test('provider errors are counted by kind and reported in health, never thrown', async (t) => {
  const { sink, store, registry } = await setup();
  sink.error(new ProviderError('unavailable', 'connection refused'));
  t.is(await metricValue(registry, 'meshauth_identity_provider_errors_total', { provider: 'file', kind: 'unavailable' }), 1);
  t.is(store.health().lastError?.kind, 'unavailable');
});

test('a bundle update for a domain that does not parse keeps the old bundle', async (t) => {
  const { ca, store, sink, registry } = await setup();
  sink.bundles(new Map([['example.org', [Buffer.from('garbage')]]]));
  t.is(store.trustBundles.get('example.org')?.[0]?.fingerprint256, ca.certificate.fingerprint256);
  t.is(await metricValue(registry, 'meshauth_trust_bundle_rejected_total', { provider: 'file' }), 1);
});

test('a domain absent from a bundle update is unloaded and announced', async (t) => {
  const { ca, store, sink } = await setup();
  const changes: unknown[] = [];
  store.on('bundles', (change) => changes.push(change));
  sink.svids([await ca.issue({ id: WORKLOAD_ID, ttlMs: 3_600_000 })]);
  sink.bundles(new Map());
  t.deepEqual(changes, [{ added: [], removed: ['example.org'], changed: [] }]);
  t.deepEqual(store.trustBundles.trustDomains(), []);
});
