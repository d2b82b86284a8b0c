// `meshauth demo`: two nodes, four workloads and two real agents in network namespaces, and a
// walk through what meshauth does, each step checked and timed:
//
//   a. traffic of a pair nobody authenticates is dropped by the gate (TCP, UDP, ICMP);
//   b. a pair policy requires is authenticated before its first packet (proactive);
//   c. with proactive authentication off, a new pair is authenticated on its first packet;
//   d. payload crosses the underlay only inside WireGuard;
//   e. an identity removed from the cluster loses its traffic within milliseconds;
//   f. what `meshauth status` and /metrics show.
//
// It runs unattended, prints a summary, and succeeds only if every step did. Everything it made
// is removed on exit, on failure and on Ctrl-C, unless --keep asks to leave it running.
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import type { AgentStatus, PairStatus } from '../control/status.js';
import { defaultObjectPath } from '../datapath/gate/loader.js';
import { DEFAULT_PORT } from '../handshake/protocol.js';
import { preflight } from './preflight.js';
import { metricSum } from './agent-process.js';
import { Capture } from './capture.js';
import { DemoCluster, WIREGUARD_PORT } from './cluster.js';
import { trafficCut } from './measure.js';
import { cliCommandLine, cliInvocation } from './self.js';

export interface DemoOptions {
  /** Leave the cluster running at the end (and print how to explore and remove it). */
  keep?: boolean;
  /** Where the narrative goes; default stdout. */
  write?: (text: string) => void;
}

interface StepOutcome {
  ok: boolean;
  /** One line for the summary. */
  summary: string;
}

interface StepResult extends StepOutcome {
  title: string;
  ms: number;
}

/** The revocation target: removal → first dropped packet. */
const REVOCATION_TARGET_MS = 100;

export class Demo {
  private cluster?: DemoCluster;
  /** The cluster being built: an interrupt during setup waits for it, then removes it. */
  private creating?: Promise<DemoCluster>;
  private readonly results: StepResult[] = [];
  private readonly write: (text: string) => void;
  private interrupted = false;
  private cleaning?: Promise<void>;

  constructor(private readonly options: DemoOptions = {}) {
    this.write = options.write ?? ((text) => process.stdout.write(text));
  }

  /** Runs every step; true when all passed. Cleans up unless --keep (and then only on success). */
  async run(): Promise<boolean> {
    const started = Date.now();
    let keep = false;
    try {
      this.say('meshauth demo: two nodes, four workloads, two real agents, in network namespaces.\n');
      const problems = await preflight(defaultObjectPath());
      if (problems.length > 0) {
        this.record('preflight', { ok: false, summary: problems.join('; ') }, 0);
        return this.summarize(started);
      }
      if (!(await this.step('setup', 'two nodes, four workloads, one agent per node', () => this.setup()))) return this.summarize(started);
      await this.step('a', 'unauthenticated traffic is dropped', () => this.unauthenticatedDropped());
      await this.step('b', 'proactive authentication', () => this.proactive());
      await this.step('c', 'on-demand authentication', () => this.onDemand());
      await this.step('d', 'traffic between nodes is encrypted', () => this.encrypted());
      await this.step('e', 'an identity revoked, its traffic cut', () => this.revoked());
      await this.step('f', 'meshauth status and metrics', () => this.statusAndMetrics());
      const passed = this.summarize(started);
      keep = passed && this.options.keep === true;
      return passed;
    } finally {
      if (keep) await this.explain();
      else await this.cleanup();
    }
  }

  /** Ctrl-C or SIGTERM: stop where we are and remove everything. */
  async interrupt(signal: string): Promise<void> {
    if (this.interrupted) return;
    this.interrupted = true;
    this.say(`\n${signal}: cleaning up...\n`);
    await this.cleanup();
  }

