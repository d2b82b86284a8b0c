import test from 'ava';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DevProvider, devProviderOptions, loadOrCreateDevCa } from '../src/identity/providers/dev.js';
import { DevCa } from '../src/identity/dev-ca.js';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import { silentLogger } from '../src/util/logger.js';
import type { RawSvid } from '../src/identity/types.js';
import { RecordingSink, providerConformance } from './helpers/provider-conformance.js';

const TD = 'dev.test';
const nodeId = SpiffeId.parse(`spiffe://${TD}/meshauth/node/n1`);
const workloadId = SpiffeId.parse(`spiffe://${TD}/ns/default/sa/web`);

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-dev-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

// With a 2 s TTL the half-life renewal (~1 s) is the backend rotating by itself.
providerConformance('dev', async ({ logger }) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-dev-conf-'));
  return {
    provider: new DevProvider({ trustDomain: TD, caDir: join(dir, 'ca'), ttlMs: 2_000, logger }),
    wanted: [nodeId, workloadId],
    rotate: () => Promise.resolve(),
    close: () => rm(dir, { recursive: true, force: true }),
  };
});

const newSink = (): RecordingSink => new RecordingSink();

const idsOf = (state: RawSvid[] | undefined): string[] =>
  (state ?? []).map((svid) => /URI:([^,\s]+)/.exec(new X509Certificate(svid.chain[0]!).subjectAltName ?? '')?.[1] ?? '').sort();

test('creates the CA directory 0700 with a 0600 key on first start, and reuses it afterwards', async (t) => {
  const dir = join(await tempDir(t), 'state', 'dev-ca');
  const first = new DevProvider({ trustDomain: TD, caDir: dir, ttlMs: 60_000 });
  const sink1 = newSink();
  await first.start(sink1);
  await first.stop();
  t.is((await stat(dir)).mode & 0o777, 0o700);
  t.is((await stat(join(dir, 'ca.key'))).mode & 0o777, 0o600);
  t.deepEqual((await readdir(dir)).sort(), ['ca.key', 'ca.pem']);
  t.deepEqual((await readdir(join(dir, '..'))).sort(), ['dev-ca'], 'no staging directory is left behind');

  const second = new DevProvider({ trustDomain: TD, caDir: dir, ttlMs: 60_000 });
  const sink2 = newSink();
  await second.start(sink2);
  await second.stop();
  t.deepEqual(sink2.bundleStates[0]?.get(TD), sink1.bundleStates[0]?.get(TD), 'the second start loaded the same CA');
});

test('agents that initialise one shared directory at the same time end up with one CA', async (t) => {
  const dir = join(await tempDir(t), 'shared-ca');
  const cas = await Promise.all(Array.from({ length: 4 }, () => loadOrCreateDevCa(dir, TD, silentLogger())));
  const loaded = await DevCa.load(dir);
  for (const ca of cas) t.is(ca.certificate.fingerprint256, loaded.certificate.fingerprint256);
});

test('refuses a CA directory that signs for another trust domain, or holds something else', async (t) => {
  const root = await tempDir(t);
  const other = join(root, 'other');
  await (await DevCa.create({ trustDomain: 'other.test' })).save(other);
  const provider = new DevProvider({ trustDomain: TD, caDir: other, ttlMs: 60_000 });
  await t.throwsAsync(provider.start(newSink()), { message: /signs for trust domain other\.test, not dev\.test/ });

  const junk = join(root, 'junk');
  await (await DevCa.create({ trustDomain: TD })).save(junk);
  await rm(join(junk, 'ca.pem'));
  await writeFile(join(junk, 'notes.txt'), 'not a CA');
  await t.throwsAsync(new DevProvider({ trustDomain: TD, caDir: junk, ttlMs: 60_000 }).start(newSink()), {
    message: /holds no CA/,
  });
});

