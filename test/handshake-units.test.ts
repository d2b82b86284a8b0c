// The handshake layer's small parts on their own: frames, admission, the validation cache,
// failure classification, secret handling.
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, Writable } from 'node:stream';
import { pino } from 'pino';
import { TrustBundleSet } from '../src/identity/bundle-set.js';
import { HandshakeFailure, classifySocketError } from '../src/handshake/failure.js';
import { acceptedPeerFrame, checkedOwnFrame, decodeVerdict, encodeVerdict, nodeFrameSchema, readFrame } from '../src/handshake/frames.js';
import { IpsecAdapter } from '../src/datapath/transport/ipsec-adapter.js';
import { NoTransport, assembleNodeFrame, type Transport } from '../src/datapath/transport/transport.js';
import { WireGuardAdapter } from '../src/datapath/transport/wireguard-adapter.js';
import { MIN_SPI } from '../src/datapath/transport/ipsec-peer.js';
import { NetnsExec } from '../src/datapath/transport/exec.js';
import { WireGuardKeyPair } from '../src/datapath/transport/keys.js';
import { WireGuardTransport } from '../src/datapath/transport/wireguard.js';
import { silentLogger } from '../src/util/logger.js';
import { SecretBytes } from '../src/handshake/key-material.js';
import { PeerValidator } from '../src/handshake/peer-validator.js';
import { SourceAdmission, normalizeAddress } from '../src/handshake/source-admission.js';
import { defaultNodeIdentityScheme } from '../src/handshake/node-identity.js';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import { StaticSvids, TestCa, nodeIdOf, unvalidatedSvid, workloadId } from './helpers/handshake-fixtures.js';
import { LocalIdentities } from '../src/handshake/local-identities.js';
import { sniForIdentity } from '../src/handshake/sni.js';
import type { TLSSocket } from 'node:tls';
import type { X509Certificate } from 'node:crypto';

test('frames round-trip and carry a 2-byte big-endian length', (t) => {
  const frame = encodeVerdict({ verdict: 'reject', reason: 'untrusted' });
  t.is(frame.readUInt16BE(0), frame.length - 2);
  t.deepEqual(decodeVerdict(frame.subarray(2)), { verdict: 'reject', reason: 'untrusted' });
  const node = { nodeName: 'n1', podCidrs: ['10.0.0.0/24'], wireguard: { publicKey: Buffer.alloc(32, 1).toString('base64'), endpoint: '[fd00::1]:51820' } };
  t.deepEqual(decodeVerdict(encodeVerdict({ verdict: 'accept', node }).subarray(2)), { verdict: 'accept', node });
  const v4 = { ...node, wireguard: { ...node.wireguard, endpoint: '192.0.2.7:51820' } };
  t.deepEqual(decodeVerdict(encodeVerdict({ verdict: 'accept', node: v4 }).subarray(2)), { verdict: 'accept', node: v4 });
});

test('frames outside the schema are protocol failures', (t) => {
  const bad = [
    'not json',
    '{"v":2,"verdict":"accept"}',
    '{"v":1,"verdict":"maybe"}',
    '{"v":1,"verdict":"reject","reason":"because"}',
    '{"v":1,"verdict":"accept","extra":1}',
    '{"v":1,"verdict":"accept","node":{"nodeName":"Bad_Name","podCidrs":[]}}',
    '{"v":1,"verdict":"accept","node":{"nodeName":"n","podCidrs":["10.0.0.0/33"]}}',
    '{"v":1,"verdict":"accept","node":{"nodeName":"n","podCidrs":[],"ipsecSpis":[255]}}',
    `{"v":1,"verdict":"accept","node":{"nodeName":"n","podCidrs":[],"wireguard":{"publicKey":"${Buffer.alloc(31).toString('base64')}"}}}`,
    // A WireGuard endpoint must be an IP literal: a name would be resolved on the programming queue.
    ...['node-b.example:51820', 'localhost:51820', '10.0.0.300:51820', '[fd00::1::2]:51820', '10.0.0.1:65536', '10.0.0.1'].map(
      (endpoint) =>
        `{"v":1,"verdict":"accept","node":{"nodeName":"n","podCidrs":[],"wireguard":{"publicKey":"${Buffer.alloc(32, 1).toString('base64')}","endpoint":"${endpoint}"}}}`,
    ),
    `{"v":1,"verdict":"accept","node":{"nodeName":"n","podCidrs":${JSON.stringify(Array.from({ length: 17 }, (_, i) => `10.${i}.0.0/16`))}}}`,
  ];
  for (const text of bad) {
    const err = t.throws(() => decodeVerdict(Buffer.from(text)), { instanceOf: HandshakeFailure }, text);
    t.is(err?.failureClass, 'protocol');
  }
});

