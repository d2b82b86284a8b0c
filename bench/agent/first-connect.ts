// first_connect_*: two real agents (static cluster config, shared dev CA, transport none,
// handshakes over loopback) gating two workloads in network namespaces; each round makes a new
// pair appear and times one TCP connect, measured by the client in its namespace.
import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { Agent } from '../../src/agent/agent.js';
import { parseConfig, type ConfigInput } from '../../src/config/config.js';
import { Datapath } from '../../src/datapath/gate/datapath.js';
import { sleep } from '../../src/util/backoff.js';
import { silentLogger } from '../../src/util/logger.js';
import { nsenterArgs } from '../../src/netns/exec.js';
import { assertGateBuilt } from '../../test/helpers/datapath-fixture.js';
import { Topology } from '../../test/helpers/netns.js';
import { checkpoint } from './interrupt.js';
import { TD } from './pairs.js';

export const CONNECT_ROUNDS = 5;
export const ON_DEMAND_ROUNDS = 3;

const CONNECT_SCRIPT = `
import json, socket, sys, time
for line in sys.stdin:
    dst, port, timeout = line.split()
    start = time.monotonic()
    try:
        socket.create_connection((dst, int(port)), timeout=float(timeout)).close()
        ok = True
    except OSError:
        ok = False
    print(json.dumps({"ok": ok, "ms": (time.monotonic() - start) * 1000}), flush=True)
`;
const PROBE_TCP_PORT = 7001; // test/helpers/netns-probe.py accepts here in every workload
const CONNECT_TIMEOUT_S = 10;
/** Idle time before a timed connect, the same for every kind (a connect after a pause is slower than back to back). */
const IDLE_BEFORE_CONNECT_MS = 300;

/** A TCP client inside a namespace that times its own connects (no process start per connect). */
class Connector {
  private readonly waiters: ((reply: { ok: boolean; ms: number }) => void)[] = [];
  private readonly exited: Promise<void>;
  private readonly process;

  constructor(netns: string) {
    this.process = spawn('nsenter', nsenterArgs(netns, 'python3', ['-u', '-c', CONNECT_SCRIPT]), { stdio: ['pipe', 'pipe', 'inherit'] });
    this.exited = new Promise((resolve) => this.process.once('exit', () => resolve()));
    this.process.stdin.on('error', () => {}); // a dead connector fails its connect below instead
    createInterface({ input: this.process.stdout }).on('line', (line) => this.waiters.shift()?.(JSON.parse(line) as { ok: boolean; ms: number }));
    void this.exited.then(() => {
      for (const waiter of this.waiters.splice(0)) waiter({ ok: false, ms: Number.NaN });
    });
  }

  /** Connect duration in ms, as the client measured it; throws when the connect failed. */
  connect(dst: string): Promise<number> {
    return new Promise((resolve, reject) => {
      this.waiters.push((reply) => (reply.ok ? resolve(reply.ms) : reject(new Error(`TCP connect to ${dst} failed (${reply.ms.toFixed(0)} ms)`))));
      this.process.stdin.write(`${dst} ${PROBE_TCP_PORT} ${CONNECT_TIMEOUT_S}\n`);
    });
  }

  async stop(): Promise<void> {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill('SIGKILL');
    await this.exited;
  }
}

async function waitFor(check: () => boolean, message: string, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    checkpoint();
    if (performance.now() > deadline) throw new Error(`timed out: ${message}`);
    await sleep(1);
  }
}

export interface ConnectRound {
  connectMs: number;
  /** Endpoints appeared → the pair authenticated on both nodes (only where the round waits for it). */
  authMs?: number;
  /** Packets the two gates dropped for want of an entry during the round. */
  drops: number;
}

export interface FirstConnect {
  baseline: ConnectRound[];
  /** After the proactive handshake. */
  proactive: ConnectRound[];
  /** Racing the proactive handshake. */
  racing: ConnectRound[];
  onDemand: ConnectRound[];
}

const WEB = `spiffe://${TD}/ns/shop/sa/web`;
const DB = (label: string) => `spiffe://${TD}/ns/shop/sa/db-${label}`;
const IDLE = `spiffe://${TD}/ns/shop/sa/idle`;

