// The responder under hostile load, and the initiator's singleflight, retries and timeouts.
// Loopback only; flood sources use their own 127.0.0.x addresses, as distinct hosts would.
import test, { type ExecutionContext } from 'ava';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { once } from 'node:events';
import { X509Certificate, randomBytes } from 'node:crypto';
import { HandshakeFailure } from '../src/handshake/failure.js';
import type { HandshakeOptionsInput } from '../src/handshake/handshake-options.js';
import {
  NodeDirectory,
  TestCa,
  eventually,
  metricValue,
  nodeIdOf,
  startAgent,
  workloadId,
  type TestAgent,
} from './helpers/handshake-fixtures.js';

const WEB = workloadId('web');
const DB = workloadId('db');

let ca: TestCa;
test.before(async () => {
  ca = await TestCa.create();
});

async function twoAgents(t: ExecutionContext, initiatorSettings: HandshakeOptionsInput = {}, responderSettings: HandshakeOptionsInput = {}) {
  const directory = new NodeDirectory();
  const nodeA = await startAgent({ nodeName: 'node-a', address: '127.0.0.2', ca, workloads: [WEB], settings: initiatorSettings }, directory);
  const nodeB = await startAgent({ nodeName: 'node-b', address: '127.0.0.3', ca, workloads: [DB], settings: responderSettings }, directory);
  t.teardown(async () => {
    await nodeA.close();
    await nodeB.close();
  });
  return { directory, nodeA, nodeB };
}

/** Makes these loopback addresses nodes the responder knows: misbehaving peers, which are admitted
 *  on the peers' budget (sources that are no node's have a small one: handshake-admission.test.ts). */
function registerHostileNodes(directory: NodeDirectory, lastOctets: number[]): void {
  for (const octet of lastOctets) directory.register(`127.0.0.${octet}`, `hostile-${octet}`);
}

const range = (from: number, count: number) => Array.from({ length: count }, (_, i) => from + i);

const pairTo = (agent: TestAgent, port = agent.port) => ({ localId: WEB, remoteId: DB, remoteNode: agent.nodeName, address: { host: agent.address, port } });

async function listen(server: Server, host = '127.0.0.1'): Promise<number> {
  server.listen(0, host);
  await once(server, 'listening');
  return (server.address() as { port: number }).port;
}

async function timedHandshakes(agent: TestAgent, to: TestAgent, count: number): Promise<number[]> {
  const latencies: number[] = [];
  for (let i = 0; i < count; i++) {
    const started = performance.now();
    await agent.initiator.authenticatePair(pairTo(to));
    latencies.push(performance.now() - started);
  }
  return latencies.sort((x, y) => x - y);
}

/** Resolves when the socket closes, whatever error it had. */
function closed(socket: Socket): Promise<void> {
  socket.on('error', () => {});
  return new Promise((resolve) => socket.once('close', () => resolve()));
}

const median = (sorted: number[]) => sorted[Math.floor(sorted.length / 2)]!;