test('refuses a CA directory whose key belongs to another CA', async (t) => {
  const root = await tempDir(t);
  await (await DevCa.create({ trustDomain: TD })).save(join(root, 'a'));
  await (await DevCa.create({ trustDomain: TD })).save(join(root, 'b'));
  await writeFile(join(root, 'a', 'ca.key'), await readFile(join(root, 'b', 'ca.key')));
  await t.throwsAsync(new DevProvider({ trustDomain: TD, caDir: join(root, 'a'), ttlMs: 60_000 }).start(newSink()), {
    message: /does not belong to the certificate/,
  });
});

test('issues exactly the wanted IDs, adds new ones and drops removed ones from the next full state', async (t) => {
  const provider = new DevProvider({ trustDomain: TD, caDir: join(await tempDir(t), 'ca'), ttlMs: 60_000 });
  const sink = newSink();
  provider.setWanted([nodeId]);
  await provider.start(sink);
  t.teardown(() => provider.stop());
  await sink.until(() => sink.svidStates.length === 1, 'the first SVID state');
  t.deepEqual(idsOf(sink.svidStates.at(-1)), [nodeId.toString()]);
  const nodeSerial = new X509Certificate(sink.svidStates[0]![0]!.chain[0]!).serialNumber;

  provider.setWanted([nodeId, workloadId]);
  await sink.until(() => idsOf(sink.svidStates.at(-1)).length === 2, 'a state with both IDs');
  t.deepEqual(idsOf(sink.svidStates.at(-1)), [workloadId.toString(), nodeId.toString()].sort());
  const kept = sink.svidStates.at(-1)!.find((svid) => svid.claimedId === nodeId.toString())!;
  t.is(new X509Certificate(kept.chain[0]!).serialNumber, nodeSerial, 'adding an ID does not re-issue the others');

  provider.setWanted([workloadId]);
  await sink.until(() => idsOf(sink.svidStates.at(-1)).length === 1, 'a state without the node ID');
  t.deepEqual(idsOf(sink.svidStates.at(-1)), [workloadId.toString()]);

  provider.setWanted([]);
  await sink.until(() => sink.svidStates.at(-1)?.length === 0, 'an empty state');
  t.deepEqual(sink.errors, []);
});

test('renews each SVID at half-life with the configured TTL', async (t) => {
  const ttlMs = 3_000;
  const provider = new DevProvider({ trustDomain: TD, caDir: join(await tempDir(t), 'ca'), ttlMs });
  const sink = newSink();
  provider.setWanted([nodeId]);
  const started = Date.now();
  await provider.start(sink);
  t.teardown(() => provider.stop());
  // When the renewal is due is read back from the provider (it keeps it beside the SVID it holds,
  // and the first SVID is all it holds until the renewal): when its timer then fires is up to the
  // machine. notAfter has one-second precision, so the real lifetime is up to 1 s short of the
  // TTL; the renewal is due at half of the real lifetime, up to 10 % earlier.
  const held = (provider as unknown as { held: Map<string, { svid: RawSvid; renewAt: number }> }).held;
  // Read within the sink call that delivers the first SVID: what it holds then is that SVID.
  const [first] = await sink.until(() => sink.svidStates.length === 1 && [...held.values()], 'the first SVID');
  const issuedBy = Date.now();
  const notAfter = Date.parse(new X509Certificate(first!.svid.chain[0]!).validTo);
  const dueAfter = first!.renewAt - started;
  // Issued at some moment between `started` and `issuedBy`: due between 45 % (half, 10 % early)
  // of the way from the earliest to notAfter and half the way from the latest.
  t.true(
    first!.renewAt >= started + (notAfter - started) * 0.45 && first!.renewAt <= (issuedBy + notAfter) / 2,
    `renewal due ${Math.round(dueAfter)} ms after the start, half-life ${(notAfter - started) / 2} ms`,
  );
  // Then it happens: no earlier than due, before the first SVID expires (waited for generously).
  await sink.until(() => sink.svidStates.length >= 2, 'a renewal', 10_000);
  const renewedAt = Date.now();
  t.log(`renewed ${renewedAt - started} ms after the start, due after ${Math.round(dueAfter)} ms`);
  t.true(renewedAt >= first!.renewAt, 'not before it was due');
  t.true(renewedAt < notAfter, 'before the first SVID expired');
  const [firstLeaf, secondLeaf] = sink.svidStates.map((state) => new X509Certificate(state[0]!.chain[0]!));
  t.not(firstLeaf!.serialNumber, secondLeaf!.serialNumber);
  const lifetime = Date.parse(secondLeaf!.validTo) - Date.parse(secondLeaf!.validFrom);
  // The CA backdates notBefore by a minute against clock skew; validTo has one-second precision.
  t.true(Math.abs(lifetime - (60_000 + ttlMs)) <= 1_000, `lifetime ${lifetime} ms`);
});

