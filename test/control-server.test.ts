import test from 'ava';
import { chmod, lstat, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { createPrivateKey } from 'node:crypto';
import { request } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { ControlServer, ControlServerError } from '../src/control/server.js';
import { ControlClientError, fetchStatus } from '../src/control/client.js';
import type { AgentStatus } from '../src/control/status.js';
import { DevCa } from '../src/identity/dev-ca.js';
import { sampleStatus } from './helpers/sample-status.js';

async function tempDir(t: { teardown: (fn: () => Promise<void>) => void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-control-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

async function startServer(
  t: { teardown: (fn: () => Promise<void>) => void },
  socketPath: string,
  status: () => AgentStatus | Promise<AgentStatus> = sampleStatus,
): Promise<ControlServer> {
  const server = await ControlServer.start({ socketPath, status });
  t.teardown(() => server.close());
  return server;
}

/** A raw request on the socket, for what the client does not do (other paths, methods, bodies). */
function raw(socketPath: string, path: string, method = 'GET', body?: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'Content-Length': Buffer.byteLength(body) };
    const req = request({ socketPath, path, method, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

test('the socket is 0600 and a directory it creates is 0700', async (t) => {
  const socketPath = join(await tempDir(t), 'run', 'meshauth', 'control.sock');
  await startServer(t, socketPath);
  const socket = await lstat(socketPath);
  t.true(socket.isSocket());
  t.is(socket.mode & 0o777, 0o600);
  t.is((await stat(join(socketPath, '..'))).mode & 0o777, 0o700);
  t.is((await stat(join(socketPath, '..', '..'))).mode & 0o777, 0o700);
});

test('the socket is 0600 even under an open umask, which is restored after listening', async (t) => {
  const before = process.umask(0);
  t.teardown(() => void process.umask(before));
  const socketPath = join(await tempDir(t), 'control.sock');
  await startServer(t, socketPath);
  t.is((await lstat(socketPath)).mode & 0o777, 0o600);
  t.is(process.umask(0), 0);
});

test('GET /v1/status round trip: the client gets the status the agent supplied', async (t) => {
  const socketPath = join(await tempDir(t), 'control.sock');
  let calls = 0;
  await startServer(t, socketPath, () => {
    calls += 1;
    return Promise.resolve(sampleStatus());
  });
  t.deepEqual(await fetchStatus({ socketPath }), sampleStatus());
  t.deepEqual(await fetchStatus({ socketPath }), sampleStatus());
  t.is(calls, 2, 'the status is asked for afresh on every request');
});

test('other paths are 404, other methods 405, request bodies 413', async (t) => {
  const socketPath = join(await tempDir(t), 'control.sock');
  await startServer(t, socketPath);
  t.is((await raw(socketPath, '/')).status, 404);
  t.is((await raw(socketPath, '/v1/status/x')).status, 404);
  t.is((await raw(socketPath, '/v1/status', 'POST')).status, 405);
  t.is((await raw(socketPath, '/v1/status', 'GET', '{"a":1}')).status, 413);
  t.is((await raw(socketPath, '/v1/status?verbose=1')).status, 200);
});

test('no key material reaches the socket: fields outside the status contract are stripped', async (t) => {
  const ca = await DevCa.create({ trustDomain: 'cluster.local' });
  const svid = await ca.issue({ id: 'spiffe://cluster.local/ns/prod/sa/web', ttlMs: 3_600_000 });
  const privateKeyPem = createPrivateKey({ key: svid.key, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }).toString();
  const leaky = sampleStatus();
  // What a careless agent might hand over: the whole SVID, key included, next to the contract's fields.
  Object.assign(leaky.identities[1]!, { privateKey: privateKeyPem, svid });
  Object.assign(leaky, { psk: 'c2VjcmV0LXByZXNoYXJlZC1rZXk=' });

  const socketPath = join(await tempDir(t), 'control.sock');
  await startServer(t, socketPath, () => leaky);
  const { status, text } = await raw(socketPath, '/v1/status');
  t.is(status, 200);
  t.false(text.includes('PRIVATE KEY'));
  t.false(text.includes(privateKeyPem.split('\n')[1]!));
  t.false(text.includes(svid.key.toString('base64').slice(0, 40)));
  t.false(text.includes('c2VjcmV0LXByZXNoYXJlZC1rZXk='));
  t.deepEqual(JSON.parse(text), sampleStatus());
});

test('a status that breaks the contract, or a status function that fails, is a 500 and the client says so', async (t) => {
  const dir = await tempDir(t);
  const broken = join(dir, 'broken.sock');
  await startServer(t, broken, () => ({ ...sampleStatus(), pairs: [{ state: 'weird' }] }) as unknown as AgentStatus);
  t.is((await raw(broken, '/v1/status')).status, 500);
  const error = await t.throwsAsync(fetchStatus({ socketPath: broken }), { instanceOf: ControlClientError });
  t.is(error.kind, 'bad-response');
  t.regex(error.message, /HTTP 500/);

  const failing = join(dir, 'failing.sock');
  await startServer(t, failing, () => Promise.reject(new Error('boom')));
  t.is((await raw(failing, '/v1/status')).status, 500);
});

test('a stale socket left by a dead agent is replaced', async (t) => {
  const socketPath = join(await tempDir(t), 'control.sock');
  // A socket file nobody listens on: a net server that is killed without cleaning up is what a
  // crashed agent leaves; here a child process that binds and exits with SIGKILL.
  await execa(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(socketPath)}, () => process.kill(process.pid, 'SIGKILL'))`], {
    reject: false,
  });
  t.true((await lstat(socketPath)).isSocket(), 'the dead process left its socket file');
  await t.throwsAsync(fetchStatus({ socketPath }), { instanceOf: ControlClientError, message: /no agent is running/ });

  await startServer(t, socketPath);
  t.deepEqual(await fetchStatus({ socketPath }), sampleStatus());
});

test('a live socket is not stolen', async (t) => {
  const socketPath = join(await tempDir(t), 'control.sock');
  await startServer(t, socketPath);
  await t.throwsAsync(ControlServer.start({ socketPath, status: sampleStatus }), {
    instanceOf: ControlServerError,
    message: /another agent is already listening/,
  });
  t.deepEqual(await fetchStatus({ socketPath }), sampleStatus(), 'the first agent still answers');

  // Not only another ControlServer: anything accepting connections there.
  const otherPath = join(await tempDir(t), 'other.sock');
  const other = createServer();
  await new Promise<void>((resolve) => other.listen(otherPath, resolve));
  t.teardown(() => new Promise<void>((resolve) => other.close(() => resolve())));
  await t.throwsAsync(ControlServer.start({ socketPath: otherPath, status: sampleStatus }), { message: /another agent/ });
});

test('a file that is not a socket is never removed', async (t) => {
  const socketPath = join(await tempDir(t), 'control.sock');
  await writeFile(socketPath, 'precious');
  await t.throwsAsync(ControlServer.start({ socketPath, status: sampleStatus }), { instanceOf: ControlServerError, message: /is not a socket/ });
  t.true((await lstat(socketPath)).isFile());
});

test('a directory others can write to is refused; an existing private one is used as it is', async (t) => {
  const dir = await tempDir(t);
  const shared = join(dir, 'shared');
  await mkdir(shared);
  await chmod(shared, 0o1777);
  await t.throwsAsync(ControlServer.start({ socketPath: join(shared, 'control.sock'), status: sampleStatus }), {
    instanceOf: ControlServerError,
    message: /writable by other users \(mode 1777\)/,
  });

  const readable = join(dir, 'readable');
  await mkdir(readable);
  await chmod(readable, 0o755);
  await startServer(t, join(readable, 'control.sock'));
  t.is((await stat(readable)).mode & 0o777, 0o755, 'an existing directory keeps its mode');
  t.is((await lstat(join(readable, 'control.sock'))).mode & 0o777, 0o600);
});

test('close removes the socket file', async (t) => {
  const socketPath = join(await tempDir(t), 'control.sock');
  const server = await ControlServer.start({ socketPath, status: sampleStatus });
  await server.close();
  await t.throwsAsync(lstat(socketPath), { code: 'ENOENT' });
});

test('the client reports a missing socket as "no agent running"', async (t) => {
  const socketPath = join(await tempDir(t), 'nothing.sock');
  const error = await t.throwsAsync(fetchStatus({ socketPath }), { instanceOf: ControlClientError });
  t.is(error.kind, 'no-agent');
  t.is(error.message, `no agent is running (nothing listening on ${socketPath})`);
});

test('CNI requests: POST only, bodies checked against their schema and bounded, answers from the handlers', async (t) => {
  const socketPath = join(await tempDir(t), 'control.sock');
  const seen: unknown[] = [];
  const server = await ControlServer.start({
    socketPath,
    status: sampleStatus,
    cni: {
      add: (request) => {
        seen.push(request);
        return Promise.resolve({ ready: true, pending: 0, bound: { name: 'veth1', ifindex: 7 } });
      },
      del: (request) => Promise.resolve({ removed: request.containerId === 'c1' }),
      check: () => Promise.resolve({ ok: false, reason: 'not registered' }),
    },
  });
  t.teardown(() => server.close());
  const add = { containerId: 'c1', netns: '/run/netns/p', ifName: 'eth0', ips: ['10.0.0.2'], waitMs: 2000, pod: { namespace: 'a', name: 'b', uid: 'u' } };
  const added = await raw(socketPath, '/v1/cni/add', 'POST', JSON.stringify(add));
  t.is(added.status, 200);
  t.deepEqual(JSON.parse(added.text), { ready: true, pending: 0, bound: { name: 'veth1', ifindex: 7 } });
  t.deepEqual(seen, [add]);
  t.deepEqual(JSON.parse((await raw(socketPath, '/v1/cni/del', 'POST', '{"containerId":"c1"}')).text), { removed: true });
  t.deepEqual(JSON.parse((await raw(socketPath, '/v1/cni/check', 'POST', '{"containerId":"c1"}')).text), { ok: false, reason: 'not registered' });

  t.is((await raw(socketPath, '/v1/cni/add', 'GET')).status, 405);
  const bad = await raw(socketPath, '/v1/cni/add', 'POST', JSON.stringify({ ...add, ips: ['not-an-ip'] }));
  t.is(bad.status, 400);
  t.regex(bad.text, /ips\.0/);
  t.is((await raw(socketPath, '/v1/cni/add', 'POST', JSON.stringify({ ...add, extra: 1 }))).status, 400, 'unknown fields are refused');
  t.is((await raw(socketPath, '/v1/cni/del', 'POST', '{"containerId":"../../etc"}')).status, 400);
  t.is((await raw(socketPath, '/v1/cni/del', 'POST', '{')).status, 400);
  t.is((await raw(socketPath, '/v1/status', 'GET', '{"a":1}')).status, 413, 'bodies only where CNI requests go');
  await t.throwsAsync(raw(socketPath, '/v1/cni/add', 'POST', 'x'.repeat(64 * 1024)), undefined, 'a body past the bound is cut off');
  t.is(seen.length, 1, 'no invalid request reached the agent');
});

test('without CNI handlers the CNI paths do not exist', async (t) => {
  const socketPath = join(await tempDir(t), 'control.sock');
  await startServer(t, socketPath);
  t.is((await raw(socketPath, '/v1/cni/add', 'POST', '{}')).status, 413);
  t.is((await raw(socketPath, '/v1/cni/add')).status, 404);
});