test('a peer frame must be a node description exactly for the node kind, naming the node expected', (t) => {
  const node = { nodeName: 'n1', podCidrs: [] };
  t.is(acceptedPeerFrame('pair', { verdict: 'accept' }, 'n1', 'peer'), undefined);
  t.deepEqual(acceptedPeerFrame('node', { verdict: 'accept', node }, 'n1', 'peer'), node);
  t.is(t.throws(() => acceptedPeerFrame('node', { verdict: 'accept', node }, 'n2', 'peer'), { instanceOf: HandshakeFailure })?.failureClass, 'unauthorized');
  const failureOf = (fn: () => unknown) => t.throws(fn, { instanceOf: HandshakeFailure });
  t.is(failureOf(() => acceptedPeerFrame('node', { verdict: 'accept' }, 'n1', 'peer'))?.failureClass, 'protocol');
  t.is(failureOf(() => acceptedPeerFrame('pair', { verdict: 'accept', node }, 'n1', 'peer'))?.failureClass, 'protocol');
  const rejected = failureOf(() => acceptedPeerFrame('pair', { verdict: 'reject', reason: 'expired' }, 'n1', 'peer'));
  t.is(rejected?.failureClass, 'expired');
  t.true(rejected?.peerReported);
  t.is(failureOf(() => checkedOwnFrame(() => node, 'n2'))?.failureClass, 'protocol');
  const unavailable = () => {
    throw new Error('no WireGuard key yet');
  };
  t.is(failureOf(() => checkedOwnFrame(unavailable, 'n1'))?.failureClass, 'protocol');
});

test('readFrame waits for a frame split across reads and refuses bad framing', async (t) => {
  const frame = encodeVerdict({ verdict: 'accept' });
  const split = new PassThrough();
  const reading = readFrame(split);
  split.write(frame.subarray(0, 1));
  split.write(frame.subarray(1, 7));
  split.write(frame.subarray(7));
  t.deepEqual(decodeVerdict(await reading), { verdict: 'accept' });

  const cases: [string, Buffer[], boolean][] = [
    ['trailing data', [Buffer.concat([frame, Buffer.from('x')])], false],
    ['zero length', [Buffer.from([0, 0])], false],
    ['over the cap', [Buffer.from([0x20, 0x01])], false],
    ['closed early', [frame.subarray(0, 5)], true],
  ];
  for (const [name, chunks, end] of cases) {
    const stream = new PassThrough();
    const pending = readFrame(stream);
    for (const chunk of chunks) stream.write(chunk);
    if (end) stream.end();
    const err = await t.throwsAsync(pending, { instanceOf: HandshakeFailure }, name);
    t.is(err?.failureClass, 'protocol', name);
  }
});

test('the node frame schema accepts DNS-subdomain node names, dual-stack pod CIDRs and both ends of the SPI range', (t) => {
  t.true(nodeFrameSchema.safeParse({ nodeName: 'ip-10-0-0-1.ec2.internal', podCidrs: ['10.244.0.0/24', 'fd00:10:244::/64'], ipsecSpis: [256, 0xffffffff] }).success);
});

/** Replaces object[key] until the end of the test. */
function stub<T extends object, K extends keyof T>(t: ExecutionContext, object: T, key: K, value: T[K]): void {
  const original = object[key];
  object[key] = value;
  t.teardown(() => {
    object[key] = original;
  });
}

