// The transport modules' pure parts, no privileges needed: the node's WireGuard key file, key
// and CIDR validation, the `ip xfrm` lines and listing parsers, secret scrubbing, the 0600 key
// files handed to `wg`, and a positive control for the command-line scanner the privileged
// tests rely on.
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { execa } from 'execa';
import { DatapathError } from '../src/datapath/errors.js';
import { checkDisjointOwners, parseCidr, parseCidrs } from '../src/datapath/transport/cidrs.js';
import { NetnsExec, checkNetnsName, failedBatchLines, scrubSecrets, withSecretFile } from '../src/datapath/transport/exec.js';
import { WireGuardKeyPair, copyKey, isWireGuardKey } from '../src/datapath/transport/keys.js';
import {
  REQID_BASE,
  isMeshauthReqid,
  parseAllSpis,
  parsePolicies,
  parseStates,
  policyDeleteLine,
  policyUpdateLine,
  stateAddLine,
  stateDeleteLine,
} from '../src/datapath/transport/xfrm.js';
import { CmdlineScanner } from './helpers/secret-scanner.js';

async function tempDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-transport-unit-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('the WireGuard key pair is created once, 0600 in a 0700 directory, and matches `wg pubkey`', async (t) => {
  const stateDir = join(await tempDir(t), 'state');
  const created = await WireGuardKeyPair.loadOrCreate(stateDir);
  t.is((await stat(stateDir)).mode & 0o777, 0o700);
  t.is((await stat(join(stateDir, 'wireguard-key.pem'))).mode & 0o777, 0o600);
  t.deepEqual(await readdir(stateDir), ['wireguard-key.pem'], 'no temporary file left behind');
  t.true(isWireGuardKey(created.publicKey) && isWireGuardKey(created.revealPrivateKey()));

  const loaded = await WireGuardKeyPair.loadOrCreate(stateDir);
  t.is(loaded.publicKey, created.publicKey, 'the second start loads the same key');
  // `wg pubkey` reads the private key on stdin (never a command line).
  const { stdout } = await execa('wg', ['pubkey'], { input: `${created.revealPrivateKey()}\n` });
  t.is(stdout.trim(), created.publicKey, 'Node computes the public key as wg does');
});

test('concurrent first starts agree on one key', async (t) => {
  const stateDir = await tempDir(t);
  const pairs = await Promise.all([1, 2, 3, 4].map(() => WireGuardKeyPair.loadOrCreate(stateDir)));
  t.is(new Set(pairs.map((p) => p.publicKey)).size, 1);
});

test('a key file readable by others or holding garbage is refused', async (t) => {
  const stateDir = await tempDir(t);
  await WireGuardKeyPair.loadOrCreate(stateDir);
  const path = join(stateDir, 'wireguard-key.pem');
  await chmod(path, 0o644);
  const loose = await t.throwsAsync(WireGuardKeyPair.loadOrCreate(stateDir), { instanceOf: DatapathError });
  t.regex(loose.message, /mode 644; it must be 0600/);
  await chmod(path, 0o600);
  await writeFile(path, 'not a key');
  await t.throwsAsync(WireGuardKeyPair.loadOrCreate(stateDir), { instanceOf: DatapathError, message: /no readable private key/ });
});

test('the private key stays out of JSON and inspect output', async (t) => {
  const pair = await WireGuardKeyPair.loadOrCreate(await tempDir(t));
  const shown = JSON.stringify({ pair }) + inspect(pair) + String(inspect({ nested: pair }));
  t.false(shown.includes(pair.revealPrivateKey()));
  t.true(shown.includes(pair.publicKey));
});

test('keys are copied and checked for length; wrappers with reveal() are accepted', (t) => {
  const raw = randomBytes(20);
  const copy = copyKey(raw, 20, 'esp');
  raw.fill(0);
  t.false(copy.equals(raw), 'a private copy');
  t.deepEqual(copyKey({ reveal: () => copy }, 20, 'esp'), copy);
  t.throws(() => copyKey(randomBytes(16), 20, 'esp inKey'), { instanceOf: DatapathError, message: 'esp inKey: expected 20 key bytes, got 16' });
  t.throws(() => copyKey('secret' as unknown as Buffer, 20, 'psk'), { instanceOf: DatapathError, message: 'psk: expected key bytes' });
});

