// Node links: crossing node handshakes end on the same handshake on both nodes.
import test from 'ava';
import { PeerManager } from '../src/agent/peers.js';
import type { Transport, TransportPeer } from '../src/datapath/transport/transport.js';
import type { NodeInfo } from '../src/cluster/types.js';
import type { NodeAuthResult } from '../src/handshake/types.js';
import { SpiffeId } from '../src/identity/spiffe-id.js';
import { silentLogger } from '../src/util/logger.js';

const NODE_A: NodeInfo = { name: 'node-a', address: '192.0.2.1', podCidrs: ['10.1.0.0/24'] };
const NODE_B: NodeInfo = { name: 'node-b', address: '192.0.2.2', podCidrs: ['10.2.0.0/24'] };

/** Records which handshake's keys were programmed last for each peer. */
class RecordingTransport implements Transport {
  readonly kind = 'none';
  readonly programmed = new Map<string, string>();
  start(): Promise<void> {
    return Promise.resolve();
  }
  localFrame(): Record<string, never> {
    return {};
  }
  upsert(peer: TransportPeer): Promise<void> {
    this.programmed.set(peer.node, peer.keys.wireguardPsk.reveal().toString());
    return Promise.resolve();
  }
  remove(_node: string): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** One node's view of a node handshake named `handshake`, from the given role. */
function result(self: NodeInfo, peer: NodeInfo, role: 'initiator' | 'responder', handshake: string): NodeAuthResult {
  const secret = { reveal: () => Buffer.from(handshake), length: handshake.length };
  const now = new Date();
  return {
    kind: 'node',
    role,
    localId: SpiffeId.parse(`spiffe://td/meshauth/node/${self.name}`),
    remoteId: SpiffeId.parse(`spiffe://td/meshauth/node/${peer.name}`),
    remoteNode: peer.name,
    localSerial: '1',
    remoteSerial: '2',
    authenticatedAt: now,
    localNotAfter: new Date(now.getTime() + 3_600_000),
    remoteNotAfter: new Date(now.getTime() + 3_600_000),
    expiresAt: new Date(now.getTime() + 3_600_000),
    keyMaterial: secret,
    peerFrame: { nodeName: peer.name, podCidrs: peer.podCidrs },
    ownFrame: { nodeName: self.name, podCidrs: self.podCidrs },
    transportKeys: { wireguardPsk: secret, espInbound: secret, espOutbound: secret },
  } as unknown as NodeAuthResult;
}

function manager(self: NodeInfo, transport: Transport): PeerManager {
  const peers = new PeerManager({
    localNode: self.name,
    transport,
    // Neither node initiates on its own here: the test hands both of them both handshakes.
    authenticate: () => new Promise(() => {}),
    timing: { fraction: 2 / 3, jitter: 0.2, failureBackoff: { initialMs: 1000, maxMs: 1000 }, proactiveGraceMs: 60_000 },
    logger: silentLogger(),
    onLinkChanged: () => {},
  });
  return peers;
}

for (const order of ['leader first', 'follower first'] as const) {
  test(`crossing node handshakes (${order} on node-a, the other order on node-b) leave both nodes on the leader's keys`, async (t) => {
    const onA = new RecordingTransport();
    const onB = new RecordingTransport();
    const a = manager(NODE_A, onA);
    const b = manager(NODE_B, onB);
    a.setNodes([NODE_A, NODE_B]);
    b.setNodes([NODE_A, NODE_B]);
    // H1: initiated by node-a (the leader); H2: initiated by node-b at the same moment.
    const aResults = [result(NODE_A, NODE_B, 'initiator', 'H1'), result(NODE_A, NODE_B, 'responder', 'H2')];
    const bResults = [result(NODE_B, NODE_A, 'responder', 'H1'), result(NODE_B, NODE_A, 'initiator', 'H2')];
    for (const r of order === 'leader first' ? aResults : aResults.reverse()) await a.record(r);
    for (const r of order === 'leader first' ? bResults.reverse() : bResults) await b.record(r);
    t.is(onA.programmed.get('node-b'), 'H1');
    t.is(onB.programmed.get('node-a'), 'H1');
    a.stop();
    b.stop();
  });
}

test('a trust-bundle change re-validates node links: a peer that no longer validates loses its link and transport peer', async (t) => {
  const transport = new RecordingTransport();
  const removed: string[] = [];
  transport.remove = (node: string) => {
    removed.push(node);
    return Promise.resolve();
  };
  let attempts = 0;
  const linkChanges: string[] = [];
  const peers = new PeerManager({
    localNode: NODE_A.name,
    transport,
    authenticate: () => {
      attempts++;
      return Promise.reject(Object.assign(new Error('peer chain no longer validates'), { failureClass: 'untrusted' }));
    },
    timing: { fraction: 2 / 3, jitter: 0.2, failureBackoff: { initialMs: 60_000, maxMs: 60_000 }, proactiveGraceMs: 60_000 },
    logger: silentLogger(),
    onLinkChanged: (node) => linkChanges.push(node),
  });
  peers.setNodes([NODE_A, NODE_B]);
  await peers.settled();
  await peers.record(result(NODE_A, NODE_B, 'initiator', 'H1'));
  t.truthy(peers.link('node-b'));
  const before = attempts;
  peers.onBundleChange({ removed: [], changed: ['other.org'] }, 'td');
  t.is(attempts, before, 'another trust domain: nothing to re-validate');
  peers.onBundleChange({ removed: [], changed: ['td'] }, 'td');
  await peers.settled();
  t.is(attempts, before + 1, 're-authenticated at once');
  t.is(peers.link('node-b'), undefined, 'the link is down');
  t.deepEqual(removed, ['node-b']);
  t.is(linkChanges.at(-1), 'node-b');
  peers.stop();
});

test('an unloaded node trust domain takes every link down at once', async (t) => {
  const transport = new RecordingTransport();
  const peers = manager(NODE_A, transport);
  peers.setNodes([NODE_A, NODE_B]);
  await peers.record(result(NODE_A, NODE_B, 'initiator', 'H1'));
  t.truthy(peers.link('node-b'));
  peers.onBundleChange({ removed: ['td'], changed: [] }, 'td');
  t.is(peers.link('node-b'), undefined);
  peers.stop();
});
