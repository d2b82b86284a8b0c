// The two sides of a node handshake bring their link up independently, each after programming
// its transport. The quicker side (here the proactive initiator) may ask for a pair while the
// other side's link is still coming up: that must be a transient refusal the initiator retries
// within its handshake retries, not a policy denial that parks the pair for a failure backoff.
// Found by the two-node demo (wireguard-go programs one side ~70 ms after the other).
import test from 'ava';
import { Agent } from '../src/agent/agent.js';
import { NoTransport, type Transport } from '../src/datapath/transport/transport.js';
import { parseConfig } from '../src/config/config.js';
import { silentLogger } from '../src/util/logger.js';
import { agentConfig, eventually, tempDir } from './helpers/agents.js';

const WEB = 'spiffe://example.org/ns/shop/sa/web';
const DB = 'spiffe://example.org/ns/shop/sa/db';

/** The no-op transport, with a slow upsert: how long this side takes to program a new peer. */
class SlowTransport extends NoTransport implements Transport {
  constructor(private readonly delayMs: number) {
    super();
  }

  override async upsert(): Promise<void> {
    await new Promise((resolve) => setTimeout(resolve, this.delayMs));
  }
}

test('a pair asked for while the responder is still bringing its node link up is authenticated without a policy refusal', async (t) => {
  const dir = await tempDir(t);
  const port = 42_531;
  const cluster = {
    nodes: [
      { name: 'node-a', address: '127.0.31.1', podCidrs: ['10.1.0.0/24'], port },
      { name: 'node-b', address: '127.0.31.2', podCidrs: ['10.2.0.0/24'], port },
    ],
    endpoints: [
      { ip: '10.1.0.2', spiffeId: WEB, node: 'node-a' },
      { ip: '10.2.0.2', spiffeId: DB, node: 'node-b' },
    ],
    policy: { default: 'required' as const },
  };
  // A failed pair would wait 30 s, and node-b would not initiate for 30 s: only node-a's first
  // authentication (with the handshake layer's own retries) can make the deadlines below. They
  // are generous for a loaded machine (20 s, against well under a second), yet short of those
  // 30 s; and the settled pair itself says whether it was refused (lastError, state, trigger).
  const auth = { proactiveGrace: '30s', failureBackoff: { initial: '30s', max: '30s' } };
  const start = async (name: string, address: string, transport: Transport) => {
    const config = agentConfig(dir, { name, address, overrides: { auth } }, cluster, port);
    const agent = await Agent.start(parseConfig(config), { logger: silentLogger(), transport });
    t.teardown(() => agent.stop());
    return agent;
  };
  // node-b first, so that node-a's node handshake (it initiates: the lower name) finds it listening.
  const b = await start('node-b', '127.0.31.2', new SlowTransport(250));
  const a = await start('node-a', '127.0.31.1', new NoTransport());

  const onA = () => a.status().pairs.find((p) => p.localId === WEB && p.remoteId === DB);
  await eventually(() => onA()?.state !== 'pending', 'the first authentication of web -> db settled', 20_000);
  t.is(onA()?.lastError, undefined, 'no failure was recorded for the pair');
  t.like(onA(), { state: 'authenticated', trigger: 'proactive' });
  await eventually(() => b.status().pairs.some((p) => p.localId === DB && p.state === 'authenticated'), 'node-b holds the pair too', 20_000);
});
