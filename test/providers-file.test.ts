import test, { type ExecutionContext } from 'ava';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { FileProvider, fileProviderOptions, type FileProviderOptions } from '../src/identity/providers/file.js';
import { DevCa } from '../src/identity/dev-ca.js';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import { fileOptionsSchema } from '../src/identity/providers/file-options.js';
import type { RawSvid } from '../src/identity/types.js';
import { RecordingSink, providerConformance } from './helpers/provider-conformance.js';

const TD = 'file.test';
const webId = `spiffe://${TD}/ns/default/sa/web`;
const dbId = `spiffe://${TD}/ns/default/sa/db`;
// A generous bound for a wait: how quickly a replacement is picked up (well under a second on an
// idle machine) is logged, not asserted, since machines differ 3-4x in speed.
const PICKUP_MS = 15_000;
// Tests of the directory watch switch the re-stat safety net off (in effect), so that only the
// watch can have seen the change.
const WATCH_ONLY = { pollIntervalMs: 3_600_000 };

const caPromise = DevCa.create({ trustDomain: TD });

interface SvidPem {
  chain: string;
  key: string;
  bundle: string;
  serial: string;
}

async function issuePem(id: string, ca?: DevCa): Promise<SvidPem> {
  const issuer = ca ?? (await caPromise);
  const raw = await issuer.issue({ id, ttlMs: 3_600_000 });
  return {
    chain: raw.chain.map((der) => new X509Certificate(der).toString()).join(''),
    key: createPrivateKey({ key: raw.key, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }) as string,
    bundle: issuer.certificate.toString(),
    serial: new X509Certificate(raw.chain[0]!).serialNumber,
  };
}

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-file-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Writes a file the way careful writers do: to a temporary name, then rename over the old one. */
async function writeAtomically(path: string, content: string, mode = 0o644): Promise<void> {
  const temporary = `${path}.tmp-${process.hrtime.bigint()}`;
  await writeFile(temporary, content, { mode });
  await rename(temporary, path);
}

/**
 * A directory maintained like kubelet's AtomicWriter (Secret/ConfigMap volumes, csi-driver-spiffe):
 * the files are symlinks through `..data`, which points at a timestamped directory; an update
 * writes a new timestamped directory and renames a fresh `..data_tmp` symlink over `..data`.
 */
class KubeletStyleDir {
  private generation = 0;
  private current?: string;
  constructor(readonly dir: string) {}

  async write(files: Record<string, string>): Promise<void> {
    const next = `..gen_${++this.generation}`;
    await mkdir(join(this.dir, next), { mode: 0o755 });
    for (const [name, content] of Object.entries(files)) {
      await writeFile(join(this.dir, next, name), content, { mode: name.endsWith('.key') ? 0o600 : 0o644 });
    }
    await symlink(next, join(this.dir, '..data_tmp'));
    await rename(join(this.dir, '..data_tmp'), join(this.dir, '..data'));
    for (const name of Object.keys(files)) {
      await symlink(join('..data', name), join(this.dir, name)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
    }
    if (this.current) await rm(join(this.dir, this.current), { recursive: true });
    this.current = next;
  }
}

/** A provider over one SVID in dir/svid.pem, dir/svid.key, dir/bundle.pem. */
function singleSvidOptions(dir: string, extra: Partial<FileProviderOptions> = {}): FileProviderOptions {
  return {
    svids: [{ certChain: join(dir, 'svid.pem'), privateKey: join(dir, 'svid.key'), bundle: join(dir, 'bundle.pem') }],
    ...extra,
  };
}

async function writeSvidFiles(dir: string, pem: SvidPem): Promise<void> {
  await writeAtomically(join(dir, 'svid.pem'), pem.chain);
  await writeAtomically(join(dir, 'svid.key'), pem.key, 0o600);
  await writeAtomically(join(dir, 'bundle.pem'), pem.bundle);
}

const serialOf = (state: RawSvid[] | undefined, index = 0): string | undefined =>
  state?.[index] ? new X509Certificate(state[index].chain[0]!).serialNumber : undefined;

async function started(t: ExecutionContext, options: FileProviderOptions): Promise<{ provider: FileProvider; sink: RecordingSink }> {
  const provider = new FileProvider(options);
  const sink = new RecordingSink();
  await provider.start(sink);
  t.teardown(() => provider.stop());
  return { provider, sink };
}

/** Fails unless `happened` becomes true within PICKUP_MS of now; logs how long it took. */
async function pickedUpInTime(t: ExecutionContext, sink: RecordingSink, happened: () => boolean, what: string): Promise<void> {
  const since = performance.now();
  await sink.until(happened, what, PICKUP_MS);
  t.log(`${what} after ${Math.round(performance.now() - since)} ms`);
}

// Two SVIDs in one kubelet-style volume; rotation swaps the `..data` symlink, as kubelet does.
providerConformance('file', async ({ logger }) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-file-conf-'));
  const volume = new KubeletStyleDir(dir);
  const writeAll = async (): Promise<void> => {
    const [web, db] = await Promise.all([issuePem(webId), issuePem(dbId)]);
    await volume.write({ 'web.pem': web.chain, 'web.key': web.key, 'db.pem': db.chain, 'db.key': db.key, 'ca.pem': web.bundle });
  };
  await writeAll();
  return {
    provider: new FileProvider({
      svids: [
        { certChain: join(dir, 'web.pem'), privateKey: join(dir, 'web.key'), bundle: join(dir, 'ca.pem') },
        { certChain: join(dir, 'db.pem'), privateKey: join(dir, 'db.key') },
      ],
      logger,
    }),
    wanted: [SpiffeId.parse(webId), SpiffeId.parse(dbId)],
    rotate: writeAll,
    close: () => rm(dir, { recursive: true, force: true }),
  };
});

