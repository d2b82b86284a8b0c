// Agent-scale benchmark (root): `npm run bench:agent [-- --json]`. Every figure is printed with its
// ratio to the target; with --json the last line is one JSON object.
//
//   rss_mb_100k          RSS of a child process holding 100,000 authenticated pairs the way the agent
//                        records them (AuthManager.setDesired + record → AuthCache → the real pinned BPF
//                        auth map), next to the same child holding none. Children, so the harness's own
//                        heap does not count; the bench runs built code (npm run build), as an agent does.
//   restore_ms_100k      AuthCache.restore() in a fresh child process (a restarting agent: cold JIT) over a
//                        pinned map filled with batchSetAuth, whose numbers a persisted NumericIds names.
//   reauth_peak_to_mean  10,000 pairs recorded at the same instant through AuthManager.record, all led by
//                        this node: the most re-authentications its scheduler has due in any 1 s (sliding)
//                        window, over the mean per second across the jitter window. The due times are read
//                        back from the manager's own scheduler: the production scheduling, not a copy of it.
//   revoke_ms_p99        AuthManager.setDesired with a keyed plan without one more pair (what the agent does
//                        when an endpoint, identity or policy goes away; computing the plan itself is not
//                        timed) until that pair's entry is gone from the pinned map,
//                        read back through the map; 100,000 pairs held, 200 revocations (and, for
//                        information, the same with 10,000 pairs held). Revocations are 50 ms apart:
//                        the agent applies one plan per burst of cluster events, and 200 plans of
//                        100,000 pairs back to back would time this harness's garbage collector.
//   first_connect_*      two real agents (static cluster config, shared dev CA, transport none, handshakes
//                        over loopback) gating two workloads in network namespaces (test/helpers/netns.ts).
//                        Each round makes a new pair appear (a new identity on the server's endpoint) and
//                        times one TCP connect, measured by the client in its namespace:
//                          proactive      the connect starts once the proactive handshake has completed
//                                         (the steady state the "a new connection sees no drop"
//                                         describes): first_connect_ratio_proactive;
//                          racing         the connect starts as soon as the agents have applied the change,
//                                         racing the proactive handshake (informational: the SYN is
//                                         dropped and TCP retransmits it after 1 s);
//                          on demand      proactive off: the dropped SYN's signal triggers the handshake;
//                          baseline       the gate detached from both workloads.
//                        Kinds are interleaved, and every connect but the first two follows the same idle
//                        time (a connect after a pause is slower than one right after another).
//
// Pin dirs, namespaces and temp dirs are unique per run and removed at the end, also after a failure
// or an interruption (SIGINT/SIGTERM).
import { fork, spawn } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
// Only what holds pairs is imported statically: the RSS children load this file, and must not
// load the whole agent. The two-agent part imports the rest when it runs.
import type { Agent } from '../src/agent/agent.js';
import { authOptionsSchema } from '../src/auth/options.js';
import { AuthCache } from '../src/auth/cache.js';
import { AuthManager, type AuthManagerOptions, type PairAuthentication } from '../src/auth/manager.js';
import { NumericIds } from '../src/auth/numeric-ids.js';
import type { ReauthScheduler } from '../src/auth/scheduler.js';
import { keyed, pairKeyString, type KeyedPair, type PairKey } from '../src/auth/types.js';
import type { ConfigInput } from '../src/config/config.js';
import { Datapath, monotonicNowNs, type AuthEntry } from '../src/datapath/gate/datapath.js';
import type { AuthKey } from '../src/datapath/gate/layout.js';
import { sleep } from '../src/util/backoff.js';
import { silentLogger } from '../src/util/logger.js';

const json = process.argv.includes('--json');
const TARGETS = {
  rssMb: 200,
  restoreMs: 1000,
  reauthPeakToMean: 2,
  revokeP99Ms: 100,
  firstConnectRatio: 1.5,
};
const HELD_PAIRS = 100_000;
const REAUTH_PAIRS = 10_000;
const REVOCATIONS = 200;
const MS_BETWEEN_REVOCATIONS = 50;
const RESTORE_RUNS = 3;
const RSS_RUNS = 3;
const CONNECT_ROUNDS = 5;
const ON_DEMAND_ROUNDS = 3;

/** Set by SIGINT/SIGTERM: the run stops at the next checkpoint and cleans up (a second signal exits at once). */
let interruptedBy: string | undefined;

