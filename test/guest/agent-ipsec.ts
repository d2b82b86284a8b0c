// Runs as root inside the run-in-guest VM (test/guest/run.sh), whose Debian kernel has
// the ESP module this machine lacks: two real `meshauth agent` processes (the compiled CLI), each
// in its own node namespace, with `transport.mode: ipsec`. Nothing but the agents programs IPsec;
// this program only watches the kernel and checks, after the node handshake, a re-authentication
// and a node's removal from the config, what the agents installed. One JSON line per check
// ({"check", "ok", "detail"}); exit status 1 when a check failed.
//
//   wa 10.79.1.2 ── node-a 192.168.79.1 ══ ul0 ══ 192.168.79.2 node-b ── wb 10.79.2.2
//                   pods 10.79.1.0/24                 pods 10.79.2.0/24
//
// The SPI each node sent in its node frame is not visible from outside (the frame travels inside
// TLS), but it is pinned down by the kernel: a node's inbound SPI can only be one it allocated
// itself (IpsecTransport refuses any other), and the peer can only have learned it from the frame,
// so "A's outbound SPI = B's inbound SPI" in both directions, with equal keys, is the frame
// exchange seen from the outside; a ping between the workloads proves the kernel agrees.
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ConfigInput } from '../../src/config/config.js';
import { isMeshauthReqid } from '../../src/datapath/transport/xfrm.js';
import { AgentProcess, type LogLine } from '../../src/demo/agent-process.js';
import { Topology, type NodeSpec, type TopologyNode } from '../../src/demo/topology.js';
import { inNetns } from '../../src/netns/exec.js';
import { ProcessRecorder, processesHolding } from '../helpers/process-recorder.js';
import { listXfrm, XfrmMonitor, type XfrmEvent, type XfrmPolicy, type XfrmState } from '../helpers/xfrm-observer.js';

type NodeName = 'node-a' | 'node-b';
const NODES: readonly [NodeSpec & { name: NodeName }, NodeSpec & { name: NodeName }] = [
  { name: 'node-a', address: '192.168.79.1', podCidr: '10.79.1.0/24', workloads: [{ name: 'wa', ip: '10.79.1.2' }] },
  { name: 'node-b', address: '192.168.79.2', podCidr: '10.79.2.0/24', workloads: [{ name: 'wb', ip: '10.79.2.2' }] },
];
const PEER: Record<NodeName, NodeName> = { 'node-a': 'node-b', 'node-b': 'node-a' };
// A node link lives 60 s and the lower name (node-a, the leader) re-authenticates it at 40 % of
// that, without jitter: every 24 s. The transport keeps a replaced SA for 10 s after the switch,
// which leaves ~10 quiet seconds between a re-key's end and the next one for the checks and the
// removal. node-b would re-authenticate at 70 % (42 s): never, as long as node-a does.
const LINK = { maxTtl: '60s', reauthFraction: 0.4 };
// Node loads the agent in ~35 s here when the machine is idle, and took 150 s at a host load
// average of 14: a generous bound, inside the stage's own limit (test/guest-vm.test.ts).
const STARTUP_MS = 360_000;

let failed = false;
const started = Date.now();
function record(check: string, ok: boolean, detail?: unknown): void {
  failed ||= !ok;
  console.log(JSON.stringify({ check, ok, atMs: Date.now() - started, detail }));
}

/** The states and policies meshauth owns in a node's namespace. */
async function snapshot(node: TopologyNode, stats = false): Promise<{ states: XfrmState[]; policies: XfrmPolicy[] }> {
  const { states, policies } = await listXfrm(node.netns, { stats });
  return { states: states.filter((s) => isMeshauthReqid(s.reqid)), policies: policies.filter((p) => p.tmpl && isMeshauthReqid(p.tmpl.reqid)) };
}

interface Generation {
  /** Per node: the state it receives on and the one it sends on. */
  inbound: Record<NodeName, XfrmState>;
  outbound: Record<NodeName, XfrmState>;
}

/**
 * One generation of SAs (one node handshake): each node holds exactly one inbound and one
 * outbound state in tunnel mode between the node addresses, and each direction's SPI and key
 * are the same on both ends. Returns the generation, or the problems found.
 */
