import test from 'ava';
import { connect } from 'node:net';
import { execa } from 'execa';
import { MetricsServer, type Readiness } from '../src/metrics/server.js';
import { createRegistry } from '../src/metrics/registry.js';
import { AgentMetrics } from '../src/agent/agent-metrics.js';
import { HandshakeMetrics } from '../src/handshake/handshake-metrics.js';
import { IdentityMetrics } from '../src/identity/identity-metrics.js';
import { COUNTER_NAMES, type Counters } from '../src/datapath/gate/layout.js';

interface Started {
  server: MetricsServer;
  setReadiness: (readiness: () => Readiness | Promise<Readiness>) => void;
}

async function start(t: { teardown: (fn: () => Promise<void>) => void }): Promise<Started> {
  const registry = createRegistry();
  const agent = new AgentMetrics(registry, {
    datapathCounters: () => Object.fromEntries(COUNTER_NAMES.map((name, index) => [name, BigInt(index) * 1000n])) as Counters,
  });
  const handshakes = new HandshakeMetrics(registry);
  const identity = new IdentityMetrics(registry);
  // Every family with at least one sample, so the lint below sees them all.
  agent.setPairs({ authenticated: 3 });
  agent.setAuthMap(3, 524_288);
  agent.reauth('reauth');
  agent.signal('handled');
  agent.transportRekey();
  handshakes.success('pair', 'initiator', 0.004);
  handshakes.failure('node', 'responder', 'untrusted-peer');
  handshakes.inFlight.set({ role: 'initiator' }, 0);
  handshakes.rejectedConnections.inc({ limit: 'rate' });
  identity.providerErrors.inc({ provider: 'dev', kind: 'unavailable' });
  identity.svidRejected.inc({ provider: 'dev', reason: 'expired' });
  identity.bundleRejected.inc({ provider: 'dev' });
  identity.svidExpiry.set({ spiffe_id: 'spiffe://cluster.local/ns/a/sa/b' }, 1_900_000_000);
  identity.trustDomains.set(1);

  let readiness: () => Readiness | Promise<Readiness> = () => ({ ready: true });
  const server = await MetricsServer.start({ host: '127.0.0.1', port: 0, registry, readiness: () => readiness() });
  t.teardown(() => server.close());
  return { server, setReadiness: (next) => (readiness = next) };
}

test('/metrics serves the Prometheus text format, and promtool finds no problem in it', async (t) => {
  const { server } = await start(t);
  const response = await fetch(`${server.url}/metrics`);
  t.is(response.status, 200);
  t.regex(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  const text = await response.text();
  for (const family of [
    'meshauth_auth_pairs',
    'meshauth_auth_map_entries',
    'meshauth_auth_map_capacity',
    'meshauth_reauth_total',
    'meshauth_signals_total',
    'meshauth_datapath_packets_total',
    'meshauth_datapath_signals_total',
    'meshauth_peers',
    'meshauth_transport_rekeys_total',
    'meshauth_handshakes_total',
    'meshauth_handshake_duration_seconds',
    'process_cpu_seconds_total',
  ]) {
    t.regex(text, new RegExp(`^# TYPE ${family} `, 'm'), family);
  }
  t.regex(text, /^meshauth_datapath_packets_total\{verdict="dropped_no_entry"\} 3000$/m);

  const lint = await execa('promtool', ['check', 'metrics'], { input: text, reject: false });
  if (lint.exitCode === undefined) {
    t.fail(`promtool did not run (${lint.shortMessage}): run scripts/setup.sh (Debian package "prometheus")`);
    return;
  }
  t.is(lint.exitCode, 0, `promtool check metrics:\n${lint.stdout}${lint.stderr}`);
  t.is(`${lint.stdout}${lint.stderr}`.trim(), '');
});

test('/healthz answers 200 while the process runs', async (t) => {
  const { server, setReadiness } = await start(t);
  setReadiness(() => ({ ready: false, reason: 'identities not loaded' }));
  const response = await fetch(`${server.url}/healthz`);
  t.is(response.status, 200, 'liveness does not depend on readiness');
  t.is(await response.text(), 'ok\n');
});

test('/readyz: 200 when ready, 503 with the reason as JSON otherwise, also when the check fails', async (t) => {
  const { server, setReadiness } = await start(t);
  const readyz = async () => {
    const response = await fetch(`${server.url}/readyz`);
    t.is(response.headers.get('content-type'), 'application/json');
    return { status: response.status, body: (await response.json()) as unknown };
  };
  t.deepEqual(await readyz(), { status: 200, body: { ready: true } });

  setReadiness(() => ({ ready: false, reason: 'datapath not attached' }));
  t.deepEqual(await readyz(), { status: 503, body: { ready: false, reason: 'datapath not attached' } });

  setReadiness(() => Promise.resolve({ ready: true }));
  t.is((await readyz()).status, 200);

  setReadiness(() => {
    throw new Error('store closed');
  });
  t.deepEqual(await readyz(), { status: 503, body: { ready: false, reason: 'readiness check failed: store closed' } });
});

test('everything else is 404; other methods 405; bodies 413', async (t) => {
  const { server } = await start(t);
  for (const path of ['/', '/metrics/', '/debug/pprof', '/v1/status', '/healthz/x', '/..%2fmetrics']) {
    t.is((await fetch(`${server.url}${path}`)).status, 404, path);
  }
  t.is((await fetch(`${server.url}/metrics?name[]=x`)).status, 200, 'a query string is ignored');
  const post = await fetch(`${server.url}/metrics`, { method: 'POST' });
  t.is(post.status, 405);
  t.is(post.headers.get('allow'), 'GET, HEAD');
  t.is((await fetch(`${server.url}/readyz`, { method: 'PUT', body: 'x' })).status, 413);
  const head = await fetch(`${server.url}/metrics`, { method: 'HEAD' });
  t.is(head.status, 200);
  t.is(await head.text(), '');
});

test('a client that never finishes its headers is cut off', async (t) => {
  const { server } = await start(t);
  const socket = connect({ host: '127.0.0.1', port: server.port });
  socket.write('GET /metrics HTTP/1.1\r\nHost: x\r\n');
  socket.resume();
  const started = Date.now();
  await new Promise<void>((resolve) => socket.once('close', () => resolve()));
  const elapsed = Date.now() - started;
  t.true(elapsed < 8_000, `closed after ${elapsed} ms (headers timeout 5 s)`);
});