  /** Removes the cluster (once, whoever asks first: the end of run() or an interrupt). */
  private cleanup(): Promise<void> {
    this.cleaning ??= (async () => {
      // A build still in progress is waited for; a failed one removed what it had made.
      const cluster = this.cluster ?? (await this.creating?.catch(() => undefined));
      if (!cluster) return;
      const problems = await cluster.cleanup();
      if (problems.length > 0) this.say(`cleanup problems:\n${problems.map((p) => `  ${p}`).join('\n')}\n`);
      else this.say('cleaned up: agents stopped, gate pins removed, namespaces deleted.\n');
    })();
    return this.cleaning;
  }

  // ---- steps ----

  private async setup(): Promise<StepOutcome> {
    const building = Date.now();
    this.creating = DemoCluster.create();
    const cluster = (this.cluster = await this.creating);
    this.say(`  namespaces (tag ${cluster.tag}) ready in ${Date.now() - building} ms:\n`);
    for (const node of cluster.topology.nodes) {
      const workloads = node.workloads.map((w) => `${w.name} ${w.ip}${cluster.hasWorkload(w.name) ? '' : ' (not started yet)'}`).join(', ');
      this.say(`    ${node.name}  ${node.address}  pods ${node.podCidr}: ${workloads}\n`);
    }
    this.say('  policy: every pair of workloads must be authenticated (default: required).\n');
    this.say("  rogue runs on node-b, but node-a's view of the cluster has no such workload.\n");
    const starting = Date.now();
    const [agents] = await Promise.all([cluster.startAgents(), cluster.startProbes()]);
    this.say(`  agents started: ${agents.map((a) => `${a.name} pid ${a.pid}`).join(', ')} (logs in ${cluster.dir}/<node>/agent.log)\n`);
    await Promise.all(agents.map((agent) => cluster.waitUntilReady(agent.name)));
    const wireguard = await agents[0]!.waitForLog((line) => line.msg === 'WireGuard interface ready', 'its WireGuard interface');
    this.say(
      `  both agents ready, node link node-a <-> node-b up over WireGuard (${String(wireguard.implementation)}), ` +
        `gate attached: ${Date.now() - starting} ms after start\n`,
    );
    return { ok: true, summary: `namespaces, agents, node link over WireGuard (${String(wireguard.implementation)})` };
  }

  private async unauthenticatedDropped(): Promise<StepOutcome> {
    const cluster = this.cluster!;
    const rogue = cluster.probe('rogue');
    const web = cluster.workload('web');
    this.say(`  from rogue (${cluster.workload('rogue').ip}, node-b) to web (${web.ip}, node-a):\n`);
    const before = await cluster.agent('node-b').status();
    const tcp = await rogue.tcp(web.ip, { timeoutMs: 1500 });
    const token = `rogue-${randomBytes(4).toString('hex')}`;
    await rogue.udp(web.ip, token);
    const udp = await cluster.probe('web').received(token, 500);
    const icmp = await cluster.ping('rogue', 'web', 1000);
    const after = await cluster.agent('node-b').status();
    this.say(`    TCP connect  ${tcp.ok ? 'CONNECTED' : `failed (${tcp.error ?? 'no answer'} after ${Math.round(tcp.ms)} ms)`}\n`);
    this.say(`    UDP datagram ${udp ? 'ARRIVED' : 'never arrived'}\n`);
    this.say(`    ICMP echo    ${icmp ? 'ANSWERED' : 'no answer'}\n`);
    const dropped = counterDelta(before, after, 'droppedNoEntry');
    const signalled = counterDelta(before, after, 'signalsSent');
    this.say(`  node-b's gate: +${dropped} packets dropped for want of an auth entry, +${signalled} signals to its agent\n`);
    const pair = findPair(after, cluster.workload('rogue').spiffeId, web.spiffeId);
    this.say(`  node-b's agent tried to authenticate rogue -> web: ${pair ? `${pair.state}${pair.lastError ? ` (${pair.lastError}: node-a refuses)` : ''}` : 'no such pair'}\n`);
    const ok = !tcp.ok && !udp && !icmp && dropped >= 3;
    return { ok, summary: `TCP, UDP, ICMP dropped; node-b's gate counted ${dropped} drops` };
  }