function checkpoint(): void {
  if (interruptedBy) throw new Error(`interrupted by ${interruptedBy}`);
}

const TD = 'bench.test';
const LOCAL_NODE = 'node-000';
/** SVID lifetime (the dev provider's default): a pair expires with its certificates. */
const LIFETIME_MS = 3_600_000;
const AUTH = authOptionsSchema.parse({});
/** The agent's default timing, as the config schema sets it. */
const TIMING: AuthManagerOptions['timing'] = {
  fraction: AUTH.reauthFraction,
  jitter: AUTH.reauthJitter,
  failureBackoff: { initialMs: AUTH.failureBackoff.initial, maxMs: AUTH.failureBackoff.max },
  proactiveGraceMs: AUTH.proactiveGrace,
};

// ---- pairs as a node sees them ----

const LOCAL_IDENTITIES = 100;
const REMOTE_NODES = 100;

/**
 * `count` pairs between 100 local identities and count/100 remote identities spread over 100
 * nodes, with one string per identity shared by all its pairs, as the agent's plan builds them.
 */
function benchPairs(count: number): PairKey[] {
  const locals = Array.from({ length: LOCAL_IDENTITIES }, (_, i) => `spiffe://${TD}/ns/team-${i % 10}/sa/frontend-${i}`);
  const remotes = Array.from({ length: Math.ceil(count / LOCAL_IDENTITIES) }, (_, j) => ({
    id: `spiffe://${TD}/ns/team-${j % 50}/sa/backend-${j}`,
    node: `node-${String(1 + (j % REMOTE_NODES)).padStart(3, '0')}`,
  }));
  return Array.from({ length: count }, (_, i) => {
    const remote = remotes[Math.floor(i / LOCAL_IDENTITIES)]!;
    return { localId: locals[i % LOCAL_IDENTITIES]!, remoteId: remote.id, remoteNode: remote.node };
  });
}

/** What a successful handshake at `at` reports: valid for the certificates' lifetime. */
function authenticated(pair: PairKey, at: number): PairAuthentication {
  const notAfter = at + LIFETIME_MS;
  return { ...pair, authenticatedAt: at, expiresAt: notAfter, localNotAfter: notAfter, remoteNotAfter: notAfter };
}

/** The agent's cache and manager over a real map; pairs are recorded directly, no handshake runs. */
function benchManager(datapath: Datapath, ids: NumericIds): { cache: AuthCache; manager: AuthManager } {
  const logger = silentLogger();
  const cache = new AuthCache({ map: datapath, ids, capacity: AUTH.cacheSize, logger });
  const link = { expiresAt: Number.POSITIVE_INFINITY, epoch: 1 };
  const manager = new AuthManager({
    cache,
    localNode: LOCAL_NODE,
    timing: TIMING,
    logger,
    proactive: () => false,
    authenticate: () => Promise.reject(new Error('this bench runs no handshakes')),
    authenticateLocal: () => undefined,
    nodeLink: () => link,
  });
  return { cache, manager };
}

function recordAll(manager: AuthManager, pairs: readonly PairKey[], at: number): void {
  manager.setDesired(pairs);
  for (const pair of pairs) {
    if (!manager.record(authenticated(pair, at), 'proactive')) throw new Error(`pair not recorded: ${pairKeyString(pair)}`);
  }
}

function authKeyOf(ids: NumericIds, pair: PairKey): AuthKey {
  return { localIdentity: ids.identity(pair.localId), remoteIdentity: ids.identity(pair.remoteId), remoteNode: ids.node(pair.remoteNode) };
}

// ---- child processes ----

type ChildTask = { kind: 'hold'; pinDir: string; pairs: number } | { kind: 'restore'; pinDir: string; idsPath: string };

interface HoldResult {
  rssMb: number;
  heapMb: number;
  held: number;
}

interface RestoreResult {
  openMs: number;
  restoreMs: number;
  adoptMs: number;
  restored: number;
  rssMb: number;
}

const megabytes = (bytes: number) => bytes / (1024 * 1024);

function collectGarbage(): void {
  if (!globalThis.gc) throw new Error('the bench child needs --expose-gc');
  globalThis.gc();
  globalThis.gc();
}

