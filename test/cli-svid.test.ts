import test, { type ExecutionContext } from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DevCa } from '../src/identity/dev-ca.js';
import { sniForIdentity } from '../src/handshake/sni.js';
import { KU, caSpec, forge, leafSpec, toPem } from './helpers/cert-forge.js';
import { runCli, type CliResult } from './helpers/cli.js';

const ID = 'spiffe://example.org/ns/prod/sa/web';
const OTHER_ID = 'spiffe://other.org/ns/x/sa/y';
const HOUR = 3_600_000;

let dir: string;
const file = (name: string) => join(dir, name);
/** When the SVIDs below were issued: they are valid for one hour from then. */
const issuedAt = new Date();

test.before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'meshauth-cli-svid-'));
  const ca = await DevCa.create({ trustDomain: 'example.org', now: issuedAt });
  const svid = await ca.issue({ id: ID, ttlMs: HOUR, now: issuedAt });
  const otherCa = await DevCa.create({ trustDomain: 'other.org', now: issuedAt });
  const otherSvid = await otherCa.issue({ id: OTHER_ID, ttlMs: HOUR, now: issuedAt });
  // A chain that is trusted but breaks one X509-SVID rule: key usage not critical.
  const root = await forge({ ...caSpec('example.org'), notBefore: new Date(issuedAt.getTime() - HOUR), notAfter: new Date(issuedAt.getTime() + HOUR) });
  const badLeaf = await forge({
    ...leafSpec(ID, root),
    notBefore: new Date(issuedAt.getTime() - HOUR),
    notAfter: new Date(issuedAt.getTime() + HOUR),
    keyUsage: { flags: KU.digitalSignature, critical: false },
  });
  await Promise.all([
    writeFile(file('chain.pem'), toPem(svid.chain)),
    writeFile(file('chain.der'), Buffer.concat(svid.chain)),
    writeFile(file('ca.pem'), ca.certificate.toString()),
    writeFile(file('other-chain.pem'), toPem(otherSvid.chain)),
    writeFile(file('other-ca.pem'), otherCa.certificate.toString()),
    writeFile(file('bad-chain.pem'), toPem([badLeaf.der])),
    writeFile(file('forge-root.pem'), toPem([root.der])),
    writeFile(file('garbage.pem'), 'this is not a certificate\n'),
    writeFile(file('broken.pem'), '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n'),
  ]);
});