  private async proactive(): Promise<StepOutcome> {
    const cluster = this.cluster!;
    const web = cluster.workload('web');
    const db = cluster.workload('db');
    const status = await cluster.agent('node-a').waitForStatus((s) => findPair(s, web.spiffeId, db.spiffeId)?.state === 'authenticated', 'web -> db authenticated');
    const pair = findPair(status, web.spiffeId, db.spiffeId)!;
    const link = status.peers.find((p) => p.node === 'node-b');
    const afterLink = link?.lastAuthenticatedAt ? `${Date.parse(pair.lastAuthenticatedAt!) - Date.parse(link.lastAuthenticatedAt)} ms after the node link came up` : 'after the node link came up';
    // Nothing from web has reached the gate yet: no drop, no signal asked for this pair.
    const signalled = Number(status.datapath?.counters.signalsSent ?? 0);
    this.say(`  web -> db: ${pair.state} (trigger ${pair.trigger}) ${afterLink}; node-a's gate has signalled ${signalled} drops so far\n`);
    const tcp = await cluster.probe('web').tcp(db.ip, { timeoutMs: 3000 });
    this.say(`  first TCP connect web -> db: ${tcp.ok ? `connected in ${tcp.ms.toFixed(1)} ms` : `FAILED (${tcp.error})`}\n`);
    // A first SYN that had been dropped would have cost a retransmit, 1 s.
    const ok = pair.trigger === 'proactive' && signalled === 0 && tcp.ok && tcp.ms < 500;
    return { ok, summary: `pair ready before any traffic; first connect ${tcp.ms.toFixed(1)} ms` };
  }

  private async onDemand(): Promise<StepOutcome> {
    const cluster = this.cluster!;
    const api = cluster.workload('api');
    const db = cluster.workload('db');
    this.say('  api starts on node-a; both configs get its endpoint and auth.proactive: false (SIGHUP)\n');
    cluster.setWorkloads(['web', 'api', 'db', 'rogue']);
    cluster.setProactive(false);
    await cluster.reload();
    await cluster.waitForGate('node-a');
    const before = await cluster.agent('node-a').waitForStatus((s) => findPair(s, api.spiffeId, db.spiffeId) !== undefined, 'api -> db in the plan');
    this.say(`  api -> db: ${findPair(before, api.spiffeId, db.spiffeId)!.state} (no handshake until traffic asks for one)\n`);
    const tcp = await cluster.probe('api').tcp(db.ip, { timeoutMs: 5000 });
    const after = await cluster.agent('node-a').status();
    const pair = findPair(after, api.spiffeId, db.spiffeId);
    this.say(`  first TCP connect api -> db: ${tcp.ok ? `connected in ${tcp.ms.toFixed(0)} ms` : `FAILED (${tcp.error})`}\n`);
    this.say(`    the first SYN was dropped and signalled (+${counterDelta(before, after, 'signalsSent')} signal), the pair authenticated (trigger ${pair?.trigger ?? '-'}),\n`);
    this.say("    and TCP's retransmit (1 s later) went through: the price proactive authentication avoids\n");
    const ok = tcp.ok && pair?.state === 'authenticated' && pair.trigger === 'on-demand' && tcp.ms < 4000;
    return { ok, summary: `first connect ${tcp.ms.toFixed(0)} ms (includes the SYN retransmit)` };
  }