function generationOf(topology: Topology, snapshots: Record<NodeName, { states: XfrmState[] }>): { generation?: Generation; problems: string[] } {
  const problems: string[] = [];
  const inbound = {} as Record<NodeName, XfrmState>;
  const outbound = {} as Record<NodeName, XfrmState>;
  for (const { name } of NODES) {
    const self = topology.node(name).address;
    const peer = topology.node(PEER[name]).address;
    const states = snapshots[name].states;
    const ins = states.filter((s) => s.src === peer && s.dst === self);
    const outs = states.filter((s) => s.src === self && s.dst === peer);
    if (ins.length !== 1 || outs.length !== 1 || states.length !== 2) {
      problems.push(`${name}: expected one inbound and one outbound state, found ${JSON.stringify(states.map(({ aeadKey: _, ...s }) => s))}`);
      continue;
    }
    inbound[name] = ins[0]!;
    outbound[name] = outs[0]!;
    for (const s of states) {
      if (s.mode !== 'tunnel') problems.push(`${name}: state ${s.spi} is in ${s.mode} mode`);
      if (!s.aeadKey || s.aeadKey.length !== 40) problems.push(`${name}: state ${s.spi} has no 20-byte rfc4106(gcm(aes)) key`);
    }
    if (ins[0]!.aeadKey === outs[0]!.aeadKey) problems.push(`${name}: the same key in both directions`);
  }
  if (problems.length > 0) return { problems };
  for (const { name } of NODES) {
    const peer = PEER[name];
    if (outbound[name].spi !== inbound[peer].spi) problems.push(`${name} sends on SPI ${outbound[name].spi}, ${peer} receives on ${inbound[peer].spi}`);
    if (outbound[name].aeadKey !== inbound[peer].aeadKey) problems.push(`${name}'s outbound key differs from ${peer}'s inbound key`);
  }
  return problems.length > 0 ? { problems } : { generation: { inbound, outbound }, problems };
}

/** The policies a node needs: its pod CIDR to the peer's out, the reverse in and fwd, all in tunnel mode between the node addresses, bound to its states' reqid. */
function policyProblems(topology: Topology, name: NodeName, policies: XfrmPolicy[], reqid: number): string[] {
  const self = topology.node(name);
  const peer = topology.node(PEER[name]);
  const wanted = [
    { src: self.podCidr, dst: peer.podCidr, dir: 'out', tmpl: { src: self.address, dst: peer.address } },
    { src: peer.podCidr, dst: self.podCidr, dir: 'in', tmpl: { src: peer.address, dst: self.address } },
    { src: peer.podCidr, dst: self.podCidr, dir: 'fwd', tmpl: { src: peer.address, dst: self.address } },
  ];
  const problems: string[] = [];
  if (policies.length !== wanted.length) problems.push(`${name}: ${policies.length} policies, expected ${wanted.length}: ${JSON.stringify(policies)}`);
  for (const want of wanted) {
    const found = policies.find((p) => p.src === want.src && p.dst === want.dst && p.dir === want.dir);
    const ok =
      found?.tmpl?.src === want.tmpl.src && found.tmpl.dst === want.tmpl.dst && found.tmpl.proto === 'esp' && found.tmpl.mode === 'tunnel' && found.tmpl.reqid === reqid;
    if (!ok) problems.push(`${name}: no ${want.dir} policy ${want.src} -> ${want.dst} via ${want.tmpl.src} -> ${want.tmpl.dst} (reqid ${reqid}): ${JSON.stringify(found)}`);
  }
  return problems;
}

/** Pings wb from wa (3 echoes); with the packet counters of the states, shows the SAs carry it. */
async function pingAcross(topology: Topology): Promise<{ received: number; output: string }> {
  const result = await inNetns(topology.workload('wa').netns, 'ping', ['-n', '-q', '-c', '3', '-i', '0.2', '-W', '2', topology.workload('wb').ip], { reject: false, timeout: 20_000 });
  const received = Number(/(\d+) received/.exec(result.stdout)?.[1] ?? 0);
  return { received, output: result.stdout.split('\n').slice(-3).join(' ') };
}

async function both<T>(run: (name: NodeName) => Promise<T>): Promise<Record<NodeName, T>> {
  const [a, b] = await Promise.all([run('node-a'), run('node-b')]);
  return { 'node-a': a, 'node-b': b };
}

/** Polls until check() returns a value, or throws after timeoutMs. */
async function until<T>(what: string, timeoutMs: number, check: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(200);
  }
}

