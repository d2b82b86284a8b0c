// Real agents in this process, on loopback addresses of their own, for agent tests. Each test
// gets a temp dir holding the agents' state, a shared dev CA and control sockets.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { Agent } from '../../src/agent/agent.js';
import { parseConfig, type ConfigInput } from '../../src/config/config.js';
import { silentLogger } from '../../src/util/logger.js';

export interface AgentSpec {
  name: string;
  /** 127.0.0.x: the agent's node address (handshake listener and source). */
  address: string;
  overrides?: Partial<ConfigInput>;
}

export async function tempDir(t: ExecutionContext, prefix = 'meshauth-agent-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** The config of one agent in a test cluster: shared dev CA, its own state, loopback listener. */
export function agentConfig(dir: string, spec: AgentSpec, cluster: ConfigInput['cluster'], port: number): ConfigInput {
  return {
    nodeName: spec.name,
    trustDomain: 'example.org',
    stateDir: join(dir, spec.name),
    identity: { provider: 'dev', dev: { caDir: join(dir, 'ca'), ttl: '1h' } },
    handshake: { listenAddress: spec.address, sourceAddress: spec.address, port },
    datapath: { enabled: false },
    transport: { mode: 'none' },
    metrics: { enabled: false },
    control: { socket: join(dir, spec.name, 'control.sock') },
    cluster,
    // The grace is long enough that the proactive initiator is always the one that initiates,
    // however loaded the machine.
    auth: { proactiveGrace: '5s', failureBackoff: { initial: '100ms', max: '1s' } },
    ...spec.overrides,
  };
}

export async function startAgent(t: ExecutionContext, config: ConfigInput): Promise<Agent> {
  const agent = await Agent.start(parseConfig(config), { logger: silentLogger() });
  t.teardown(() => agent.stop());
  return agent;
}

/** Polls until check() returns true or the deadline passes (then fails with the message). */
export async function eventually(check: () => boolean | Promise<boolean>, message: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out: ${message}`);
}
