// The transport routes a peer's pod CIDRs to it (IPsec policies, WireGuard allowed IPs and
// routes), and the peer names them itself, in its node frame. An authenticated node must still
// not claim address space the cluster does not give it: claiming another node's pods, this
// node's own pods or 0.0.0.0/0 would pull that traffic into its tunnel. The cluster state (static
// config or the Kubernetes Node objects) is the authority; a frame that claims more fails the
// node link, closed, until the two agree.
import test from 'ava';
import { Agent } from '../src/agent/agent.js';
import { NoTransport, type Transport, type TransportPeer } from '../src/datapath/transport/transport.js';
import { parseConfig, type ConfigInput } from '../src/config/config.js';
import { silentLogger } from '../src/util/logger.js';
import { agentConfig, eventually, tempDir } from './helpers/agents.js';

/** The no-op transport, remembering what it was asked to program. */
class RecordingTransport implements Transport {
  readonly kind = 'none';
  readonly upserts: { node: string; podCidrs: string[] }[] = [];
  async start(): Promise<void> {}
  localFrame(): object {
    return {};
  }
  async remove(): Promise<void> {}
  async close(): Promise<void> {}

  upsert(peer: TransportPeer): Promise<void> {
    this.upserts.push({ node: peer.node, podCidrs: peer.frame.podCidrs });
    return Promise.resolve();
  }
}

test('a node link whose peer claims pod CIDRs the cluster state does not give it stays down, and comes up once they agree', async (t) => {
  const dir = await tempDir(t);
  const port = 42_533;
  const cluster = (bCidrs: string[]): ConfigInput['cluster'] => ({
    nodes: [
      { name: 'node-a', address: '127.0.33.1', podCidrs: ['10.1.0.0/24'], port },
      { name: 'node-b', address: '127.0.33.2', podCidrs: bCidrs, port },
    ],
  });
  const auth = { proactiveGrace: '30s', failureBackoff: { initial: '100ms', max: '300ms' } };
  const configOf = (name: string, address: string, bCidrs: string[]) => parseConfig(agentConfig(dir, { name, address, overrides: { auth } }, cluster(bCidrs), port));
  const start = async (name: string, address: string, bCidrs: string[], transport: Transport) => {
    const agent = await Agent.start(configOf(name, address, bCidrs), { logger: silentLogger(), transport });
    t.teardown(() => agent.stop());
    return agent;
  };
  // node-b believes it owns node-a's pods and everything else; node-a's cluster state says
  // node-b has 10.2.0.0/24.
  const greedy = ['10.2.0.0/24', '10.1.0.0/24', '0.0.0.0/0'];
  const onA = new RecordingTransport();
  const b = await start('node-b', '127.0.33.2', greedy, new NoTransport());
  const a = await start('node-a', '127.0.33.1', ['10.2.0.0/24'], onA);
  const peerOfA = () => a.status().peers.find((p) => p.node === 'node-b');

  await eventually(() => peerOfA()?.state === 'failed', 'node-a refused node-b\'s claims', 20_000);
  t.is(peerOfA()?.lastError, 'unauthorized');
  t.deepEqual(onA.upserts, [], 'node-a programmed nothing for node-b');

  // The claim node-b makes comes from its own view of itself: once that agrees with node-a's,
  // the next attempt brings the link up with exactly the assigned CIDR.
  b.reload(configOf('node-b', '127.0.33.2', ['10.2.0.0/24']));
  await eventually(() => peerOfA()?.state === 'up', 'node-a\'s link to node-b came up', 20_000);
  t.deepEqual(onA.upserts, [{ node: 'node-b', podCidrs: ['10.2.0.0/24'] }]);
});