test('reports an ID it cannot issue to sink.error as an issue failure, and keeps serving the others', async (t) => {
  const provider = new DevProvider({ trustDomain: TD, caDir: join(await tempDir(t), 'ca'), ttlMs: 60_000 });
  const sink = newSink();
  provider.setWanted([nodeId, SpiffeId.parse('spiffe://elsewhere.test/ns/a/sa/b')]);
  await provider.start(sink);
  t.teardown(() => provider.stop());
  // Timed inside the sink call that reports the error, not once the state arrives too.
  const firstErrorAt = await sink.until(() => sink.errors.length >= 1 && Date.now(), 'an error');
  await sink.until(() => sink.svidStates.length >= 1, 'a state');
  t.is(sink.errors[0]!.kind, 'issue');
  t.regex(sink.errors[0]!.message, /cannot issue spiffe:\/\/elsewhere\.test\/ns\/a\/sa\/b/);
  t.deepEqual(idsOf(sink.svidStates.at(-1)), [nodeId.toString()]);
  // Retried with backoff (first retry after 0.4-0.5 s), not in a tight loop.
  await sink.until(() => sink.errors.length >= 2, 'a retry');
  t.true(Date.now() - firstErrorAt >= 300, `retried after ${Date.now() - firstErrorAt} ms`);
});

test('devProviderOptions puts the CA under the state directory unless caDir is configured', (t) => {
  t.deepEqual(devProviderOptions({ ttl: 3_600_000 }, { trustDomain: TD, stateDir: '/var/lib/meshauth' }), {
    trustDomain: TD,
    caDir: '/var/lib/meshauth/dev-ca',
    ttlMs: 3_600_000,
    logger: undefined,
  });
  t.is(devProviderOptions({ ttl: 1, caDir: '/ca' }, { trustDomain: TD, stateDir: '/s' }).caDir, '/ca');
});

test('start() after stop() is refused', async (t) => {
  const provider = new DevProvider({ trustDomain: TD, caDir: join(await tempDir(t), 'ca'), ttlMs: 60_000 });
  await provider.stop();
  await t.throwsAsync(provider.start(newSink()), { message: /stopped/ });
});

test('when the CA has expired, renewal fails with a clear error and the held SVID is not withdrawn', async (t) => {
  const caDir = join(await tempDir(t), 'ca');
  // A CA that expires within a few seconds caps the leaves' lifetime, so renewal comes quickly.
  // Its clock starts before the provider does: 4 s leaves a loaded machine's start-up and first
  // issuance (well under a second) ample room before it.
  await (await DevCa.create({ trustDomain: TD, validityMs: 4_000 })).save(caDir);
  const provider = new DevProvider({ trustDomain: TD, caDir, ttlMs: 3_600_000 });
  const sink = newSink();
  provider.setWanted([nodeId]);
  await provider.start(sink);
  t.teardown(() => provider.stop());
  await sink.until(() => sink.svidStates.length > 0, 'the first SVID, issued before the CA expired');
  await sink.until(() => sink.errors.some((err) => /expired/.test(err.message)), 'a renewal failure', 15_000);
  t.true(sink.errors.every((err) => err.kind === 'issue'));
  t.regex(sink.errors.at(-1)!.message, /the dev CA in .* expired at/);
  t.deepEqual(idsOf(sink.svidStates.at(-1)), [nodeId.toString()], 'the last state still holds the SVID');
});