const logged = (msg: string, extra: (line: LogLine) => boolean = () => true) => (line: LogLine) => line.msg === msg && extra(line);

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-agent-ipsec-'));
  const recorder = new ProcessRecorder();
  let topology: Topology | undefined;
  const monitors = new Map<NodeName, XfrmMonitor>();
  const agents = new Map<NodeName, AgentProcess>();
  const keys: Buffer[] = [];
  try {
    topology = await Topology.create(NODES, { prefix: 'mai' });
    const topo = topology;
    // What a CNI does: route the peer's pod CIDR to the peer node. The agents' policies then
    // put that traffic into ESP.
    for (const { name } of NODES) {
      const peer = topo.node(PEER[name]);
      await inNetns(topo.node(name).netns, 'ip', ['route', 'add', peer.podCidr, 'via', peer.address]);
    }
    for (const { name } of NODES) monitors.set(name, await XfrmMonitor.start(topo.node(name).netns));

    const configOf = (name: NodeName, peers: readonly NodeName[]): ConfigInput => ({
      nodeName: name,
      trustDomain: 'agent-ipsec.test',
      stateDir: join(dir, name, 'state'),
      identity: { provider: 'dev', dev: { caDir: join(dir, 'ca'), ttl: '1h' } },
      handshake: { listenAddress: topo.node(name).address, sourceAddress: topo.node(name).address, maxTtl: LINK.maxTtl },
      transport: { mode: 'ipsec' },
      datapath: { enabled: false },
      metrics: { enabled: false },
      control: { socket: join(dir, name, 'control.sock') },
      // node-b never initiates first: node-a's handshake is the one both sides record.
      auth: { reauthFraction: LINK.reauthFraction, reauthJitter: 0, proactiveGrace: '60s', failureBackoff: { initial: '300ms', max: '2s' } },
      cluster: { nodes: [name, ...peers].map((n) => ({ name: n, address: topo.node(n).address, podCidrs: [topo.node(n).podCidr] })), endpoints: [], policy: { default: 'required', rules: [] } },
    });
    const writeConfig = (name: NodeName, peers: readonly NodeName[]) => writeFile(join(dir, name, 'config.json'), JSON.stringify(configOf(name, peers)), { mode: 0o600 });
    for (const { name } of NODES) {
      await mkdir(join(dir, name), { recursive: true, mode: 0o700 });
      await writeConfig(name, [PEER[name]]);
    }
    const start = async (name: NodeName) => {
      const agent = await AgentProcess.start({
        name,
        netns: topo.node(name).netns,
        configPath: join(dir, name, 'config.json'),
        logPath: join(dir, name, 'agent.log'),
        controlSocket: join(dir, name, 'control.sock'),
        metricsAddress: 'unused',
      });
      agents.set(name, agent);
      return agent;
    };
    const agent = (name: NodeName) => agents.get(name)!;
    const topologyMs = Date.now() - started;
    await both(start);

    // 1. The node handshake: each side programs the SAs from it.
    const up = await both((name) => agent(name).waitForLog(logged('node link up'), 'node link up', { timeoutMs: STARTUP_MS }));
    const agentStarted = await both((name) => agent(name).waitForLog(logged('agent started'), 'agent started'));
    record('setup', true, {
      nodeStartMs: Math.round(process.uptime() * 1000) - (Date.now() - started),
      topologyMs,
      agentStartedMs: NODES.map(({ name }) => agentStarted[name].time! - agent(name).spawnedAt),
      linkUpMs: NODES.map(({ name }) => up[name].time! - started),
    });
    // A node handshake retried under load (the initiator gave up on an attempt the responder had
    // completed) leaves the responder's states of that attempt retiring, as after any re-key:
    // retireAfterMs (10 s) later exactly one generation remains. Anything left longer is a leak.
    const settling = Date.now();
    let first = await both((name) => snapshot(topo.node(name)));
    let gen1 = generationOf(topo, first);
    const unsettled = gen1.problems;
    while (!gen1.generation && Date.now() - settling < 15_000) {
      await sleep(200);
      first = await both((name) => snapshot(topo.node(name)));
      gen1 = generationOf(topo, first);
    }
    record('agent.states-from-handshake', gen1.generation !== undefined, {
      problems: gen1.problems,
      ...(unsettled.length > 0 ? { settledAfterMs: gen1.generation ? Date.now() - settling : undefined, atLinkUp: unsettled } : {}),
      spis: gen1.generation && Object.fromEntries(NODES.map(({ name }) => [name, { in: gen1.generation!.inbound[name].spi, out: gen1.generation!.outbound[name].spi }])),
    });
    if (!gen1.generation) throw new Error('no usable first generation of SAs');
    const g1 = gen1.generation;
    keys.push(...NODES.flatMap(({ name }) => [g1.inbound[name], g1.outbound[name]]).map((s) => Buffer.from(s.aeadKey!, 'hex')));
    const policies1 = NODES.flatMap(({ name }) => policyProblems(topo, name, first[name].policies, g1.inbound[name].reqid));
    record('agent.policies-select-pod-cidrs', policies1.length === 0, { problems: policies1 });
    const ping1 = await pingAcross(topo);
    const counted1 = await both((name) => snapshot(topo.node(name), true));
    const carried1 = NODES.map(({ name }) => counted1[name].states.find((s) => s.spi === g1.outbound[name].spi)?.packets ?? 0);
    record('agent.sas-carry-traffic', ping1.received === 3 && carried1.every((n) => n >= 3), { ping: ping1, outboundPackets: carried1 });

    // 2. Re-authentication: new SPIs and keys on both sides, make-before-break.
    const rekeyed = await both((name) =>
      agent(name).waitForLog(logged('IPsec peers programmed', (l) => (l.rekeyed as string[] | undefined)?.includes(PEER[name]) === true), 'the IPsec re-key', {
        timeoutMs: 60_000,
      }),
    );
    // The replaced states go retireAfterMs (10 s) after the switch.
    const second = await until('the replaced states to be deleted', 25_000, async () => {
      const now = await both((name) => snapshot(topo.node(name)));
      const old = new Set(NODES.flatMap(({ name }) => [g1.inbound[name].spi, g1.outbound[name].spi]));
      return NODES.every(({ name }) => now[name].states.every((s) => !old.has(s.spi))) ? now : undefined;
    });
    const gen2 = generationOf(topo, second);
    const g2 = gen2.generation;
    const fresh: string[] = [...gen2.problems];
    if (g2) {
      keys.push(...NODES.flatMap(({ name }) => [g2.inbound[name], g2.outbound[name]]).map((s) => Buffer.from(s.aeadKey!, 'hex')));
      const oldKeys = new Set(NODES.flatMap(({ name }) => [g1.inbound[name].aeadKey, g1.outbound[name].aeadKey]));
      for (const { name } of NODES) {
        for (const [what, s, before] of [['inbound', g2.inbound[name], g1.inbound[name]], ['outbound', g2.outbound[name], g1.outbound[name]]] as const) {
          if (s.spi === before.spi) fresh.push(`${name}: ${what} SPI unchanged`);
          if (oldKeys.has(s.aeadKey)) fresh.push(`${name}: ${what} key of the first handshake reused`);
        }
        fresh.push(...policyProblems(topo, name, second[name].policies, g2.inbound[name].reqid));
      }
    }
    record('agent.reauth-new-spis-and-keys', fresh.length === 0, { problems: fresh, rekeyedAt: { a: rekeyed['node-a'].time, b: rekeyed['node-b'].time } });
    if (g2) {
      const ping2 = await pingAcross(topo);
      const counted2 = await both((name) => snapshot(topo.node(name), true));
      const carried2 = NODES.map(({ name }) => counted2[name].states.find((s) => s.spi === g2.outbound[name].spi)?.packets ?? 0);
      record('agent.new-sas-carry-traffic', ping2.received === 3 && carried2.every((n) => n >= 3), { ping: ping2, outboundPackets: carried2 });
    }

    // 3. A node removed from the config (SIGHUP): its states and policies go.
    const before = (await agent('node-a').logs()).length;
    await writeConfig('node-a', []);
    agent('node-a').signal('SIGHUP');
    await agent('node-a').waitForLog(logged('IPsec peers programmed', (l) => (l.removed as string[] | undefined)?.includes('node-b') === true), 'the removal of node-b', {
      since: before,
      timeoutMs: 20_000,
    });
    const afterRemoval = await both((name) => snapshot(topo.node(name)));
    record('agent.removed-node-cleaned-up', afterRemoval['node-a'].states.length === 0 && afterRemoval['node-a'].policies.length === 0 && afterRemoval['node-b'].policies.length === 3, {
      nodeA: afterRemoval['node-a'],
      nodeBPolicies: afterRemoval['node-b'].policies.length,
    });

    await Promise.all([...agents.values()].map((a) => a.stop()));
    const events = Object.fromEntries(await Promise.all([...monitors].map(async ([name, m]) => [name, await m.stop()] as const))) as Record<NodeName, XfrmEvent[]>;
    monitors.clear();
    if (g2) {
      const problems = makeBeforeBreakProblems(g1, g2, events);
      record('agent.reauth-make-before-break', problems.length === 0, { problems, events: summarize(events) });
    }

    const logs = (await Promise.all(NODES.map(({ name }) => readFile(join(dir, name, 'agent.log'), 'latin1')))).join('\n');
    const inLogs = keys.filter((key) => [key.toString('hex'), key.toString('base64')].some((form) => logs.includes(form)));
    record('secrets.not-in-logs', logs.length > 0 && inLogs.length === 0, { logBytes: logs.length, keysInLogs: inLogs.length });
  } catch (err) {
    record('error', false, (err as Error).stack);
  } finally {
    for (const a of agents.values()) await a.stop().catch(() => undefined);
    if (failed) {
      for (const [name, a] of agents) {
        const lines = await a.logs().catch(() => []);
        console.error(`--- ${name}: the last of ${lines.length} log lines`);
        for (const line of lines.slice(-40)) console.error(JSON.stringify(line));
      }
    }
    for (const m of monitors.values()) await m.stop().catch(() => undefined);
    const recording = await recorder.stop();
    // The scan only means something if it saw the agents feed `ip -batch`.
    const batches = recording.processes.filter((p) => /^ip( -force)? -batch -$/.test(p.command)).length;
    const hits = processesHolding(recording, keys);
    record('secrets.not-on-cmdline', keys.length >= 8 && batches >= 3 && hits.length === 0, { scans: recording.scans, processes: recording.processes.length, ipBatches: batches, keys: keys.length, hits });
    await topology?.teardown();
    await rm(dir, { recursive: true, force: true });
  }
}