test('hundreds of idle, garbage, half-open and TLS 1.2 connections do not hold up legitimate handshakes', async (t) => {
  const { directory, nodeA, nodeB } = await twoAgents(t, {}, { handshakeTimeout: '6s' });
  registerHostileNodes(directory, [...range(10, 20), ...range(40, 5)]);
  await timedHandshakes(nodeA, nodeB, 5); // warm-up
  const baseline = await timedHandshakes(nodeA, nodeB, 20);

  const flood: Socket[] = [];
  const open = (source: number, onConnect: (socket: Socket) => void): void => {
    const socket = netConnect({ host: nodeB.address, port: nodeB.port, localAddress: `127.0.0.${source}` }, () => onConnect(socket));
    socket.on('error', () => {});
    socket.resume(); // read, so that the responder's close is seen
    flood.push(socket);
  };
  for (let i = 0; i < 400; i++) {
    const source = 10 + (i % 20); // 20 hostile peers, 20 connections each: under the per-source caps
    switch (i % 4) {
      case 0: // idle: connects and says nothing
        open(source, () => {});
        break;
      case 1: // garbage
        open(source, (socket) => socket.write(randomBytes(512)));
        break;
      case 2: // half-open: a TLS record header announcing a ClientHello that never comes
        open(source, (socket) => socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])));
        break;
      default: // a trickle: a valid-looking record header, then one byte now and then
        open(source, (socket) => {
          socket.write(Buffer.from([0x16, 0x03, 0x01, 0x01, 0x00]));
          const timer = setInterval(() => (socket.writable ? socket.write(Buffer.from([0])) : clearInterval(timer)), 200);
          socket.once('close', () => clearInterval(timer));
        });
    }
  }
  const tls12 = Array.from({ length: 50 }, (_, i) => {
    // (localAddress reaches net.connect; @types/node 20 does not list it for tls.connect)
    const options = { host: nodeB.address, port: nodeB.port, localAddress: `127.0.0.${40 + (i % 5)}`, maxVersion: 'TLSv1.2' as const, rejectUnauthorized: false };
    const socket = tlsConnect(options);
    return closed(socket);
  });
  // Garbage fails at once; the idle, half-open and trickling ones (300) stay until their deadline.
  await eventually(async () => (await metricValue(nodeB.registry, 'meshauth_handshakes_in_flight', { role: 'responder' })) >= 290, 'the flood to be open');

  const underFlood = await timedHandshakes(nodeA, nodeB, 20);
  t.log(`median ${median(baseline).toFixed(1)} ms → ${median(underFlood).toFixed(1)} ms under flood; worst ${underFlood.at(-1)!.toFixed(1)} ms`);
  // How much slower is a benchmark's figure; a loaded 2-core machine running the flood slows them
  // too. These bounds are generous (10x the baseline; half the flood's 6 s deadline) and still fail
  // a responder that serves legitimate handshakes only as the flood's connections give way.
  t.true(median(underFlood) < median(baseline) * 10 + 100, `median ${median(underFlood)} vs baseline ${median(baseline)}`);
  t.true(underFlood.at(-1)! < 3_000, `worst ${underFlood.at(-1)} ms`);
  await Promise.all(tls12);

  // Every flood connection is closed by the responder at its deadline, counted, and released.
  await eventually(() => flood.every((socket) => socket.destroyed), 'the flood to be cut off', 20_000);
  await eventually(async () => (await metricValue(nodeB.registry, 'meshauth_handshakes_in_flight', { role: 'responder' })) === 0, 'in-flight to drain');
  const failures = await metricValue(nodeB.registry, 'meshauth_handshakes_total', { kind: 'unknown', role: 'responder', result: 'failure' });
  t.true(failures >= 450, `${failures} failures counted`);
  t.true((await metricValue(nodeB.registry, 'meshauth_handshakes_total', { reason: 'timeout' })) >= 200);
  t.is(nodeB.results.length, 45);
  for (const socket of flood) socket.destroy();
});

test('a peer over its rate is cut off before TLS while other peers still authenticate', async (t) => {
  const { directory, nodeA, nodeB } = await twoAgents(t, {}, { rateLimit: { perSecond: 1, burst: 5, maxOpenPerSource: 100 } });
  registerHostileNodes(directory, [50]);
  const closings: Promise<void>[] = [];
  for (let i = 0; i < 30; i++) {
    const socket = netConnect({ host: nodeB.address, port: nodeB.port, localAddress: '127.0.0.50' });
    closings.push(closed(socket));
    socket.on('connect', () => socket.end());
  }
  await Promise.all(closings);
  const rejected = await metricValue(nodeB.registry, 'meshauth_handshake_connections_rejected_total', { limit: 'rate' });
  t.true(rejected >= 20 && rejected <= 25, `${rejected} rejected`);
  await nodeA.initiator.authenticatePair(pairTo(nodeB));
  t.is(nodeB.results.length, 1);
});

test('a peer holding too many open connections gets no more', async (t) => {
  const { directory, nodeB } = await twoAgents(t, {}, { rateLimit: { maxOpenPerSource: 3 } });
  registerHostileNodes(directory, [51]);
  const sockets = await Promise.all(
    Array.from({ length: 5 }, async () => {
      const socket = netConnect({ host: nodeB.address, port: nodeB.port, localAddress: '127.0.0.51' });
      socket.on('error', () => {});
      await once(socket, 'connect');
      return socket;
    }),
  );
  t.teardown(() => sockets.forEach((socket) => socket.destroy()));
  await eventually(async () => (await metricValue(nodeB.registry, 'meshauth_handshake_connections_rejected_total', { limit: 'per_source' })) === 2, 'two refusals');
  t.is(await metricValue(nodeB.registry, 'meshauth_handshakes_in_flight', { role: 'responder' }), 3);
});