test('the frames agents build with each transport pass the encoder, the decoder and both sides\' checks', async (t) => {
  // No kernel here, so the transports' kernel side is stood in for: an `ip` that lists no XFRM
  // state, and a WireGuard interface reduced to its key pair and port. Every value in the frames
  // comes from the real code: the node's key file, the SPI allocator, the adapters' contributions
  // and the agent's frame assembly.
  stub(t, NetnsExec.prototype, 'run', function (command: string, args: readonly string[]): Promise<string> {
    if (command === 'ip' && args[0] === 'xfrm' && args[2] === 'list') return Promise.resolve('');
    return Promise.reject(new Error(`no kernel in this test for: ${command} ${args.join(' ')}`));
  });
  stub(t, WireGuardTransport, 'open', async (options) => {
    const keys = await WireGuardKeyPair.loadOrCreate(options.stateDir);
    return { publicKey: keys.publicKey, listenPort: options.listenPort } as WireGuardTransport;
  });
  const stateDir = await mkdtemp(join(tmpdir(), 'meshauth-frames-'));
  t.teardown(() => rm(stateDir, { recursive: true, force: true }));
  const nodeKey = (await WireGuardKeyPair.loadOrCreate(stateDir)).publicKey;
  const logger = silentLogger();
  const podCidrs = ['10.244.1.0/24', 'fd00:10:244:1::/64'];

  for (const [address, endpoint] of [
    ['10.0.0.1', '10.0.0.1:51820'],
    ['fd00::1', '[fd00::1]:51820'],
  ] as const) {
    const wireguard = new WireGuardAdapter({ stateDir, listenPort: 51820, logger }, () => address);
    const ipsec = new IpsecAdapter({ logger }, () => ({ address, podCidrs }), logger);
    t.teardown(() => ipsec.close());
    await wireguard.start();
    await ipsec.start();
    const transports: Transport[] = [wireguard, ipsec, new NoTransport()];
    for (const transport of transports) {
      const what = `${transport.kind} on ${address}`;
      const frame = assembleNodeFrame('node-a', podCidrs, transport, 'node-b');
      // The sender's check, the wire (split reads included), the receiver's schema and node check.
      const sent = encodeVerdict({ verdict: 'accept', node: checkedOwnFrame(() => frame, 'node-a') });
      const wire = new PassThrough();
      const reading = readFrame(wire);
      wire.write(sent.subarray(0, 3));
      wire.end(sent.subarray(3));
      t.deepEqual(acceptedPeerFrame('node', decodeVerdict(await reading), 'node-a', 'initiator'), frame, what);
      if (transport === wireguard) t.deepEqual(frame.wireguard, { publicKey: nodeKey, endpoint }, what);
      if (transport === ipsec) t.true(frame.ipsecSpis?.length === 1 && frame.ipsecSpis.every((spi) => spi >= MIN_SPI), what);
    }
  }
});

test('node identities map to node names and back, for the local trust domain only', (t) => {
  const scheme = defaultNodeIdentityScheme('a.test');
  t.is(scheme.idFor('n1').toString(), 'spiffe://a.test/meshauth/node/n1');
  t.is(scheme.nodeNameOf(SpiffeId.parse('spiffe://a.test/meshauth/node/n1')), 'n1');
  t.is(scheme.nodeNameOf(SpiffeId.parse('spiffe://b.test/meshauth/node/n1')), undefined);
  t.is(scheme.nodeNameOf(SpiffeId.parse('spiffe://a.test/meshauth/node/n1/x')), undefined);
  t.is(scheme.nodeNameOf(SpiffeId.parse('spiffe://a.test/ns/default/sa/n1')), undefined);
});

test('socket errors are classified', (t) => {
  const err = (code: string, message = code) => Object.assign(new Error(message), { code });
  t.is(classifySocketError(err('ECONNREFUSED'), false).failureClass, 'refused');
  t.is(classifySocketError(err('ECONNRESET'), false).failureClass, 'refused');
  t.is(classifySocketError(err('ECONNRESET'), true).failureClass, 'protocol');
  t.is(classifySocketError(err('ERR_TLS_HANDSHAKE_TIMEOUT'), false).failureClass, 'timeout');
  t.is(classifySocketError(err('ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE'), false).failureClass, 'unknown_identity');
  t.is(classifySocketError(err('ERR_SSL_SSL/TLS_ALERT_HANDSHAKE_FAILURE'), false).failureClass, 'unknown_identity'); // OpenSSL 3.5 spelling
  t.is(classifySocketError(err('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION'), false).failureClass, 'protocol');
  t.is(classifySocketError(new Error('Client network socket disconnected before secure TLS connection was established'), false).failureClass, 'refused');
  const failure = new HandshakeFailure('expired', 'x');
  t.is(classifySocketError(failure, true), failure);
});