/**
 * From the monitors' event streams: for each direction, the receiver added its new inbound state
 * before the sender added the new outbound one, and deleted the old inbound one only after that;
 * each node added its new states before deleting the old, and no policy was deleted (they were
 * updated in place, so no packet met a node without a policy for it).
 */
function makeBeforeBreakProblems(g1: Generation, g2: Generation, events: Record<NodeName, XfrmEvent[]>): string[] {
  const problems: string[] = [];
  const when = (node: NodeName, action: XfrmEvent['action'], spi: number) => events[node].find((e) => e.kind === 'state' && e.action === action && e.spi === spi);
  for (const { name: sender } of NODES) {
    const receiver = PEER[sender];
    const newOut = when(sender, 'add', g2.outbound[sender].spi);
    const newIn = when(receiver, 'add', g2.inbound[receiver].spi);
    const oldIn = when(receiver, 'delete', g1.inbound[receiver].spi);
    const oldOut = when(sender, 'delete', g1.outbound[sender].spi);
    if (!newOut || !newIn || !oldIn || !oldOut) {
      problems.push(`${sender} -> ${receiver}: missing events (new out ${!!newOut}, new in ${!!newIn}, old in deleted ${!!oldIn}, old out deleted ${!!oldOut})`);
      continue;
    }
    if (!(newIn.at <= newOut.at)) problems.push(`${sender} -> ${receiver}: ${sender} sent on the new SA ${newOut.at - newIn.at} ms before ${receiver} could receive on it`);
    if (!(oldIn.at > newOut.at)) problems.push(`${sender} -> ${receiver}: ${receiver} deleted the old inbound SA before ${sender} switched`);
    const order = events[sender].filter((e) => e.kind === 'state');
    if (order.indexOf(newOut) > order.indexOf(oldOut)) problems.push(`${sender}: old outbound SA deleted before the new one was added`);
  }
  for (const { name } of NODES) {
    const lastAdd = events[name].findIndex((e) => e.kind === 'state' && e.action === 'add' && e.spi === g2.outbound[name].spi);
    const deleted = events[name].slice(0, lastAdd).filter((e) => e.kind === 'policy' && e.action === 'delete');
    if (deleted.length > 0) problems.push(`${name}: policies deleted during the re-key: ${JSON.stringify(deleted)}`);
  }
  return problems;
}

function summarize(events: Record<NodeName, XfrmEvent[]>): Record<string, string[]> {
  return Object.fromEntries(
    Object.entries(events).map(([name, list]) => [name, list.map((e) => `${e.at - started} ${e.action} ${e.kind} ${e.kind === 'state' ? e.spi : `${e.dir} ${e.src}>${e.dst}`}`)]),
  );
}

await main();
process.exit(failed ? 1 : 0);
