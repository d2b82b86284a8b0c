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
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Datapath } from '../../src/datapath/gate/datapath.js';
import { CONNECT_ROUNDS, ON_DEMAND_ROUNDS, firstConnect, type ConnectRound } from './first-connect.js';
import { checkpoint, stopAtCheckpointsOnSignals } from './interrupt.js';
import { RSS_RUNS, memory } from './memory.js';
import { HELD_PAIRS, LIFETIME_MS, REAUTH_PAIRS } from './pairs.js';
import { reauthSpread } from './reauth.js';
import { fmt, info, list, median, percentile, report, thousands } from './report.js';
import { RESTORE_RUNS, restore } from './restore.js';
import { REVOCATIONS, revocation } from './revocation.js';

const json = process.argv.includes('--json');
const TARGETS = {
  rssMb: 200,
  restoreMs: 1000,
  reauthPeakToMean: 2,
  revokeP99Ms: 100,
  firstConnectRatio: 1.5,
};

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the agent benchmark needs root (BPF maps, network namespaces)');
  const tag = randomBytes(4).toString('hex');
  const pinDir = (label: string) => `/sys/fs/bpf/meshauth-bench-agent-${tag}-${label}`;
  const cleanups: (() => unknown)[] = [];
  stopAtCheckpointsOnSignals();
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

await main();
