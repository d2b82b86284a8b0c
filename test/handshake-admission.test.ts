// The responder cannot be starved by sources that are no node's (#16, item 6). Before the fix,
// connections were admitted by per-source rate and one global cap before the source was mapped
// to a node: a few such sources holding every slot until their deadline locked real peers out,
// and 256 handshakes from them asking for an identity this node wants but has not been issued
// yet left no room for a peer's handshake to wait for it. Loopback only; each non-node source
// is a 127.0.0.x address of its own, as distinct hosts would be.
import test, { type ExecutionContext } from 'ava';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import type { HandshakeOptionsInput } from '../src/handshake/handshake-options.js';
import { sniForIdentity } from '../src/handshake/sni.js';
import { NodeDirectory, TestCa, eventually, metricValue, nodeIdOf, startAgent, workloadId, type TestAgent } from './helpers/handshake-fixtures.js';

const WEB = workloadId('web');
const DB = workloadId('db');
const API = workloadId('api');

let ca: TestCa;
test.before(async () => {
  ca = await TestCa.create();
});

async function twoAgents(t: ExecutionContext, responderSettings: HandshakeOptionsInput = {}) {
  const directory = new NodeDirectory();
  const nodeA = await startAgent({ nodeName: 'node-a', address: '127.0.0.2', ca, workloads: [WEB], settings: { retry: { attempts: 1 } } }, directory);
  const nodeB = await startAgent({ nodeName: 'node-b', address: '127.0.0.3', ca, workloads: [DB], settings: responderSettings }, directory);
  const sockets: Socket[] = [];
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy();
    await nodeA.close();
    await nodeB.close();
  });
  return { directory, nodeA, nodeB, sockets };
}

const pairTo = (agent: TestAgent, remoteId = DB) => ({ localId: WEB, remoteId, remoteNode: agent.nodeName, address: { host: agent.address, port: agent.port } });

test('sources that are no node\'s cannot hold the slots a peer needs', async (t) => {
  const { nodeA, nodeB, sockets } = await twoAgents(t, { maxConnections: 8, handshakeTimeout: '30s' });
  // Idle connections from four hosts the cluster does not know, two each: as many as maxConnections.
  for (let i = 0; i < 8; i++) {
    const socket = netConnect({ host: nodeB.address, port: nodeB.port, localAddress: `127.0.0.${70 + (i % 4)}` });
    socket.on('error', () => {});
    socket.resume();
    sockets.push(socket);
  }
  await eventually(() => sockets.every((socket) => !socket.connecting), 'the idle connections to be made');
  const result = await nodeA.initiator.authenticatePair(pairTo(nodeB));
  t.is(result.remoteId.toString(), DB.toString(), 'the peer still authenticates');
});

test('handshakes waiting for a wanted SVID are capped per source; sources that are no node\'s never wait', async (t) => {
  const { directory, nodeA, nodeB, sockets } = await twoAgents(t, { handshakeTimeout: '30s' });
  const LATER = workloadId('later');
  nodeB.store!.setWanted([DB, API, LATER]);
  let asked = 0;
  const awaitContext = nodeB.identities.awaitContextForSni.bind(nodeB.identities);
  nodeB.identities.awaitContextForSni = (name, timeoutMs) => {
    asked++;
    // LATER's SVID is slow to come: its waiters stay waiting for the whole test, whatever the
    // machine's speed, so that what is counted is the cap, not how many waits ended meanwhile.
    if (name === sniForIdentity(LATER)) return new Promise(() => {});
    return awaitContext(name, timeoutMs);
  };
  const flood: Socket[] = [];
  const hello = (localAddress: string, id = API) => {
    // A ClientHello naming the wanted identity; whoever sends it holds no certificate for it.
    const options = { host: nodeB.address, port: nodeB.port, localAddress, servername: sniForIdentity(id), rejectUnauthorized: false };
    const socket = tlsConnect(options);
    socket.on('error', () => {});
    sockets.push(socket);
    flood.push(socket);
  };
  // 256 from two hosts the cluster does not know (under the default per-source cap of 128).
  for (let i = 0; i < 256; i++) hello(`127.0.0.${80 + (i % 2)}`);
  // Held (before the fix) or refused (after): either way settled before the peer comes.
  await eventually(() => asked >= 256 || flood.every((socket) => socket.destroyed), 'the flood to be held or refused', 20_000);

  // A real peer's handshake for the wanted identity still waits for its SVID, and completes.
  setTimeout(() => {
    void Promise.all([nodeIdOf('node-b'), DB, API].map((id) => ca.rawSvid(id))).then((svids) => nodeB.provider!.sink!.svids(svids));
  }, 300);
  const result = await nodeA.initiator.authenticatePair(pairTo(nodeB, API));
  t.is(result.remoteId.toString(), API.toString(), 'the peer waited for the SVID');

  // 40 from one host that is a node (a compromised or misbehaving peer): 16 may wait.
  directory.register('127.0.0.82', 'node-x');
  for (let i = 0; i < 40; i++) hello('127.0.0.82', LATER);
  await eventually(async () => (await metricValue(nodeB.registry, 'meshauth_handshake_connections_rejected_total', { limit: 'svid_wait_per_source' })) >= 24, 'the node source to hit its cap', 20_000);
  t.is(await metricValue(nodeB.registry, 'meshauth_handshake_connections_rejected_total', { limit: 'svid_wait_per_source' }), 24, '16 of the node source\'s wait');
});

test('node handshakes are rate-limited per peer (each re-keys the transport); other peers are not held back', async (t) => {
  // The default burst (4); a rate so low that no token comes back during the test, however slow
  // the machine (the default is 6 a minute).
  const { directory, nodeA, nodeB } = await twoAgents(t, { nodeHandshakes: { perMinute: 0.01 } });
  const nodeC = await startAgent({ nodeName: 'node-c', address: '127.0.0.4', ca, settings: { retry: { attempts: 1 } } }, directory);
  t.teardown(() => nodeC.close());
  const nodeHandshake = (from: TestAgent) => from.initiator.authenticateNode({ remoteNode: nodeB.nodeName, address: { host: nodeB.address, port: nodeB.port } });
  // A peer may re-authenticate its link 4 times in a row, then only as tokens come back.
  for (let i = 0; i < 4; i++) await nodeHandshake(nodeA);
  const refused = await t.throwsAsync(nodeHandshake(nodeA));
  t.is((refused as { failureClass?: string }).failureClass, 'refused', 'retryable: the peer backs off');
  t.is(await metricValue(nodeB.registry, 'meshauth_handshake_connections_rejected_total', { limit: 'node_handshake_rate' }), 1);
  t.is(nodeB.results.filter((result) => result.kind === 'node').length, 4, 'the refused one re-keyed nothing');
  await nodeHandshake(nodeC);
  t.is(nodeB.results.filter((result) => result.kind === 'node' && result.remoteNode === 'node-c').length, 1);
});