  private async encrypted(): Promise<StepOutcome> {
    const cluster = this.cluster!;
    const nodeA = cluster.node('node-a');
    const db = cluster.workload('db');
    const marker = `MESHAUTH-DEMO-MARKER-${randomBytes(6).toString('hex')}`;
    const capture = await Capture.start(nodeA.netns, nodeA.underlayInterface, join(cluster.dir, 'underlay.pcap'));
    this.say(`  tcpdump on node-a's underlay (${nodeA.underlayInterface}); web sends "${marker}" to db over TCP and UDP\n`);
    const tcp = await cluster.probe('web').tcp(db.ip, { payload: `${marker}/tcp`, timeoutMs: 3000 });
    await cluster.probe('web').udp(db.ip, `${marker}/udp`);
    const udp = await cluster.probe('db').received(`${marker}/udp`, 2000);
    const pcap = await capture.stop();
    const summary = await capture.summarize({ wireguard: WIREGUARD_PORT, handshake: DEFAULT_PORT });
    const inClear = pcap.includes(Buffer.from(marker));
    this.say(`  db received it: TCP ${tcp.ok ? 'yes (echoed back)' : 'NO'}, UDP ${udp ? 'yes' : 'NO'}\n`);
    this.say(`  the underlay carried ${summary.ip} IP packets: ${summary.wireguard} WireGuard (udp/${WIREGUARD_PORT}), ${summary.handshake} meshauth handshake (tcp/${DEFAULT_PORT}), ${summary.other.length} other\n`);
    for (const line of summary.sample) this.say(`    ${line}\n`);
    for (const line of summary.other.slice(0, 5)) this.say(`    other: ${line}\n`);
    this.say(`  the marker in the captured bytes: ${inClear ? 'FOUND (plaintext!)' : 'nowhere'}\n`);
    const ok = tcp.ok && udp && !inClear && summary.wireguard > 0 && summary.other.length === 0;
    return { ok, summary: `${summary.wireguard} WireGuard packets on the underlay, marker never in clear` };
  }

  private async revoked(): Promise<StepOutcome> {
    const cluster = this.cluster!;
    const db = cluster.workload('db');
    const tag = `revoke-${randomBytes(3).toString('hex')}`;
    this.say('  web streams a datagram to db every 2 ms; then its endpoint is removed from both configs (SIGHUP)\n');
    const streaming = cluster.probe('web').stream(db.ip, tag, { intervalMs: 2, count: 600 });
    await sleep(400);
    cluster.setWorkloads(['api', 'db', 'rogue']);
    const revokedAt = await cluster.reload();
    const { sent } = await streaming;
    await sleep(200);
    const arrived = await cluster.probe('db').arrivals(tag);
    const cut = trafficCut(sent, arrived, revokedAt);
    const after = await cluster.probe('web').tcp(db.ip, { timeoutMs: 1500 });
    const last = cut.lastPassedMs === undefined ? 'none did' : `the last that did was sent ${relative(cut.lastPassedMs)} the SIGHUP`;
    const first = cut.cutMs === undefined ? 'the last one arrived too: traffic was NOT cut' : `the first dropped one ${relative(cut.cutMs)}, and none got through after that`;
    this.say(`  ${cut.received} of ${cut.sent} datagrams arrived; ${last};\n  ${first} (send times are taken just before each send)\n`);
    this.say(`  a new TCP connect web -> db: ${after.ok ? 'CONNECTED' : `fails (${after.error ?? 'no answer'})`}\n`);
    const cutMs = cut.cutMs === undefined ? undefined : Math.max(0, cut.cutMs);
    const ok = cutMs !== undefined && cut.received > 0 && cutMs < REVOCATION_TARGET_MS && !after.ok;
    return { ok, summary: cutMs === undefined ? 'traffic was NOT cut' : `traffic cut ${cutMs.toFixed(1)} ms after removal (target < ${REVOCATION_TARGET_MS} ms)` };
  }

