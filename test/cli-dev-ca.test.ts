import test, { type ExecutionContext } from 'ava';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from './helpers/cli.js';
import { RecordingSink } from './helpers/provider-conformance.js';
import { FileProvider } from '../src/identity/providers/file.js';
import { DevCa } from '../src/identity/dev-ca.js';

const TD = 'cli.test';

async function tempDir(t: ExecutionContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-cli-dev-ca-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

// One CA made by `dev-ca init`, shared by the tests that only issue from it: each CLI run
// costs a Node start-up with tsx.
let sharedCaDir: string;
let sharedRoot: string;
test.before(async () => {
  sharedRoot = await mkdtemp(join(tmpdir(), 'meshauth-cli-dev-ca-shared-'));
  sharedCaDir = join(sharedRoot, 'ca');
  const result = await runCli(['dev-ca', 'init', '--trust-domain', TD, '--dir', sharedCaDir]);
  if (result.exitCode !== 0) throw new Error(`dev-ca init failed: ${result.stderr}`);
});
test.after.always(() => rm(sharedRoot, { recursive: true, force: true }));

/** A fresh output root and the shared CA. */
async function initialised(t: ExecutionContext): Promise<{ root: string; caDir: string }> {
  return { root: await tempDir(t), caDir: sharedCaDir };
}

const modeOf = async (path: string): Promise<number> => (await stat(path)).mode & 0o777;

/** No stack trace or internal error text reaches the user. */
function assertCleanError(t: ExecutionContext, stderr: string): void {
  t.notRegex(stderr, /\n\s+at /, 'no stack trace');
  t.true(stderr.trim().length > 0, 'an error message is printed');
}

test('init creates the CA (dir 0700, key 0600) and refuses to overwrite it without --force', async (t) => {
  const caDir = join(await tempDir(t), 'ca');
  const created = await runCli(['dev-ca', 'init', '--trust-domain', TD, '--dir', caDir]);
  t.is(created.exitCode, 0, created.stderr);
  t.regex(created.stdout, /created a dev CA for trust domain cli\.test/);
  t.is(await modeOf(caDir), 0o700);
  t.is(await modeOf(join(caDir, 'ca.key')), 0o600);
  const ca = await DevCa.load(caDir);
  t.is(ca.trustDomain, TD);
  const before = await readFile(join(caDir, 'ca.key'));

  const again = await runCli(['dev-ca', 'init', '--trust-domain', TD, '--dir', caDir]);
  t.is(again.exitCode, 1);
  t.regex(again.stderr, /a dev CA already exists in .* pass --force to replace it/);
  assertCleanError(t, again.stderr);
  t.true((await readFile(join(caDir, 'ca.key'))).equals(before), 'the existing key is untouched');

  const forced = await runCli(['dev-ca', 'init', '--trust-domain', TD, '--dir', caDir, '--force']);
  t.is(forced.exitCode, 0, forced.stderr);
  t.false((await readFile(join(caDir, 'ca.key'))).equals(before), '--force replaced the CA');
  t.is(await modeOf(join(caDir, 'ca.key')), 0o600);
  t.false(forced.stdout.includes('PRIVATE KEY'));
});

test('init rejects a malformed trust domain as a usage error', async (t) => {
  const root = await tempDir(t);
  const result = await runCli(['dev-ca', 'init', '--trust-domain', 'Bad_Domain:80', '--dir', join(root, 'ca')]);
  t.is(result.exitCode, 2);
  t.regex(result.stderr, /invalid --trust-domain/);
  assertCleanError(t, result.stderr);
  await t.throwsAsync(stat(join(root, 'ca')), { code: 'ENOENT' }, 'nothing was written');
});

for (const [keyType, asymmetricKeyType, detail] of [
  ['ec-p256', 'ec', 'prime256v1'],
  ['ec-p384', 'ec', 'secp384r1'],
  ['ed25519', 'ed25519', undefined],
  ['rsa-2048', 'rsa', 2048],
] as const) {
  test(`issue --key-type ${keyType} writes a matching chain, key (0600) and bundle`, async (t) => {
    const { root, caDir } = await initialised(t);
    const out = join(root, 'node-a');
    const id = `spiffe://${TD}/ns/default/sa/${keyType}`;
    const started = Date.now();
    const result = await runCli(['dev-ca', 'issue', '--dir', caDir, '--id', id, '--ttl', '2h', '--out', out, '--key-type', keyType]);
    t.is(result.exitCode, 0, result.stderr);
    const [printedId, printedNotAfter] = result.stdout.trim().split('\n');
    t.is(printedId, id);

    t.is(await modeOf(out), 0o700);
    t.is(await modeOf(join(out, 'svid.key')), 0o600);
    const leaf = new X509Certificate(await readFile(join(out, 'svid.pem')));
    const keyPem = await readFile(join(out, 'svid.key'), 'utf8');
    t.regex(keyPem, /^-----BEGIN PRIVATE KEY-----/, 'PKCS#8 PEM');
    const key = createPrivateKey(keyPem);
    t.true(leaf.checkPrivateKey(key));
    t.is(key.asymmetricKeyType, asymmetricKeyType);
    if (asymmetricKeyType === 'ec') t.is(key.asymmetricKeyDetails?.namedCurve, detail);
    if (asymmetricKeyType === 'rsa') t.is(key.asymmetricKeyDetails?.modulusLength, detail);
    t.is(leaf.subjectAltName, `URI:${id}`);
    const bundle = new X509Certificate(await readFile(join(out, 'bundle.pem')));
    t.true(leaf.verify(bundle.publicKey));
    t.true(bundle.raw.equals(new X509Certificate(await readFile(join(caDir, 'ca.pem'))).raw), 'bundle.pem is the CA certificate');
    const notAfter = Date.parse(leaf.validTo);
    t.is(printedNotAfter, `not after: ${new Date(notAfter).toISOString()}`);
    // 2 h from issuance, within the one-second precision of the certificate.
    t.true(Math.abs(notAfter - started - 2 * 3_600_000) < 30_000, `notAfter ${leaf.validTo}`);
    t.false(result.stdout.includes('PRIVATE KEY') || result.stderr.includes('PRIVATE KEY'));
  });
}

test('issue adds every --dns name as a DNS SAN and overwrites an earlier issue in --out', async (t) => {
  const { root, caDir } = await initialised(t);
  const out = join(root, 'out');
  const id = `spiffe://${TD}/ns/default/sa/web`;
  t.is((await runCli(['dev-ca', 'issue', '--dir', caDir, '--id', id, '--out', out])).exitCode, 0);
  const first = new X509Certificate(await readFile(join(out, 'svid.pem')));
  const result = await runCli(['dev-ca', 'issue', '--dir', caDir, '--id', id, '--out', out, '--dns', 'web.default.svc', '--dns', 'web.example']);
  t.is(result.exitCode, 0, result.stderr);
  const second = new X509Certificate(await readFile(join(out, 'svid.pem')));
  t.not(second.serialNumber, first.serialNumber);
  t.is(second.subjectAltName, `URI:${id}, DNS:web.default.svc, DNS:web.example`);
  t.true(second.checkPrivateKey(createPrivateKey(await readFile(join(out, 'svid.key')))));
});

test('issue reports bad input as usage errors (exit 2) and a missing CA as exit 1, without stack traces', async (t) => {
  const { root, caDir } = await initialised(t);
  const out = join(root, 'out');
  const base = ['dev-ca', 'issue', '--dir', caDir, '--out', out];
  const cases: [string[], number, RegExp][] = [
    [[...base, '--id', 'spiffe://other.test/ns/a/sa/b'], 2, /not in trust domain cli\.test/],
    [[...base, '--id', 'https://cli.test/x'], 2, /invalid --id/],
    [[...base, '--id', `spiffe://${TD}`], 2, /needs a path/],
    [[...base, '--id', `spiffe://${TD}/a`, '--ttl', 'soon'], 2, /invalid --ttl/],
    [[...base, '--id', `spiffe://${TD}/a`, '--key-type', 'dsa'], 2, /Allowed choices are ec-p256, ec-p384, ed25519, rsa-2048/],
    [[...base, '--id', `spiffe://${TD}/a`, '--dns', 'not a name'], 2, /invalid --dns/],
    [base, 2, /required option '--id/],
    [['dev-ca', 'issue', '--dir', join(root, 'none'), '--out', out, '--id', `spiffe://${TD}/a`], 1, /no dev CA in .*dev-ca init/],
  ];
  const results = await Promise.all(cases.map(([args]) => runCli(args)));
  for (const [index, [args, exitCode, message]] of cases.entries()) {
    const result = results[index]!;
    t.is(result.exitCode, exitCode, args.join(' '));
    t.regex(result.stderr, message);
    assertCleanError(t, result.stderr);
  }
  await t.throwsAsync(stat(out), { code: 'ENOENT' }, 'no failed issue wrote anything');
});

test('SVIDs issued for two nodes load through the file provider and verify against each other\'s bundle', async (t) => {
  const { root, caDir } = await initialised(t);
  const nodes = ['node-a', 'node-b'];
  for (const node of nodes) {
    const result = await runCli(['dev-ca', 'issue', '--dir', caDir, '--id', `spiffe://${TD}/meshauth/node/${node}`, '--out', join(root, node)]);
    t.is(result.exitCode, 0, result.stderr);
  }
  const loaded = await Promise.all(
    nodes.map(async (node) => {
      const dir = join(root, node);
      const provider = new FileProvider({
        svids: [{ certChain: join(dir, 'svid.pem'), privateKey: join(dir, 'svid.key'), bundle: join(dir, 'bundle.pem') }],
      });
      const sink = new RecordingSink();
      await provider.start(sink);
      await provider.stop();
      return sink;
    }),
  );
  const [a, b] = loaded;
  t.deepEqual(a!.errors, []);
  t.deepEqual(b!.errors, []);
  t.is(a!.svidStates[0]?.[0]?.claimedId, `spiffe://${TD}/meshauth/node/node-a`);
  const leafA = new X509Certificate(a!.svidStates[0]![0]!.chain[0]!);
  const leafB = new X509Certificate(b!.svidStates[0]![0]!.chain[0]!);
  const bundleA = new X509Certificate(a!.bundleStates[0]!.get(TD)![0]!);
  const bundleB = new X509Certificate(b!.bundleStates[0]!.get(TD)![0]!);
  t.true(leafB.verify(bundleA.publicKey), "node A's bundle verifies node B");
  t.true(leafA.verify(bundleB.publicKey), "node B's bundle verifies node A");
});