test('the first state is pushed before start() resolves, with the bundle under the trust domain of the leaf', async (t) => {
  const dir = await tempDir(t);
  const pem = await issuePem(webId);
  await writeSvidFiles(dir, pem);
  const { sink } = await started(t, singleSvidOptions(dir));
  t.is(sink.svidStates.length, 1);
  t.is(serialOf(sink.svidStates[0]), pem.serial);
  t.is(sink.svidStates[0]![0]!.claimedId, webId);
  t.deepEqual([...sink.bundleStates[0]!.keys()], [TD]);
  t.true(sink.bundleStates[0]!.get(TD)![0]!.equals((await caPromise).certificate.raw));
});

test('picks up a file replaced by atomic rename', async (t) => {
  const dir = await tempDir(t);
  await writeSvidFiles(dir, await issuePem(webId));
  const { sink } = await started(t, singleSvidOptions(dir, WATCH_ONLY));
  const next = await issuePem(webId);
  await writeSvidFiles(dir, next);
  await pickedUpInTime(t, sink, () => serialOf(sink.svidStates.at(-1)) === next.serial, 'renamed files picked up');
  t.deepEqual(sink.errors, []);
});

test('picks up a kubelet-style `..data` symlink swap', async (t) => {
  const dir = await tempDir(t);
  const volume = new KubeletStyleDir(dir);
  const first = await issuePem(webId);
  await volume.write({ 'tls.crt': first.chain, 'tls.key': first.key, 'ca.crt': first.bundle });
  const { sink } = await started(t, {
    svids: [{ certChain: join(dir, 'tls.crt'), privateKey: join(dir, 'tls.key'), bundle: join(dir, 'ca.crt') }],
    ...WATCH_ONLY,
  });
  t.is(serialOf(sink.svidStates.at(-1)), first.serial);

  const next = await issuePem(webId);
  await volume.write({ 'tls.crt': next.chain, 'tls.key': next.key, 'ca.crt': next.bundle });
  await pickedUpInTime(t, sink, () => serialOf(sink.svidStates.at(-1)) === next.serial, 'symlink swap picked up');
  t.deepEqual(sink.errors, []);
});

test('the periodic re-stat catches a change fs.watch cannot see (a symlink into another directory)', async (t) => {
  const root = await tempDir(t);
  await mkdir(join(root, 'watched'));
  await mkdir(join(root, 'elsewhere'));
  await writeSvidFiles(join(root, 'elsewhere'), await issuePem(webId));
  for (const name of ['svid.pem', 'svid.key', 'bundle.pem']) {
    await symlink(join(root, 'elsewhere', name), join(root, 'watched', name));
  }
  const { sink } = await started(t, singleSvidOptions(join(root, 'watched')));
  const next = await issuePem(webId);
  await writeSvidFiles(join(root, 'elsewhere'), next);
  await pickedUpInTime(t, sink, () => serialOf(sink.svidStates.at(-1)) === next.serial, 'change behind a symlink picked up');
  t.deepEqual(sink.errors, []);
});

test('a writer that replaces the certificate and, a moment later, its key causes no error report', async (t) => {
  const dir = await tempDir(t);
  await writeSvidFiles(dir, await issuePem(webId));
  const { sink } = await started(t, singleSvidOptions(dir, WATCH_ONLY));
  const next = await issuePem(webId);
  await writeAtomically(join(dir, 'svid.pem'), next.chain);
  // Long enough for the provider to read the new certificate with the old key in between.
  await new Promise((resolve) => setTimeout(resolve, 300));
  await writeAtomically(join(dir, 'svid.key'), next.key, 0o600);
  await pickedUpInTime(t, sink, () => serialOf(sink.svidStates.at(-1)) === next.serial, 'the pair picked up');
  t.deepEqual(sink.errors, [], 'a replacement in progress is not an error');
});