export async function firstConnect(cleanups: (() => unknown)[]): Promise<FirstConnect> {
  assertGateBuilt();
  const topology = await Topology.create({ teardown: (fn) => cleanups.push(fn) });
  const client = topology.workload('w1a');
  const server = topology.workload('w2a');
  const connector = new Connector(client.netns);
  cleanups.push(() => connector.stop());
  // Fills the neighbour caches along the path (no gate yet), so that no round pays for ARP.
  for (let i = 0; i < 3; i++) await connector.connect(server.ipv4);

  const dir = await mkdtemp(join(tmpdir(), 'meshauth-bench-agent-'));
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const loopback = `127.${100 + randomInt(100)}.${randomInt(250)}`;
  const port = 4250;
  const names = ['node-a', 'node-b'] as const;
  const nodes = names.map((name, i) => ({ name, address: `${loopback}.${i + 1}`, podCidrs: [`10.${i + 1}.0.0/16`], port }));
  const nodeOf = (node: 0 | 1) => topology.node(node === 0 ? 1 : 2);
  // The client endpoint stays; each round gives the server endpoint a new identity: a new pair.
  // "idle" is in no required pair: it only gets the gate attached to the server's interface.
  const config = (node: 0 | 1, serverId: string, proactive: boolean): ConfigInput => ({
    nodeName: names[node],
    trustDomain: TD,
    stateDir: join(dir, names[node]),
    identity: { provider: 'dev', dev: { caDir: join(dir, 'ca'), ttl: '1h' } },
    handshake: { listenAddress: nodes[node]!.address, sourceAddress: nodes[node]!.address, port },
    datapath: { enabled: true, pinDir: nodeOf(node).pinDir, netns: nodeOf(node).netns },
    transport: { mode: 'none' },
    metrics: { enabled: false },
    control: { socket: join(dir, names[node], 'control.sock') },
    auth: { proactive },
    cluster: {
      nodes,
      endpoints: [
        { ip: client.ipv4, spiffeId: WEB, node: 'node-a', interface: client.hostInterface.name },
        { ip: server.ipv4, spiffeId: serverId, node: 'node-b', interface: server.hostInterface.name },
      ],
      policy: { default: 'disabled', rules: [{ name: 'web-to-db', source: { spiffeId: WEB }, destination: { spiffeId: DB('*') }, mode: 'required' }] },
    },
  });
  const agents: Agent[] = [];
  cleanups.push(async () => {
    for (const agent of agents) await agent.stop();
  });
  for (const node of [0, 1] as const) agents.push(await Agent.start(parseConfig(config(node, IDLE, true)), { logger: silentLogger() }));
  await waitFor(() => agents.every((agent) => agent.status().peers.every((peer) => peer.state === 'up')), 'node links up');
  for (const agent of agents) await agent.settled(); // gates attached

  // Handles of our own on the agents' pins, to take the gate off for the baseline and put it back.
  const gates: Datapath[] = [];
  cleanups.push(() => gates.forEach((gate) => gate.close()));
  for (const node of [0, 1] as const) gates.push(await Datapath.open({ pinDir: nodeOf(node).pinDir }));
  const gated = [client.hostInterface, server.hostInterface];

  const holds = (serverId: string) =>
    agents.every((agent) => agent.status().pairs.some((pair) => (pair.remoteId === serverId || pair.localId === serverId) && pair.state === 'authenticated'));
  const dropped = () => agents.reduce((sum, agent) => sum + Number(agent.status().datapath?.counters.droppedNoEntry ?? 0), 0);
  let label = 0;
  const newPair = async (options: { proactive: boolean; waitForAuthentication: boolean }): Promise<ConnectRound> => {
    const serverId = DB(String(label++));
    const dropsBefore = dropped();
    const appeared = performance.now();
    agents.forEach((agent, node) => agent.reload(parseConfig(config(node as 0 | 1, serverId, options.proactive))));
    // The agents apply a change in a microtask: after this the gates know the new endpoint.
    await new Promise((resolve) => setImmediate(resolve));
    let authMs: number | undefined;
    if (options.waitForAuthentication) {
      await waitFor(() => holds(serverId), `pair with ${serverId} authenticated`);
      authMs = performance.now() - appeared;
      await sleep(Math.max(0, appeared + IDLE_BEFORE_CONNECT_MS - performance.now()));
    }
    const connectMs = await connector.connect(server.ipv4);
    await waitFor(() => holds(serverId), `pair with ${serverId} authenticated`);
    return { connectMs, ...(authMs !== undefined && { authMs }), drops: dropped() - dropsBefore };
  };
  const ungated = async (): Promise<ConnectRound> => {
    await gates[0]!.detach([client.hostInterface]);
    await gates[1]!.detach([server.hostInterface]);
    try {
      await sleep(IDLE_BEFORE_CONNECT_MS);
      return { connectMs: await connector.connect(server.ipv4), drops: 0 };
    } finally {
      await gates[0]!.install({ interfaces: [gated[0]!] });
      await gates[1]!.install({ interfaces: [gated[1]!] });
    }
  };

  // Interleaved, so that drift and background load hit every kind alike.
  const result: FirstConnect = { baseline: [], proactive: [], racing: [], onDemand: [] };
  for (let i = 0; i < CONNECT_ROUNDS; i++) {
    checkpoint();
    result.baseline.push(await ungated());
    result.proactive.push(await newPair({ proactive: true, waitForAuthentication: true }));
    result.racing.push(await newPair({ proactive: true, waitForAuthentication: false }));
    if (i < ON_DEMAND_ROUNDS) result.onDemand.push(await newPair({ proactive: false, waitForAuthentication: false }));
  }
  return result;
}