test('source admission: a token bucket per source plus a cap on open connections', (t) => {
  let now = 0;
  const roomy = { ratePerSecond: 1000, burst: 1000, maxOpenPerSource: 1000, maxOpen: 1000 };
  const admission = new SourceAdmission({ peers: { ratePerSecond: 2, burst: 3, maxOpenPerSource: 10, maxOpen: 100 }, others: roomy, now: () => now });
  const peer = (node: string) => ({ kind: 'peer' as const, node });
  t.deepEqual([1, 2, 3, 4].map(() => admission.admit(peer('a'))), ['admit', 'admit', 'admit', 'rate']);
  t.is(admission.admit(peer('b')), 'admit'); // other sources have their own bucket
  now += 500; // one token back
  t.is(admission.admit(peer('a')), 'admit');
  t.is(admission.admit(peer('a')), 'rate');
  now += 10_000; // refills to the burst, not beyond
  t.deepEqual([1, 2, 3, 4].map(() => admission.admit(peer('a'))), ['admit', 'admit', 'admit', 'rate']);

  const capped = new SourceAdmission({ peers: { ...roomy, maxOpenPerSource: 2 }, others: roomy });
  t.deepEqual([1, 2, 3].map(() => capped.admit(peer('h'))), ['admit', 'admit', 'per_source']);
  capped.release(peer('h'));
  t.is(capped.admit(peer('h')), 'admit');
  t.is(normalizeAddress('::ffff:10.1.2.3'), '10.1.2.3');
  t.is(normalizeAddress('fd00::1'), 'fd00::1');
});

test('source admission: peers and sources that are no node\'s have budgets of their own', (t) => {
  const roomy = { ratePerSecond: 1000, burst: 1000, maxOpenPerSource: 1000, maxOpen: 1000 };
  const admission = new SourceAdmission({ peers: { ...roomy, maxOpen: 2 }, others: { ...roomy, maxOpenPerSource: 1, maxOpen: 2 } });
  const other = (address: string) => ({ kind: 'other' as const, address });
  t.deepEqual([other('10.0.0.1'), other('10.0.0.1'), other('10.0.0.2'), other('10.0.0.3')].map((source) => admission.admit(source)), ['admit', 'per_source', 'admit', 'max_open']);
  // The other sources' slots are full; the peers' are untouched.
  t.deepEqual(['a', 'b', 'c'].map((node) => admission.admit({ kind: 'peer', node })), ['admit', 'admit', 'max_open']);
  // A node named like an address is not that address.
  admission.release(other('10.0.0.1'));
  t.is(admission.admit({ kind: 'peer', node: '10.0.0.1' }), 'max_open');
  t.is(admission.admit(other('10.0.0.4')), 'admit');
  // Releasing what was never admitted changes nothing.
  admission.release(other('10.9.9.9'));
  t.is(admission.admit(other('10.0.0.5')), 'max_open');
});

/** A bundle set that counts look-ups: a cache hit does no look-up at all. */
class CountingBundles extends TrustBundleSet {
  lookups = 0;
  override get(trustDomain: string) {
    this.lookups++;
    return super.get(trustDomain);
  }
}