test('a half-written certificate is reported as malformed and not pushed; the completed file is', async (t) => {
  const dir = await tempDir(t);
  const first = await issuePem(webId);
  await writeSvidFiles(dir, first);
  const { sink } = await started(t, singleSvidOptions(dir, WATCH_ONLY));
  const next = await issuePem(webId);
  // In place, not atomically: a writer interrupted half-way through the second certificate of
  // a chain. Taking the complete leaf alone would silently drop the intermediate.
  const intermediate = (await caPromise).certificate.toString();
  await writeFile(join(dir, 'svid.pem'), next.chain + intermediate.slice(0, intermediate.length / 2));
  await sink.until(() => sink.errors.some((err) => /svid\.pem ends inside a certificate/.test(err.message)), 'an error for the half-written file', PICKUP_MS);
  t.true(sink.errors.every((err) => err.kind === 'malformed'));
  t.is(sink.svidStates.length, 1, 'no state was pushed for the broken file');

  await writeFile(join(dir, 'svid.key'), next.key, { mode: 0o600 });
  await writeFile(join(dir, 'svid.pem'), next.chain);
  await pickedUpInTime(t, sink, () => serialOf(sink.svidStates.at(-1)) === next.serial, 'completed file picked up');
  t.true(sink.svidStates.every((state) => state.length === 1));
});

test('a certificate whose key has not been replaced yet is not pushed', async (t) => {
  const dir = await tempDir(t);
  await writeSvidFiles(dir, await issuePem(webId));
  const { sink } = await started(t, singleSvidOptions(dir, WATCH_ONLY));
  const next = await issuePem(webId);
  await writeAtomically(join(dir, 'svid.pem'), next.chain);
  await sink.until(() => sink.errors.length > 0, 'an error for the mismatched pair', PICKUP_MS);
  t.is(sink.errors[0]!.kind, 'malformed');
  t.regex(sink.errors[0]!.message, /does not belong to the leaf/);
  t.is(sink.svidStates.length, 1);
  await writeAtomically(join(dir, 'svid.key'), next.key, 0o600);
  await pickedUpInTime(t, sink, () => serialOf(sink.svidStates.at(-1)) === next.serial, 'the matching key picked up');
});

test('a deleted file is reported once as an io error, the last good state stays, and a restored file is picked up', async (t) => {
  const dir = await tempDir(t);
  await writeSvidFiles(dir, await issuePem(webId));
  const { sink } = await started(t, singleSvidOptions(dir, WATCH_ONLY));
  await rm(join(dir, 'svid.key'));
  await sink.until(() => sink.errors.length > 0, 'an error for the deleted file', PICKUP_MS);
  t.is(sink.errors[0]!.kind, 'io');
  t.regex(sink.errors[0]!.message, /cannot read .*svid\.key: ENOENT/);
  // Unrelated activity in the directory does not repeat the same report.
  for (let i = 0; i < 3; i++) await writeFile(join(dir, `unrelated-${i}`), 'x');
  await new Promise((resolve) => setTimeout(resolve, 700));
  t.is(sink.errors.length, 1);
  t.is(sink.svidStates.length, 1, 'nothing was withdrawn');

  const next = await issuePem(webId);
  await writeSvidFiles(dir, next);
  await pickedUpInTime(t, sink, () => serialOf(sink.svidStates.at(-1)) === next.serial, 'restored files picked up');
});

test('garbage instead of PEM is reported as malformed; nothing is pushed until the files are good', async (t) => {
  const dir = await tempDir(t);
  await writeFile(join(dir, 'svid.pem'), 'not a certificate\n');
  await writeFile(join(dir, 'svid.key'), '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n', { mode: 0o600 });
  await writeFile(join(dir, 'bundle.pem'), (await caPromise).certificate.toString());
  const { sink } = await started(t, singleSvidOptions(dir, WATCH_ONLY));
  t.is(sink.errors.length, 1);
  t.is(sink.errors[0]!.kind, 'malformed');
  t.regex(sink.errors[0]!.message, /svid\.pem holds no PEM certificate/);
  t.is(sink.svidStates.length, 0);

  const pem = await issuePem(webId);
  await writeAtomically(join(dir, 'svid.pem'), pem.chain);
  await sink.until(() => sink.errors.length > 1, 'the key file reported next', PICKUP_MS);
  t.regex(sink.errors[1]!.message, /svid\.key holds no readable private key/);
  t.is(sink.svidStates.length, 0);
  await writeAtomically(join(dir, 'svid.key'), pem.key, 0o600);
  await pickedUpInTime(t, sink, () => serialOf(sink.svidStates.at(-1)) === pem.serial, 'good files picked up');
});