test('CIDRs are canonical and overlapping claims of different owners are refused', (t) => {
  t.is(parseCidr('10.2.3.4/16', 'x').text, '10.2.0.0/16');
  t.is(parseCidr('fd00:2::1/32', 'x').text, 'fd00:2:0:0:0:0:0:0/32');
  t.is(parseCidr('10.9.9.9', 'x').text, '10.9.9.9/32');
  t.deepEqual(parseCidrs(['10.1.0.0/16', '10.1.0.5/16'], 'x').length, 1, 'duplicates after canonicalisation collapse');
  t.throws(() => parseCidr('10.1.0.0/33', 'peer a'), { instanceOf: DatapathError, message: /^peer a: bad prefix length/ });
  t.throws(() => parseCidr('10.1.0.0/16\nAllowedIPs = 0.0.0.0/0', 'peer a'), { instanceOf: DatapathError });

  const cidrs = (...texts: string[]) => parseCidrs(texts, 'x');
  t.notThrows(() => checkDisjointOwners([{ owner: 'a', cidrs: cidrs('10.1.0.0/16', '10.1.0.0/24') }, { owner: 'b', cidrs: cidrs('10.2.0.0/16', 'fd00:1::/32') }], 'x'));
  t.throws(() => checkDisjointOwners([{ owner: 'a', cidrs: cidrs('10.0.0.0/8') }, { owner: 'b', cidrs: cidrs('10.200.1.0/24') }], 'allowed-ips'), {
    message: 'allowed-ips: 10.200.1.0/24 of b overlaps 10.0.0.0/8 of a',
  });
  // The overlap hides behind a wider CIDR of the same owner that sorts in between.
  t.throws(() => checkDisjointOwners([{ owner: 'a', cidrs: cidrs('10.0.0.0/16', '10.0.0.0/8') }, { owner: 'b', cidrs: cidrs('10.0.5.0/24') }], 'x'));
  t.throws(() => checkDisjointOwners([{ owner: 'a', cidrs: cidrs('fd00::/16') }, { owner: 'b', cidrs: cidrs('fd00:1::/32') }], 'x'));
});

test('ip xfrm lines: ESP rfc4106 with 128-bit ICV, ESN, lifetimes; policies bound by reqid', (t) => {
  const key = Buffer.from('00112233445566778899aabbccddeeff01020304', 'hex');
  const lifetime = { softSeconds: 10, hardSeconds: 20, softBytes: 1n, hardBytes: 2n, softPackets: 3n, hardPackets: 4n };
  t.is(
    stateAddLine({ src: '192.0.2.1', dst: '192.0.2.2', spi: 0x1234 }, REQID_BASE + 1, key, lifetime),
    'xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x00001234 reqid 1835073537 mode tunnel replay-window 128 flag esn af-unspec ' +
      'aead rfc4106(gcm(aes)) 0x00112233445566778899aabbccddeeff01020304 128 limit time-soft 10 limit time-hard 20 ' +
      'limit byte-soft 1 limit byte-hard 2 limit packet-soft 3 limit packet-hard 4',
  );
  t.is(stateDeleteLine({ src: '192.0.2.1', dst: '192.0.2.2', spi: 0xffffffff }), 'xfrm state delete src 192.0.2.1 dst 192.0.2.2 proto esp spi 0xffffffff');
  const policy = { src: '10.1.0.0/16', dst: '10.2.0.0/16', dir: 'out' as const, tmplSrc: '192.0.2.1', tmplDst: '192.0.2.2', reqid: REQID_BASE + 1 };
  t.is(
    policyUpdateLine(policy, 1000),
    'xfrm policy update src 10.1.0.0/16 dst 10.2.0.0/16 dir out priority 1000 tmpl src 192.0.2.1 dst 192.0.2.2 proto esp reqid 1835073537 mode tunnel',
  );
  t.is(policyDeleteLine(policy), 'xfrm policy delete src 10.1.0.0/16 dst 10.2.0.0/16 dir out');
  t.true(isMeshauthReqid(REQID_BASE) && isMeshauthReqid(REQID_BASE + 0xffff));
  t.false(isMeshauthReqid(REQID_BASE - 1) || isMeshauthReqid(REQID_BASE + 0x10000) || isMeshauthReqid(7));
});

// As iproute2 6.1 prints them (`ip xfrm state list nokeys`, `ip xfrm policy list`).
const STATE_LISTING = `src 192.168.250.1 dst 192.168.250.9
\tproto esp spi 0x00004242 reqid 7 mode tunnel
\treplay-window 0 
\taead rfc4106(gcm(aes)) <<Keys hidden>> 128
\tsel src 0.0.0.0/0 dst 0.0.0.0/0 
src 192.168.250.2 dst 192.168.250.1
\tproto esp spi 0x26d10206 reqid 1835073537 mode tunnel
\treplay-window 0 seq 0x00000000 flag af-unspec esn (0x10100000)
\taead rfc4106(gcm(aes)) <<Keys hidden>> 128
src 10.0.0.1 dst 10.0.0.2
\tproto comp spi 0x00000900 reqid 0 mode tunnel
`;