test('the validation cache serves repeats, drops everything on a bundle change, and never outlives the chain', async (t) => {
  const ca = await TestCa.create();
  const id = workloadId('web');
  const leaf = await ca.leaf(id);
  const bundles = new CountingBundles();
  bundles.replace(new Map([['a.test', ca.bundle()]]));
  let now = new Date();
  const validator = new PeerValidator({ bundles, clockSkewMs: 0, maxChainDepth: 5, now: () => now });
  t.teardown(() => validator.close());

  validator.validate([leaf.cert], 'peer', id);
  t.is(bundles.lookups, 1);
  validator.validate([leaf.cert], 'peer', id);
  validator.validate([leaf.cert], 'peer');
  t.is(bundles.lookups, 1);
  // The expected ID is checked on every use, cached or not.
  const mismatch = t.throws(() => validator.validate([leaf.cert], 'peer', workloadId('db')), { instanceOf: HandshakeFailure });
  t.is(mismatch?.failureClass, 'bad_certificate');

  const before = bundles.lookups;
  bundles.replace(new Map([['a.test', (await TestCa.create()).bundle()]]));
  const untrusted = t.throws(() => validator.validate([leaf.cert], 'peer', id), { instanceOf: HandshakeFailure });
  t.is(untrusted?.failureClass, 'untrusted');
  t.true(bundles.lookups > before);

  bundles.replace(new Map([['a.test', ca.bundle()]]));
  validator.validate([leaf.cert], 'peer', id);
  now = new Date(Date.parse(leaf.cert.validTo) + 1_000);
  const expired = t.throws(() => validator.validate([leaf.cert], 'peer', id), { instanceOf: HandshakeFailure });
  t.is(expired?.failureClass, 'expired');
  t.is(t.throws(() => validator.validate([], 'peer'), { instanceOf: HandshakeFailure })?.failureClass, 'bad_certificate');
});

test('SecretBytes: constant-time equality, and redacted in JSON, strings, inspection and pino logs', (t) => {
  const bytes = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
  const secret = new SecretBytes(bytes);
  t.true(secret.equals(new SecretBytes(Buffer.from(bytes))));
  t.false(secret.equals(new SecretBytes(Buffer.alloc(16))));
  t.false(secret.equals(new SecretBytes(Buffer.alloc(3))));
  bytes.fill(0); // a copy is held
  t.is(secret.reveal().toString('hex'), '00112233445566778899aabbccddeeff');
  t.is(JSON.stringify({ secret }), '{"secret":"[redacted]"}');
  t.is(`${secret.toString()}`, '[redacted]');
  let logged = '';
  const logger = pino(new Writable({ write: (chunk: Buffer, _encoding, done) => ((logged += chunk.toString()), done()) }));
  logger.info({ result: { keyMaterial: secret } }, 'authenticated');
  t.true(logged.includes('[redacted]'));
  t.false(logged.includes('00112233'));
  t.false(logged.includes(secret.reveal().toString('base64')));
});

test('the responder finds the identity a handshake presented, across a rotation in mid-handshake', async (t) => {
  const ca = await TestCa.create();
  const id = workloadId('db');
  const [first, second] = [await ca.leaf(id), await ca.leaf(id)];
  const source = new StaticSvids(nodeIdOf('n1'), [unvalidatedSvid(id, first)]);
  const identities = new LocalIdentities(source);
  t.teardown(() => identities.close());
  let certificateLookups = 0;
  const socketPresenting = (cert: X509Certificate) =>
    ({
      servername: sniForIdentity(id),
      getX509Certificate: () => {
        certificateLookups++;
        return cert;
      },
    }) as unknown as TLSSocket;

  // Installed before the connection was accepted: the SNI alone decides, no certificate look-up.
  const acceptedBefore = performance.now();
  t.is(identities.presentedFor(socketPresenting(first.cert), acceptedBefore)?.serial, first.cert.serialNumber.toLowerCase());
  t.is(certificateLookups, 0);

  // Rotated after the accept: the certificate actually presented decides.
  source.emit('svid', unvalidatedSvid(id, second));
  t.is(identities.presentedFor(socketPresenting(first.cert), acceptedBefore)?.serial, first.cert.serialNumber.toLowerCase());
  t.is(identities.presentedFor(socketPresenting(second.cert), acceptedBefore)?.serial, second.cert.serialNumber.toLowerCase());
  t.is(certificateLookups, 2);
  t.is(identities.get(id)?.serial, second.cert.serialNumber.toLowerCase());

  // Withdrawn: nothing in flight may finish with it.
  source.emit('svidRemoved', id);
  t.is(identities.presentedFor(socketPresenting(second.cert), acceptedBefore), undefined);
  t.is(identities.contextForSni(sniForIdentity(id)), undefined);
});