async function childHold(task: Extract<ChildTask, { kind: 'hold' }>): Promise<HoldResult> {
  const datapath = await Datapath.open({ pinDir: task.pinDir });
  const { cache, manager } = benchManager(datapath, await NumericIds.load());
  recordAll(manager, benchPairs(task.pairs), Date.now());
  collectGarbage();
  await sleep(200);
  const { rss, heapUsed } = process.memoryUsage();
  const result = { rssMb: megabytes(rss), heapMb: megabytes(heapUsed), held: cache.size };
  manager.stop();
  datapath.close();
  return result;
}

async function childRestore(task: Extract<ChildTask, { kind: 'restore' }>): Promise<RestoreResult> {
  const t0 = performance.now();
  const datapath = await Datapath.open({ pinDir: task.pinDir });
  const ids = await NumericIds.load(task.idsPath);
  const { cache, manager } = benchManager(datapath, ids);
  const t1 = performance.now();
  const restored = cache.restore();
  const t2 = performance.now();
  manager.adoptRestored(restored);
  const t3 = performance.now();
  collectGarbage();
  const result = { openMs: t1 - t0, restoreMs: t2 - t1, adoptMs: t3 - t2, restored: restored.length, rssMb: megabytes(process.memoryUsage().rss) };
  manager.stop();
  datapath.close();
  return result;
}

function runChild<T>(task: ChildTask): Promise<T> {
  const child = fork(fileURLToPath(import.meta.url), ['--child', JSON.stringify(task)], {
    execArgv: [...process.execArgv, '--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise<T>((resolve, reject) => {
    let result: T | undefined;
    child.once('message', (message) => (result = message as T));
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (result !== undefined) resolve(result);
      else reject(new Error(`bench child (${task.kind}) exited with ${code ?? signal} and no result`));
    });
  });
}

// ---- the measurements ----

interface MemoryFigures {
  empty: HoldResult;
  /** The run with the median RSS of RSS_RUNS (the garbage collector's headroom varies). */
  full: HoldResult;
  fullRunsMb: number[];
  /** A node process with nothing loaded. */
  bareNodeMb: number;
}

/** RSS of a plain `node -e` with the given loader flags, after a full GC. */
function bareRss(execArgv: string[]): Promise<number> {
  const script = 'global.gc(); global.gc(); setTimeout(() => console.log(process.memoryUsage().rss), 200);';
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...execArgv, '--expose-gc', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(megabytes(Number(out))) : reject(new Error(`node -e exited with ${code}`))));
  });
}

async function memory(pinDir: string): Promise<MemoryFigures> {
  const empty = await runChild<HoldResult>({ kind: 'hold', pinDir, pairs: 0 });
  const runs: HoldResult[] = [];
  for (let run = 0; run < RSS_RUNS; run++) {
    checkpoint();
    const full = await runChild<HoldResult>({ kind: 'hold', pinDir, pairs: HELD_PAIRS });
    if (full.held !== HELD_PAIRS) throw new Error(`the child held ${full.held} pairs, not ${HELD_PAIRS}`);
    runs.push(full);
  }
  runs.sort((a, b) => a.rssMb - b.rssMb);
  const full = runs[Math.floor(runs.length / 2)]!;
  return { empty, full, fullRunsMb: runs.map((r) => r.rssMb), bareNodeMb: await bareRss([]) };
}

async function restore(pinDir: string, idsPath: string): Promise<RestoreResult[]> {
  const datapath = await Datapath.open({ pinDir });
  try {
    const ids = await NumericIds.load(idsPath);
    const expiryNs = monotonicNowNs() + BigInt(LIFETIME_MS) * 1_000_000n;
    const entries: AuthEntry[] = benchPairs(HELD_PAIRS).map((pair) => ({ key: authKeyOf(ids, pair), expiryNs }));
    await ids.save();
    datapath.batchSetAuth(entries);
  } finally {
    datapath.close();
  }
  const runs: RestoreResult[] = [];
  for (let run = 0; run < RESTORE_RUNS; run++) {
    checkpoint();
    const result = await runChild<RestoreResult>({ kind: 'restore', pinDir, idsPath });
    if (result.restored !== HELD_PAIRS) throw new Error(`restore rebuilt ${result.restored} entries, not ${HELD_PAIRS}`);
    runs.push(result);
  }
  return runs;
}