test('a directory that does not exist yet is reported, then watched once it appears', async (t) => {
  const dir = join(await tempDir(t), 'later');
  const { sink } = await started(t, singleSvidOptions(dir));
  t.is(sink.errors[0]?.kind, 'io');
  await mkdir(dir);
  const pem = await issuePem(webId);
  await writeSvidFiles(dir, pem);
  await sink.until(() => serialOf(sink.svidStates.at(-1)) === pem.serial, 'files in the new directory', 2 * PICKUP_MS);
  // Now the directory is watched: a rename is picked up as quickly as anywhere else.
  const next = await issuePem(webId);
  await writeSvidFiles(dir, next);
  await pickedUpInTime(t, sink, () => serialOf(sink.svidStates.at(-1)) === next.serial, 'rename in the new directory picked up');
});

test('warns, without the key, when the key file is readable by others', async (t) => {
  const dir = await tempDir(t);
  const pem = await issuePem(webId);
  await writeSvidFiles(dir, pem);
  await chmod(join(dir, 'svid.key'), 0o644);
  const lines: string[] = [];
  const logger = pino({ level: 'trace' }, { write: (line: string) => void lines.push(line) });
  const { sink } = await started(t, singleSvidOptions(dir, { logger }));
  t.is(sink.svidStates.length, 1, 'a wide mode is a warning, not a failure');
  const warnings = lines.map((line) => JSON.parse(line) as { level: number; msg: string; path?: string; mode?: string }).filter((entry) => entry.level === 40);
  t.is(warnings.length, 1);
  t.is(warnings[0]!.path, join(dir, 'svid.key'));
  t.is(warnings[0]!.mode, '0644');
  const keyBody = pem.key.split('\n')[1]!;
  t.false(lines.join('').includes(keyBody));

  lines.length = 0;
  await chmod(join(dir, 'svid.key'), 0o600);
  const second = await started(t, singleSvidOptions(dir, { logger }));
  t.is(second.sink.svidStates.length, 1);
  t.false(lines.some((line) => (JSON.parse(line) as { level: number }).level >= 40), 'a 0600 key file is not warned about');
});

test('federated bundles are delivered next to the SVID bundle, and several SVIDs share one bundle entry', async (t) => {
  const dir = await tempDir(t);
  const web = await issuePem(webId);
  const db = await issuePem(dbId);
  const partner = await DevCa.create({ trustDomain: 'partner.test' });
  await writeFile(join(dir, 'web.pem'), web.chain);
  await writeFile(join(dir, 'web.key'), web.key, { mode: 0o600 });
  await writeFile(join(dir, 'db.pem'), db.chain);
  await writeFile(join(dir, 'db.key'), db.key, { mode: 0o600 });
  await writeFile(join(dir, 'ca.pem'), web.bundle);
  await writeFile(join(dir, 'partner.pem'), partner.certificate.toString());
  const options = fileProviderOptions(
    fileOptionsSchema.parse({
      svids: [
        { certChain: join(dir, 'web.pem'), privateKey: join(dir, 'web.key'), bundle: join(dir, 'ca.pem') },
        { certChain: join(dir, 'db.pem'), privateKey: join(dir, 'db.key'), bundle: join(dir, 'ca.pem') },
      ],
      bundles: { 'partner.test': join(dir, 'partner.pem') },
    }),
  );
  const { sink } = await started(t, options);
  t.deepEqual(sink.svidStates[0]!.map((svid) => svid.claimedId), [webId, dbId]);
  const bundles = sink.bundleStates.at(-1)!;
  t.deepEqual([...bundles.keys()].sort(), ['file.test', 'partner.test']);
  t.is(bundles.get(TD)!.length, 1, 'the shared CA is listed once');
  t.true(bundles.get('partner.test')![0]!.equals(partner.certificate.raw));

  // A federated bundle that breaks keeps its last good content and is reported.
  await writeAtomically(join(dir, 'partner.pem'), 'garbage');
  await sink.until(() => sink.errors.length > 0, 'an error for the broken federated bundle', PICKUP_MS);
  t.is(sink.errors[0]!.kind, 'malformed');
  t.is(sink.bundleStates.length, 1);
});

test('stop() closes the watchers: later replacements reach nobody', async (t) => {
  const dir = await tempDir(t);
  await writeSvidFiles(dir, await issuePem(webId));
  const { provider, sink } = await started(t, singleSvidOptions(dir));
  await provider.stop();
  await writeSvidFiles(dir, await issuePem(webId));
  await new Promise((resolve) => setTimeout(resolve, 800));
  t.is(sink.calls, 2);
});