test('peers\' connections beyond maxConnections are closed on accept and counted', async (t) => {
  const { directory, nodeB } = await twoAgents(t, {}, { maxConnections: 2 });
  registerHostileNodes(directory, range(60, 4));
  const sockets = Array.from({ length: 4 }, (_, i) => netConnect({ host: nodeB.address, port: nodeB.port, localAddress: `127.0.0.${60 + i}` }));
  for (const socket of sockets) void closed(socket.resume());
  t.teardown(() => sockets.forEach((socket) => socket.destroy()));
  await eventually(async () => (await metricValue(nodeB.registry, 'meshauth_handshake_connections_rejected_total', { limit: 'max_connections' })) === 2, 'two drops');
  await eventually(() => sockets.filter((socket) => socket.destroyed).length === 2, 'two closed');
  t.is(await metricValue(nodeB.registry, 'meshauth_handshakes_in_flight', { role: 'responder' }), 2);
});

test('a client sending more than the pre-handshake byte cap is cut off by the cap, not at the deadline', async (t) => {
  const { nodeB } = await twoAgents(t, {}, { maxPreHandshakeBytes: 4096, handshakeTimeout: '5s' });
  const socket = netConnect({ host: nodeB.address, port: nodeB.port, localAddress: '127.0.0.52' });
  socket.on('error', () => {});
  await once(socket, 'connect');
  const started = Date.now();
  // One 16 KiB handshake record, of which OpenSSL waits for every byte before parsing anything.
  socket.write(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x40, 0x00]), Buffer.alloc(10_000)]));
  await closed(socket);
  t.log(`cut off after ${Date.now() - started} ms`);
  // What cut it off, rather than how soon: the cap counts a protocol failure, the deadline a
  // timeout.
  t.is(await metricValue(nodeB.registry, 'meshauth_handshakes_total', { role: 'responder', reason: 'protocol' }), 1);
  t.is(await metricValue(nodeB.registry, 'meshauth_handshakes_total', { role: 'responder', reason: 'timeout' }), 0, 'not the deadline');
});

test('concurrent requests for the same pair share one handshake', async (t) => {
  const { nodeA, nodeB } = await twoAgents(t);
  const results = await Promise.all(Array.from({ length: 10 }, () => nodeA.initiator.authenticatePair(pairTo(nodeB))));
  t.true(results.every((result) => result === results[0]));
  t.is(nodeA.results.length, 1);
  t.is(nodeB.results.length, 1);
  t.is(await metricValue(nodeB.registry, 'meshauth_handshakes_total', { role: 'responder' }), 1);
  // Different pairs do not share.
  const other = await Promise.all([nodeA.initiator.authenticatePair(pairTo(nodeB)), nodeA.initiator.authenticateNode({ remoteNode: 'node-b', address: { host: nodeB.address, port: nodeB.port } })]);
  t.not<unknown, unknown>(other[0], other[1]);
  t.is(nodeB.results.length, 3);
});

test('a refused connection is retried with backoff and then succeeds', async (t) => {
  const { nodeA, nodeB } = await twoAgents(t, { retry: { attempts: 3, initialBackoff: '50ms', maxBackoff: '100ms' } });
  // A front that resets the first connection and forwards the later ones to the real responder.
  let connections = 0;
  const front = createServer((client) => {
    client.on('error', () => {});
    if (++connections === 1) return client.resetAndDestroy();
    const upstream = netConnect({ host: nodeB.address, port: nodeB.port, localAddress: '127.0.0.2' });
    upstream.on('error', () => client.destroy());
    client.pipe(upstream).pipe(client);
  });
  const port = await listen(front, '127.0.0.3');
  t.teardown(() => front.close());
  const started = Date.now();
  const result = await nodeA.initiator.authenticatePair(pairTo(nodeB, port));
  t.true(Date.now() - started >= 25); // at least the jittered first backoff
  t.is(result.remoteId.toString(), DB.toString());
  t.is(connections, 2);
  t.is(await metricValue(nodeA.registry, 'meshauth_handshakes_total', { role: 'initiator', result: 'failure', reason: 'refused' }), 1);
  t.is(await metricValue(nodeA.registry, 'meshauth_handshakes_total', { role: 'initiator', result: 'success' }), 1);
});