/** The most values in any half-open window [t, t + width) of the sorted values. */
function peakInWindow(sorted: readonly number[], width: number): number {
  let peak = 0;
  let start = 0;
  for (let end = 0; end < sorted.length; end++) {
    while (sorted[end]! - sorted[start]! >= width) start++;
    peak = Math.max(peak, end - start + 1);
  }
  return peak;
}

interface ReauthFigures {
  peakToMean: number;
  peak: number;
  mean: number;
  firstS: number;
  lastS: number;
}

async function reauthSpread(pinDir: string): Promise<ReauthFigures> {
  const datapath = await Datapath.open({ pinDir });
  try {
    const { manager } = benchManager(datapath, await NumericIds.load());
    const pairs = benchPairs(REAUTH_PAIRS);
    const at = Date.now();
    recordAll(manager, pairs, at);
    // The manager keeps its scheduler private; its dueAt reads back what record() scheduled.
    const scheduler = (manager as unknown as { scheduler: ReauthScheduler<string> }).scheduler;
    const due = pairs
      .map((pair) => {
        const dueAt = scheduler.dueAt(pairKeyString(pair));
        if (dueAt === undefined) throw new Error(`no re-authentication scheduled for ${pairKeyString(pair)}`);
        return dueAt - at;
      })
      .sort((a, b) => a - b);
    manager.stop();
    const peak = peakInWindow(due, 1000);
    const mean = REAUTH_PAIRS / ((TIMING.jitter * LIFETIME_MS) / 1000);
    return { peakToMean: peak / mean, peak, mean, firstS: due[0]! / 1000, lastS: due.at(-1)! / 1000 };
  } finally {
    datapath.close();
  }
}

/**
 * Revocation latency with `held` pairs: each round drops one more pair from the desired set and
 * times setDesired until the pair's entry is gone from the pinned map, read back through it.
 */
async function revocation(pinDir: string, held: number): Promise<number[]> {
  const datapath = await Datapath.open({ pinDir });
  try {
    const ids = await NumericIds.load();
    const { manager } = benchManager(datapath, ids);
    const pairs = benchPairs(held);
    recordAll(manager, pairs, Date.now());
    const keyedPairs = pairs.map(keyed);
    const revoked = new Set<number>();
    const latencies: number[] = [];
    for (let round = 0; round < REVOCATIONS; round++) {
      checkpoint();
      const index = Math.floor(((round + 0.5) / REVOCATIONS) * pairs.length);
      const key = authKeyOf(ids, pairs[index]!);
      if (datapath.getAuth(key) === undefined) throw new Error('the pair to revoke has no map entry');
      revoked.add(index);
      // The agent hands setDesired its plan: a map keyed by the pairs' key strings, built once per
      // plan (outside this timing, like the plan itself).
      const remaining = new Map<string, KeyedPair>();
      for (const [i, pair] of keyedPairs.entries()) if (!revoked.has(i)) remaining.set(pair.key, pair);
      await sleep(MS_BETWEEN_REVOCATIONS);
      const start = performance.now();
      manager.setDesired(remaining);
      while (datapath.getAuth(key) !== undefined) {
        if (performance.now() - start > 5000) throw new Error('a revoked pair is still in the map after 5 s');
        await sleep(1);
      }
      latencies.push(performance.now() - start);
    }
    manager.stop();
    return latencies;
  } finally {
    datapath.close();
  }
}

// ---- first connect through two real agents ----

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
    this.process = spawn('nsenter', [`--net=/run/netns/${netns}`, 'python3', '-u', '-c', CONNECT_SCRIPT], { stdio: ['pipe', 'pipe', 'inherit'] });
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

interface ConnectRound {
  connectMs: number;
  /** Endpoints appeared → the pair authenticated on both nodes (only where the round waits for it). */
  authMs?: number;
  /** Packets the two gates dropped for want of an entry during the round. */
  drops: number;
}