test.after.always(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Exit code, and for failures: exactly one line on stderr and no stack trace. */
function assertOneLineFailure(t: ExecutionContext, result: CliResult, exitCode: number, pattern: RegExp) {
  t.is(result.exitCode, exitCode, result.stderr);
  t.is(result.stdout, '');
  t.regex(result.stderr, pattern);
  t.notRegex(result.stderr, /\n\s+at |\.ts:\d+/, 'no stack trace');
  t.is(result.stderr.trim().split('\n').length, 1, result.stderr);
}

test('verify: a valid DevCa SVID with a bare --bundle exits 0 and prints the SPIFFE ID', async (t) => {
  const result = await runCli(['svid', 'verify', '--chain', file('chain.pem'), '--bundle', file('ca.pem')]);
  t.is(result.exitCode, 0, result.stderr);
  t.is(result.stdout, ID);
  t.is(result.stderr, '');
});

test('verify: concatenated DER chain, trust-domain bundles, matching --id', async (t) => {
  const result = await runCli([
    'svid', 'verify',
    '--chain', file('chain.der'),
    '--bundle', `other.org=${file('other-ca.pem')}`,
    '--bundle', `example.org=${file('ca.pem')}`,
    '--id', ID,
  ]);
  t.is(result.exitCode, 0, result.stderr);
  t.is(result.stdout, ID);
});

test('verify: federation picks the bundle of the claimed trust domain', async (t) => {
  const bundles = ['--bundle', `example.org=${file('ca.pem')}`, '--bundle', `other.org=${file('other-ca.pem')}`];
  const other = await runCli(['svid', 'verify', '--chain', file('other-chain.pem'), ...bundles]);
  t.is(other.exitCode, 0, other.stderr);
  t.is(other.stdout, OTHER_ID);
  // The other.org SVID against example.org's CA filed under other.org's name: untrusted.
  const crossed = await runCli(['svid', 'verify', '--chain', file('other-chain.pem'), '--bundle', `other.org=${file('ca.pem')}`]);
  assertOneLineFailure(t, crossed, 1, /no_path_to_trust_anchor \(untrusted\)/);
});

test('verify: no bundle for the claimed trust domain exits 1', async (t) => {
  const result = await runCli(['svid', 'verify', '--chain', file('chain.pem'), '--bundle', `other.org=${file('other-ca.pem')}`]);
  assertOneLineFailure(t, result, 1, /^meshauth: invalid X509-SVID: no_bundle_for_trust_domain \(untrusted\): .*example\.org/);
});

test('verify: a different --id exits 1 with unexpected_id', async (t) => {
  const result = await runCli(['svid', 'verify', '--chain', file('chain.pem'), '--bundle', file('ca.pem'), '--id', 'spiffe://example.org/ns/prod/sa/db']);
  assertOneLineFailure(t, result, 1, /unexpected_id .*spiffe:\/\/example\.org\/ns\/prod\/sa\/db/);
});

test('verify: --at after expiry exits 1 with expired, --at inside the validity exits 0', async (t) => {
  const later = new Date(issuedAt.getTime() + 2 * HOUR).toISOString();
  const expired = await runCli(['svid', 'verify', '--chain', file('chain.pem'), '--bundle', file('ca.pem'), '--at', later]);
  assertOneLineFailure(t, expired, 1, /: expired \(expired\): leaf expired at /);
  const inside = new Date(issuedAt.getTime() + HOUR / 2).toISOString();
  const valid = await runCli(['svid', 'verify', '--chain', file('chain.pem'), '--bundle', file('ca.pem'), '--at', inside]);
  t.is(valid.exitCode, 0, valid.stderr);
});

test('verify: a trusted chain breaking an X509-SVID rule exits 1 naming the rule', async (t) => {
  const result = await runCli(['svid', 'verify', '--chain', file('bad-chain.pem'), '--bundle', file('forge-root.pem')]);
  assertOneLineFailure(t, result, 1, /leaf_key_usage_not_critical \(bad_certificate\): leaf: key usage/);
});

const usageErrors: [string, string[], RegExp][] = [
  ['a missing chain file', ['--chain', 'does-not-exist.pem', '--bundle', 'ca.pem'], /cannot read .*does-not-exist\.pem/],
  ['a chain file with no certificate', ['--chain', 'garbage.pem', '--bundle', 'ca.pem'], /cannot parse certificates in .*garbage\.pem/],
  ['a PEM block that is no certificate', ['--chain', 'chain.pem', '--bundle', 'broken.pem'], /cannot parse certificates in .*broken\.pem/],
  ['an invalid --id', ['--chain', 'chain.pem', '--bundle', 'ca.pem', '--id', 'spiffe://example.org/a/'], /invalid --id .*\[path_trailing_slash\]/],
  ['an invalid --at', ['--chain', 'chain.pem', '--bundle', 'ca.pem', '--at', 'yesterday-ish'], /invalid --at time/],
  ['an invalid trust domain prefix', ['--chain', 'chain.pem', '--bundle', 'Example.org=ca.pem'], /invalid trust domain in --bundle/],
];
for (const [title, args, pattern] of usageErrors) {
  test(`verify: ${title} is a usage error (exit 2)`, async (t) => {
    // File arguments are relative to the temp dir; rewrite them to absolute paths.
    const absolute = args.map((arg, i) => {
      const flag = args[i - 1];
      if (flag === '--chain') return file(arg);
      if (flag === '--bundle') return arg.includes('=') ? arg.replace(/=(.*)$/, (_m: string, f: string) => `=${file(f)}`) : file(arg);
      return arg;
    });
    const result = await runCli(['svid', 'verify', ...absolute]);
    assertOneLineFailure(t, result, 2, new RegExp(`^meshauth: .*${pattern.source}`));
  });
}

test('verify: a missing required option is a usage error (exit 2) with help', async (t) => {
  const result = await runCli(['svid', 'verify', '--chain', file('chain.pem')]);
  t.is(result.exitCode, 2);
  t.regex(result.stderr, /required option '--bundle/);
  t.notRegex(result.stderr, /\n\s+at /);
});

test('sni: prints the SNI of a SPIFFE ID', async (t) => {
  const result = await runCli(['svid', 'sni', ID]);
  t.is(result.exitCode, 0, result.stderr);
  t.is(result.stdout, sniForIdentity(ID));
  t.regex(result.stdout, /^[a-z2-7]{52}\.meshauth\.invalid$/);
});

test('sni: an invalid SPIFFE ID exits 2 naming the rule', async (t) => {
  const result = await runCli(['svid', 'sni', 'spiffe://example.org:443/web']);
  assertOneLineFailure(t, result, 2, /invalid SPIFFE ID .*\[port\]/);
});

for (const command of [['svid'], ['svid', 'verify'], ['svid', 'sni']]) {
  test(`${command.join(' ')} --help exits 0 with usage`, async (t) => {
    const result = await runCli([...command, '--help']);
    t.is(result.exitCode, 0, result.stderr);
    t.regex(result.stdout, new RegExp(`^Usage: meshauth ${command.join(' ')}`));
    if (command.length === 1) t.regex(result.stdout, /verify[\s\S]*sni/);
  });
}