test('a silent server times out every attempt', async (t) => {
  const { nodeA } = await twoAgents(t, { handshakeTimeout: '300ms', retry: { attempts: 2, initialBackoff: '10ms', maxBackoff: '10ms' } });
  const held: Socket[] = [];
  const silent = createServer((socket) => {
    held.push(socket);
    socket.on('error', () => {});
  });
  const port = await listen(silent);
  t.teardown(() => {
    held.forEach((socket) => socket.destroy());
    silent.close();
  });
  const started = Date.now();
  const err = await t.throwsAsync(nodeA.initiator.authenticatePair({ localId: WEB, remoteId: DB, remoteNode: 'node-b', address: { host: '127.0.0.1', port } }), { instanceOf: HandshakeFailure });
  t.is(err?.failureClass, 'timeout');
  const elapsed = Date.now() - started;
  // At least both 300 ms deadlines. The upper bound only has to tell the configured deadline from
  // the 5 s default (>= 10 s for two attempts); 8 s is over 10x the expected 600 ms.
  t.true(elapsed >= 600 && elapsed < 8_000, `${elapsed} ms`);
  t.is(held.length, 2);
  t.is(await metricValue(nodeA.registry, 'meshauth_handshakes_total', { role: 'initiator', reason: 'timeout' }), 2);
});

test('a connection refused at TCP level is classified refused', async (t) => {
  const { nodeA } = await twoAgents(t, { retry: { attempts: 1 } });
  const server = createServer();
  const port = await listen(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  const err = await t.throwsAsync(nodeA.initiator.authenticatePair({ localId: WEB, remoteId: DB, remoteNode: 'node-b', address: { host: '127.0.0.1', port } }), { instanceOf: HandshakeFailure });
  t.is(err?.failureClass, 'refused');
});

test('a rotated SVID is presented in the next handshake, on both sides, without a restart', async (t) => {
  const { nodeA, nodeB } = await twoAgents(t);
  const before = await nodeA.initiator.authenticatePair(pairTo(nodeB));
  const rotatedDb = await ca.rawSvid(DB);
  const rotatedWeb = await ca.rawSvid(WEB);
  nodeB.provider!.sink!.svids([await ca.rawSvid(nodeIdOf('node-b')), rotatedDb]);
  nodeA.provider!.sink!.svids([await ca.rawSvid(nodeIdOf('node-a')), rotatedWeb]);
  const after = await nodeA.initiator.authenticatePair(pairTo(nodeB));
  const serial = (der: Buffer) => new X509Certificate(der).serialNumber.toLowerCase();
  t.not(after.remoteSerial, before.remoteSerial);
  t.is(after.remoteSerial, serial(rotatedDb.chain[0]!));
  t.is(after.localSerial, serial(rotatedWeb.chain[0]!));
  t.is(nodeB.results.at(-1)!.remoteSerial, serial(rotatedWeb.chain[0]!));
  t.is(nodeB.results.at(-1)!.localSerial, serial(rotatedDb.chain[0]!));
});

test('a withdrawn identity stops being served', async (t) => {
  const { nodeA, nodeB } = await twoAgents(t, { retry: { attempts: 1 } });
  await nodeA.initiator.authenticatePair(pairTo(nodeB));
  nodeB.provider!.sink!.svids([await ca.rawSvid(nodeIdOf('node-b'))]);
  const err = await t.throwsAsync(nodeA.initiator.authenticatePair(pairTo(nodeB)), { instanceOf: HandshakeFailure });
  t.is(err?.failureClass, 'unknown_identity');
});

test('a trust bundle change takes effect at once, despite cached validations', async (t) => {
  const { nodeA, nodeB } = await twoAgents(t, { retry: { attempts: 1 } });
  await nodeA.initiator.authenticatePair(pairTo(nodeB));
  const rogue = await TestCa.create('a.test', 'replacement root');
  nodeB.provider!.sink!.bundles(new Map([['a.test', rogue.bundle()]]));
  const err = await t.throwsAsync(nodeA.initiator.authenticatePair(pairTo(nodeB)), { instanceOf: HandshakeFailure });
  t.is(err?.failureClass, 'untrusted');
  t.true(err?.peerReported);
  t.is(nodeB.results.length, 1);
});