  private async statusAndMetrics(): Promise<StepOutcome> {
    const cluster = this.cluster!;
    const [file, args] = cliInvocation(['status', '--socket', cluster.files('node-a').controlSocket]);
    const status = await execa(file, args, { reject: false, timeout: 60_000 });
    this.say(`  $ meshauth status --socket ${cluster.files('node-a').controlSocket}\n`);
    this.say(indent(status.exitCode === 0 ? status.stdout : status.stderr, '    '));
    const metrics = await cluster.agent('node-a').metrics();
    const shown = metrics
      .split('\n')
      .filter((line) => /^meshauth_(auth_pairs|handshakes_total\{kind="pair"|datapath_packets_total|signals_total|peers)/.test(line) && !line.endsWith(' 0'));
    this.say(`  $ curl http://${cluster.files('node-a').metricsAddress}/metrics   (in node-a's namespace; non-zero samples of a few)\n`);
    this.say(indent(shown.join('\n'), '    '));
    const handshakes = metricSum(metrics, 'meshauth_handshakes_total', { kind: 'pair', result: 'success' });
    const ok = status.exitCode === 0 && handshakes > 0;
    return { ok, summary: `status ${status.exitCode === 0 ? 'shown' : 'FAILED'}; ${handshakes} successful pair handshakes in /metrics` };
  }

  // ---- plumbing ----

  private async step(id: string, title: string, run: () => Promise<StepOutcome>): Promise<boolean> {
    if (this.interrupted) return false;
    this.say(`\n${id === 'setup' ? '' : `${id}. `}${title}\n`);
    const started = Date.now();
    let outcome: StepOutcome;
    try {
      outcome = await run();
    } catch (err) {
      outcome = { ok: false, summary: `error: ${(err as Error).message}` };
    }
    if (this.interrupted) return false;
    this.record(id, outcome, Date.now() - started, title);
    this.say(`  ${outcome.ok ? '✓' : '✗'} ${outcome.summary}\n`);
    return outcome.ok;
  }

  private record(id: string, outcome: StepOutcome, ms: number, title = id): void {
    this.results.push({ ...outcome, title: id === 'setup' || id === 'preflight' ? title : `${id}. ${title}`, ms });
  }

  private summarize(started: number): boolean {
    const passed = this.results.length > 0 && this.results.every((r) => r.ok) && !this.interrupted;
    const width = Math.max(...this.results.map((r) => r.title.length));
    this.say('\nSummary\n');
    for (const result of this.results) {
      this.say(`  ${result.ok ? '✓' : '✗'} ${result.title.padEnd(width)}  ${(result.ms / 1000).toFixed(1).padStart(5)} s  ${result.summary}\n`);
    }
    const verdict = this.interrupted ? 'Interrupted' : passed ? 'All steps passed' : 'Some steps FAILED';
    this.say(`${verdict} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
    return passed;
  }

  private async explain(): Promise<void> {
    const cluster = this.cluster!;
    await cluster.detach();
    const cli = cliCommandLine();
    const nodeA = cluster.node('node-a');
    this.say(`\nThe cluster is left running (tag ${cluster.tag}). To explore it:\n`);
    for (const node of cluster.topology.nodes) {
      this.say(`  ${cli} status --socket ${cluster.files(node.name).controlSocket}\n`);
    }
    this.say(`  nsenter --net=/run/netns/${cluster.workload('api').netns} ping ${cluster.workload('db').ip}\n`);
    this.say(`  nsenter --net=/run/netns/${nodeA.netns} wg show\n`);
    this.say(`  nsenter --net=/run/netns/${nodeA.netns} tcpdump -ni ${nodeA.underlayInterface}\n`);
    this.say(`  ${cli} datapath status --pin-dir ${cluster.files('node-a').pinDir}\n`);
    const pids = cluster.topology.nodes.map((node) => `${node.name} ${cluster.agent(node.name).pid}`).join(', ');
    this.say(`  configs and logs: ${cluster.dir}/<node>/{config.yaml,agent.log}; edit a config, then kill -HUP <pid> (${pids})\n`);
    this.say(`To remove it: ${cli} demo --cleanup\n`);
  }

  private say(text: string): void {
    this.write(text);
  }
}

function findPair(status: AgentStatus, localId: string, remoteId: string): PairStatus | undefined {
  return status.pairs.find((p) => p.localId === localId && p.remoteId === remoteId);
}

function counterDelta(before: AgentStatus, after: AgentStatus, name: string): number {
  return Number(after.datapath?.counters[name] ?? 0) - Number(before.datapath?.counters[name] ?? 0);
}

/** "3.2 ms after" / "0.4 ms before" (the caller names what). */
function relative(ms: number): string {
  return ms < 0 ? `${(-ms).toFixed(1)} ms before` : `${ms.toFixed(1)} ms after`;
}

function indent(text: string, prefix: string): string {
  const body = text.trimEnd();
  return body === '' ? '' : `${body.split('\n').map((line) => `${prefix}${line}`).join('\n')}\n`;
}