const POLICY_LISTING = `src fd00:2::/32 dst fd00:1::/32 
\tdir fwd priority 1000 ptype main 
\ttmpl src 192.168.250.2 dst 192.168.250.1
\t\tproto esp reqid 1835073537 mode tunnel
src 10.1.0.0/16 dst 10.2.0.0/16 
\tdir out priority 1000 ptype main 
\tmark 0x1/0xff 
\ttmpl src 192.168.250.1 dst 192.168.250.2
\t\tproto esp reqid 1835073537 mode tunnel
src 10.5.0.0/16 dst 10.6.0.0/16 proto tcp dport 80 
\tdir in priority 0 ptype main 
\ttmpl src 1.1.1.1 dst 2.2.2.2
\t\tproto esp reqid 7 mode tunnel
src 0.0.0.0/0 dst 0.0.0.0/0 
\tsocket in priority 0 ptype main 
`;

test('xfrm listings parse into states and policies; anything qualified is flagged', (t) => {
  t.deepEqual(parseStates(STATE_LISTING), [
    { src: '192.168.250.1', dst: '192.168.250.9', spi: 0x4242, reqid: 7 },
    { src: '192.168.250.2', dst: '192.168.250.1', spi: 0x26d10206, reqid: 1835073537 },
  ]);
  t.deepEqual([...parseAllSpis(STATE_LISTING)].sort(), [0x900, 0x4242, 0x26d10206].sort());
  t.deepEqual(parsePolicies(POLICY_LISTING), [
    { src: 'fd00:2::/32', dst: 'fd00:1::/32', dir: 'fwd', reqids: [1835073537], qualified: false },
    { src: '10.1.0.0/16', dst: '10.2.0.0/16', dir: 'out', reqids: [1835073537], qualified: true },
    { src: '10.5.0.0/16', dst: '10.6.0.0/16', dir: 'in', reqids: [7], qualified: true },
  ]);
});

test('tool output is scrubbed of key-shaped strings; failed batch lines are found', (t) => {
  const psk = randomBytes(32).toString('base64');
  const hex = `0x${randomBytes(20).toString('hex')}`;
  const scrubbed = scrubSecrets(`Line unrecognized: \`PresharedKey=${psk}'\nxfrm state add aead rfc4106(gcm(aes)) ${hex} 128`);
  t.false(scrubbed.includes(psk) || scrubbed.includes(hex.slice(2)));
  t.regex(scrubbed, /PresharedKey=\[redacted\]/);
  t.deepEqual(failedBatchLines('RTNETLINK answers: File exists\nCommand failed -:2\nNo such process\nCommand failed -:14\n'), [2, 14]);
  t.throws(() => checkNetnsName('../etc'), { instanceOf: DatapathError });
  t.throws(() => new NetnsExec('a/b'), { instanceOf: DatapathError });
});

test('a key file for wg is 0600 in a private directory and gone afterwards', async (t) => {
  const secret = randomBytes(32).toString('base64');
  let seenPath = '';
  const result = await withSecretFile(`${secret}\n`, async (path) => {
    seenPath = path;
    t.is((await stat(path)).mode & 0o777, 0o600);
    t.is((await stat(join(path, '..'))).mode & 0o777, 0o700);
    return readFile(path, 'utf8');
  });
  t.is(result, `${secret}\n`);
  await t.throwsAsync(stat(seenPath), { code: 'ENOENT' });
  await t.throwsAsync(withSecretFile('x', () => Promise.reject(new Error('tool failed'))), { message: 'tool failed' });
});

test('a command failure names the command, never the input', async (t) => {
  const secret = randomBytes(32).toString('base64');
  const err = await t.throwsAsync(new NetnsExec().run('ip', ['-batch', '-'], `link show dev ${secret}\n`), { instanceOf: DatapathError });
  t.regex(err.message, /^ip -batch - failed: /);
  t.false(err.message.includes(secret));
});

test('the command-line scanner sees a process that carries a secret (positive control)', async (t) => {
  const secret = randomBytes(32);
  const scanner = new CmdlineScanner([secret]);
  // A harmless process with the secret's base64 form as an argument, alive for a moment.
  await execa(process.execPath, ['-e', 'setTimeout(() => {}, 300)', secret.toString('base64')]);
  const report = await scanner.stop();
  t.true(report.scans > 0);
  t.true(report.hits.some((hit) => hit.where === 'cmdline' && hit.command.includes('setTimeout')), JSON.stringify(report.hits));
});

test('a tool that does not finish is killed and its run fails, naming the command', async (t) => {
  const started = performance.now();
  const err = await t.throwsAsync(new NetnsExec(undefined, 200).run('sleep', ['30']), { instanceOf: DatapathError });
  t.regex(err.message, /^sleep 30 did not finish within 200 ms and was killed$/);
  t.true(performance.now() - started < 25_000, 'killed long before sleep would have ended');
});