interface FirstConnect {
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

async function firstConnect(cleanups: (() => unknown)[]): Promise<FirstConnect> {
  const { Agent: AgentClass } = await import('../src/agent/agent.js');
  const { parseConfig } = await import('../src/config/config.js');
  const { assertGateBuilt } = await import('../test/helpers/datapath-fixture.js');
  const { Topology } = await import('../test/helpers/netns.js');
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
  for (const node of [0, 1] as const) agents.push(await AgentClass.start(parseConfig(config(node, IDLE, true)), { logger: silentLogger() }));
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

// ---- report ----

function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

const median = (values: readonly number[]) => percentile(values, 50);
const fmt = (n: number) => (Math.abs(n) >= 1000 ? Math.round(n).toLocaleString('en-US') : n.toFixed(Math.abs(n) < 10 ? 3 : 1));
const list = (values: readonly number[]) => `[${values.map((v) => v.toFixed(v < 10 ? 2 : 0)).join(', ')}]`;
const thousands = (n: number) => n.toLocaleString('en-US');

function report(label: string, value: number, unit: string, target: number): void {
  const ok = value <= target;
  console.log(`${label.padEnd(58)} ${fmt(value).padStart(9)} ${unit.padEnd(3)} target ≤ ${fmt(target)} (${(value / target).toFixed(2)}× target) ${ok ? 'ok' : 'MISSED'}`);
}

function info(label: string, text: string): void {
  console.log(`${label.padEnd(58)} ${text}`);
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the agent benchmark needs root (BPF maps, network namespaces)');
  const tag = randomBytes(4).toString('hex');
  const pinDir = (label: string) => `/sys/fs/bpf/meshauth-bench-agent-${tag}-${label}`;
  const cleanups: (() => unknown)[] = [];
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      if (interruptedBy) process.exit(130);
      interruptedBy = signal;
    });
  }
  const scratch = await mkdtemp(join(tmpdir(), 'meshauth-bench-agent-'));
  cleanups.push(() => rm(scratch, { recursive: true, force: true }));
  for (const label of ['memory', 'restore', 'reauth', 'revoke', 'revoke-small']) cleanups.push(() => Datapath.uninstall({ pinDir: pinDir(label) }));
  try {
    const rss = await memory(pinDir('memory'));
    const restores = await restore(pinDir('restore'), join(scratch, 'numeric-ids.json'));
    checkpoint();
    const reauth = await reauthSpread(pinDir('reauth'));
    const revokes = await revocation(pinDir('revoke'), HELD_PAIRS);
    const revokesSmall = await revocation(pinDir('revoke-small'), REAUTH_PAIRS);
    const connects = await firstConnect(cleanups);
    checkpoint();

    const restoreMs = median(restores.map((r) => r.restoreMs));
    const connectMs = (rounds: ConnectRound[]) => rounds.map((r) => r.connectMs);
    const baselineMs = median(connectMs(connects.baseline));
    const proactiveMs = median(connectMs(connects.proactive));
    const racingMs = median(connectMs(connects.racing));
    const onDemandMs = median(connectMs(connects.onDemand));
    const result = {
      rss_mb_100k: rss.full.rssMb,
      rss_mb_0: rss.empty.rssMb,
      rss_mb_delta_100k: rss.full.rssMb - rss.empty.rssMb,
      rss_bytes_per_pair: ((rss.full.rssMb - rss.empty.rssMb) * 1024 * 1024) / HELD_PAIRS,
      heap_mb_100k: rss.full.heapMb,
      rss_mb_100k_runs: rss.fullRunsMb,
      rss_mb_node_alone: rss.bareNodeMb,
      restore_ms_100k: restoreMs,
      restore_runs_ms: restores.map((r) => r.restoreMs),
      restore_open_ms: median(restores.map((r) => r.openMs)),
      restore_adopt_ms: median(restores.map((r) => r.adoptMs)),
      restore_rss_mb: median(restores.map((r) => r.rssMb)),
      reauth_peak_to_mean: reauth.peakToMean,
      reauth_peak_per_s: reauth.peak,
      reauth_mean_per_s: reauth.mean,
      revoke_held_pairs: HELD_PAIRS,
      revoke_ms_p99: percentile(revokes, 99),
      revoke_ms_p50: median(revokes),
      revoke_ms_max: Math.max(...revokes),
      revoke_ms_p99_10k: percentile(revokesSmall, 99),
      revoke_ms_p50_10k: median(revokesSmall),
      first_connect_ms_baseline: baselineMs,
      first_connect_ms_proactive: proactiveMs,
      first_connect_ratio_proactive: proactiveMs / baselineMs,
      first_connect_ms_racing: racingMs,
      first_connect_ratio_racing: racingMs / baselineMs,
      proactive_auth_ms: median(connects.proactive.map((r) => r.authMs!)),
      first_connect_ms_on_demand: onDemandMs,
      first_connect_ratio_on_demand: onDemandMs / baselineMs,
      first_connect_drops_proactive: connects.proactive.map((r) => r.drops),
      first_connect_drops_racing: connects.racing.map((r) => r.drops),
      first_connect_drops_on_demand: connects.onDemand.map((r) => r.drops),
    };

    console.log(`meshauth agent benchmark, Node ${process.version}, ${new Date().toISOString()}`);
    info('RSS, child holding 0 pairs (baseline)', `${fmt(rss.empty.rssMb)} MB (heap ${fmt(rss.empty.heapMb)} MB)`);
    report(`RSS, child holding ${thousands(HELD_PAIRS)} pairs (median of ${RSS_RUNS})`, rss.full.rssMb, 'MB', TARGETS.rssMb);
    info('  runs', `${list(rss.fullRunsMb)} MB`);
    info('  delta over the 0-pair baseline', `${fmt(result.rss_mb_delta_100k)} MB, ${fmt(result.rss_bytes_per_pair)} B/pair (heap ${fmt(rss.full.heapMb)} MB)`);
    info('  of the baseline: node alone', `${fmt(rss.bareNodeMb)} MB`);
    report(`AuthCache.restore(), ${thousands(HELD_PAIRS)} entries (median of ${RESTORE_RUNS})`, restoreMs, 'ms', TARGETS.restoreMs);
    info('  runs; open + ids load; adoptRestored; RSS after', `${list(result.restore_runs_ms)} ms; ${fmt(result.restore_open_ms)} ms; ${fmt(result.restore_adopt_ms)} ms; ${fmt(result.restore_rss_mb)} MB`);
    report(`re-auth peak 1 s / mean, ${thousands(REAUTH_PAIRS)} pairs at once`, reauth.peakToMean, '', TARGETS.reauthPeakToMean);
    info(
      '  peak, mean per s; due window',
      `${reauth.peak}/s vs ${reauth.mean.toFixed(2)}/s; due ${fmt(reauth.firstS)}–${fmt(reauth.lastS)} s after authentication (lifetime ${LIFETIME_MS / 1000} s)`,
    );
    report(`revocation p99, ${thousands(HELD_PAIRS)} pairs held (${REVOCATIONS})`, result.revoke_ms_p99, 'ms', TARGETS.revokeP99Ms);
    info('  p50, max', `${fmt(result.revoke_ms_p50)} ms, ${fmt(result.revoke_ms_max)} ms`);
    info(`revocation p99, p50, ${thousands(REAUTH_PAIRS)} pairs held (${REVOCATIONS})`, `${fmt(result.revoke_ms_p99_10k)} ms, ${fmt(result.revoke_ms_p50_10k)} ms`);
    info(`first connect, gate detached (baseline, median of ${CONNECT_ROUNDS})`, `${fmt(baselineMs)} ms ${list(connectMs(connects.baseline))}`);
    report('first connect, new pair, after its proactive auth / baseline', result.first_connect_ratio_proactive, '×', TARGETS.firstConnectRatio);
    info(
      '  connect ms; SYNs dropped; endpoints appear → pair on both nodes',
      `${list(connectMs(connects.proactive))}; ${JSON.stringify(result.first_connect_drops_proactive)}; ${list(connects.proactive.map((r) => r.authMs!))} ms`,
    );
    info(
      'first connect, new pair, racing its proactive auth',
      `${fmt(racingMs)} ms (${fmt(result.first_connect_ratio_racing)}× baseline) ${list(connectMs(connects.racing))}; drops ${JSON.stringify(result.first_connect_drops_racing)}`,
    );
    info(
      `first connect, new pair, on demand (median of ${ON_DEMAND_ROUNDS})`,
      `${fmt(onDemandMs)} ms (${fmt(result.first_connect_ratio_on_demand)}× baseline) ${list(connectMs(connects.onDemand))}; drops ${JSON.stringify(result.first_connect_drops_on_demand)}`,
    );
    if (json) console.log(JSON.stringify(result));
  } finally {
    for (const cleanup of cleanups.reverse()) {
      try {
        await cleanup();
      } catch (err) {
        console.error(`cleanup failed: ${(err as Error).message}`);
      }
    }
  }
}

if (process.argv[2] === '--child') {
  const task = JSON.parse(process.argv[3] ?? '') as ChildTask;
  const result = task.kind === 'hold' ? await childHold(task) : await childRestore(task);
  process.send!(result, () => process.exit(0));
} else {
  await main();
}
