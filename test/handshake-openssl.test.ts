// Interop with a TLS stack we did not write: `openssl s_client` as the initiator of pair and
// node handshakes against a real responder, speaking the frame protocol through its stdin.
import test, { type ExecutionContext } from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KeyObject } from 'node:crypto';
import { execa } from 'execa';
import { sniForIdentity } from '../src/handshake/sni.js';
import { ALPN } from '../src/handshake/protocol.js';
import type { HandshakeOptionsInput } from '../src/handshake/handshake-options.js';
import type { SpiffeId } from '../src/identity/spiffe-id.js';
import type { Forged } from './helpers/cert-forge.js';
import { NodeDirectory, TestCa, metricValue, nodeIdOf, responderSettled, startAgent, workloadId, type TestAgent } from './helpers/handshake-fixtures.js';

const WEB = workloadId('web');
const DB = workloadId('db');

let ca: TestCa;
let rogue: TestCa;
let dir: string;
test.before(async () => {
  ca = await TestCa.create();
  rogue = await TestCa.create('a.test', 'rogue root');
  dir = await mkdtemp(join(tmpdir(), 'meshauth-openssl-'));
  await writeFile(join(dir, 'bundle.pem'), ca.root.cert.toString());
});
test.after.always(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A responder that resolves every source address to node "node-ossl" (s_client picks its own). */
async function responder(t: ExecutionContext, settings: HandshakeOptionsInput = {}): Promise<TestAgent> {
  const agent = await startAgent(
    { nodeName: 'node-b', address: '127.0.0.3', ca, workloads: [DB], resolveNode: () => 'node-ossl', settings },
    new NodeDirectory(),
  );
  t.teardown(() => agent.close());
  return agent;
}

/** Writes a leaf and its key as PEM files (key 0600) and returns their paths. */
async function pemFiles(name: string, leaf: Forged): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}.pem`);
  const key = join(dir, `${name}.key`);
  await writeFile(cert, leaf.cert.toString());
  await writeFile(key, KeyObject.from(leaf.keys.privateKey).export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  return { cert, key };
}

function frame(json: object | string): Buffer {
  const payload = Buffer.from(typeof json === 'string' ? json : JSON.stringify(json));
  const header = Buffer.alloc(2);
  header.writeUInt16BE(payload.length);
  return Buffer.concat([header, payload]);
}

interface ClientRun {
  exitCode: number | undefined;
  stdout: string;
  stderr: string;
}

async function sClient(
  agent: TestAgent,
  options: { target: SpiffeId; alpn?: string; files?: { cert: string; key: string }; input?: Buffer; extra?: string[]; quiet?: boolean },
): Promise<ClientRun> {
  const args = ['s_client', '-connect', `${agent.address}:${agent.port}`, '-servername', sniForIdentity(options.target), '-alpn', options.alpn ?? ALPN.pair, '-CAfile', join(dir, 'bundle.pem'), '-ign_eof'];
  if (options.files) args.push('-cert', options.files.cert, '-key', options.files.key);
  if (options.quiet !== false) args.push('-quiet');
  args.push(...(options.extra ?? ['-tls1_3']));
  const result = await execa('openssl', args, { input: options.input ?? Buffer.alloc(0), reject: false, timeout: 15_000, stripFinalNewline: false });
  return { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr };
}

const ACCEPT = { v: 1, verdict: 'accept' };

test('openssl s_client completes a pair handshake and reads the accept frame; the responder records it', async (t) => {
  const agent = await responder(t);
  const files = await pemFiles('web', await ca.leaf(WEB));
  const run = await sClient(agent, { target: DB, files, input: frame(ACCEPT) });
  t.true(run.stdout.includes('{"v":1,"verdict":"accept"}'), `${run.stdout}\n${run.stderr}`);
  await responderSettled(agent);
  t.is(agent.results.length, 1);
  const result = agent.results[0]!;
  t.is(result.remoteId.toString(), WEB.toString());
  t.is(result.localId.toString(), DB.toString());
  t.is(result.remoteNode, 'node-ossl');
});

test('openssl s_client without a client certificate is refused (bad_certificate)', async (t) => {
  const agent = await responder(t);
  const run = await sClient(agent, { target: DB, input: frame(ACCEPT) });
  t.true(run.stdout.includes('"verdict":"reject","reason":"bad_certificate"'), run.stdout + run.stderr);
  await responderSettled(agent);
  t.is(agent.results.length, 0);
  t.is(await metricValue(agent.registry, 'meshauth_handshakes_total', { result: 'failure', reason: 'bad_certificate' }), 1);
});

test('openssl s_client with a certificate from an untrusted CA is refused (untrusted)', async (t) => {
  const agent = await responder(t);
  const files = await pemFiles('rogue-web', await rogue.leaf(WEB));
  const run = await sClient(agent, { target: DB, files, input: frame(ACCEPT) });
  t.true(run.stdout.includes('"verdict":"reject","reason":"untrusted"'), run.stdout + run.stderr);
  await responderSettled(agent);
  t.is(agent.results.length, 0);
});

test('openssl s_client with TLS 1.2 fails the TLS handshake (protocol)', async (t) => {
  const agent = await responder(t);
  const files = await pemFiles('web12', await ca.leaf(WEB));
  const run = await sClient(agent, { target: DB, files, input: frame(ACCEPT), extra: ['-tls1_2'] });
  t.not(run.exitCode, 0);
  t.false(run.stdout.includes('verdict'));
  t.regex(run.stderr, /protocol version|alert/i);
  await responderSettled(agent);
  t.is(agent.results.length, 0);
  t.is(await metricValue(agent.registry, 'meshauth_handshakes_total', { kind: 'unknown', result: 'failure', reason: 'protocol' }), 1);
});

test('openssl s_client offering another ALPN gets no handshake', async (t) => {
  const agent = await responder(t);
  const files = await pemFiles('web-alpn', await ca.leaf(WEB));
  const run = await sClient(agent, { target: DB, files, input: frame(ACCEPT), alpn: 'h2' });
  t.not(run.exitCode, 0);
  t.regex(run.stderr, /no application protocol/i);
  await responderSettled(agent);
  t.is(agent.results.length, 0);
});

test('a saved session is never resumed: every connection is a full handshake', async (t) => {
  const agent = await responder(t);
  const files = await pemFiles('web-sess', await ca.leaf(WEB));
  const session = join(dir, 'session.pem');
  const first = await sClient(agent, { target: DB, files, input: frame(ACCEPT), quiet: false, extra: ['-tls1_3', '-sess_out', session] });
  t.regex(first.stdout, /^New, TLSv1.3/m);
  const second = await sClient(agent, { target: DB, files, input: frame(ACCEPT), quiet: false, extra: ['-tls1_3', '-sess_in', session] });
  t.regex(second.stdout, /^New, TLSv1.3/m, second.stdout);
  t.notRegex(second.stdout, /^Reused/m);
  t.true(second.stdout.includes('{"v":1,"verdict":"accept"}'));
  await responderSettled(agent, 2);
  t.is(agent.results.length, 2);
  t.false(agent.results[0]!.keyMaterial.equals(agent.results[1]!.keyMaterial));
});

test('frames from a foreign client are checked: malformed, oversized, trailing data, a reject', async (t) => {
  const agent = await responder(t);
  const files = await pemFiles('web-frames', await ca.leaf(WEB));
  const cases: [string, Buffer, string][] = [
    ['not JSON', frame('not json'), 'protocol'],
    ['unknown field', frame({ v: 1, verdict: 'accept', extra: true }), 'protocol'],
    ['oversized length', Buffer.from([0xff, 0xff, 0x7b]), 'protocol'],
    ['data after the frame', Buffer.concat([frame(ACCEPT), Buffer.from('x')]), 'protocol'],
    ['node description in a pair frame', frame({ v: 1, verdict: 'accept', node: { nodeName: 'node-ossl', podCidrs: [] } }), 'protocol'],
  ];
  let settled = 0;
  for (const [name, input, failureClass] of cases) {
    const run = await sClient(agent, { target: DB, files, input });
    settled++;
    await responderSettled(agent, settled);
    t.is(await metricValue(agent.registry, 'meshauth_handshakes_total', { result: 'failure', reason: failureClass }), settled, name);
    t.false(run.stdout.includes('"verdict":"accept"'), name);
  }
  // A reject frame from the initiator: the responder records nothing and counts the initiator's class.
  await sClient(agent, { target: DB, files, input: frame({ v: 1, verdict: 'reject', reason: 'untrusted' }) });
  await responderSettled(agent, settled + 1);
  t.is(await metricValue(agent.registry, 'meshauth_handshakes_total', { result: 'failure', reason: 'untrusted' }), 1);
  t.is(agent.results.length, 0);
});

test('a client that stops in the middle of its frame is cut off at the deadline (timeout)', async (t) => {
  const agent = await responder(t, { handshakeTimeout: '500ms' });
  const files = await pemFiles('web-slow', await ca.leaf(WEB));
  const started = Date.now();
  const run = await sClient(agent, { target: DB, files, input: Buffer.from([0x00, 0x40, 0x7b]) });
  // Who cut it off, not how soon (openssl's start-up is part of any elapsed time): the responder's
  // deadline counts a timeout; s_client (-ign_eof) would otherwise hang until sClient kills it at
  // 15 s, which the responder counts as another failure.
  t.log(`cut off after ${Date.now() - started} ms (openssl start-up included)`);
  t.false(run.stdout.includes('"verdict":"accept"'));
  await responderSettled(agent);
  t.is(await metricValue(agent.registry, 'meshauth_handshakes_total', { kind: 'pair', result: 'failure', reason: 'timeout' }), 1);
  t.is(agent.results.length, 0);
});

test('node handshake with openssl s_client: a frame naming another node than the certificate is unauthorized', async (t) => {
  const agent = await responder(t);
  const files = await pemFiles('node-ossl', await ca.leaf(nodeIdOf('node-ossl')));
  const wrong = await sClient(agent, { target: nodeIdOf('node-b'), alpn: ALPN.node, files, input: frame({ v: 1, verdict: 'accept', node: { nodeName: 'node-x', podCidrs: [] } }) });
  t.true(wrong.stdout.includes('"reason":"unauthorized"'), wrong.stdout + wrong.stderr);
  const right = await sClient(agent, { target: nodeIdOf('node-b'), alpn: ALPN.node, files, input: frame({ v: 1, verdict: 'accept', node: { nodeName: 'node-ossl', podCidrs: ['10.1.0.0/16'] } }) });
  t.true(right.stdout.includes('"verdict":"accept","node":{"nodeName":"node-b"'), right.stdout + right.stderr);
  await responderSettled(agent, 2);
  t.is(agent.results.length, 1);
  t.is(agent.results[0]!.kind, 'node');
});
