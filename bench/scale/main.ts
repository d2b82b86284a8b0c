// Scale benchmark (root): `npm run bench:scale [-- --json] [-- --small | --large]`. One real agent given a
// static Kubernetes cluster by the test API server (test/servers/kube-api-server.ts), as a new user
// would measure it: 500 nodes / 15,000 pods, then 5,000 nodes / 150,000 pods; 30 local pods, 50
// MutualAuthPolicies (bench/scale/cluster.ts). The whole run happens in a network namespace of its
// own, where the other nodes' addresses have no route (their node handshakes fail at once), and
// removes it, its pin directories and temp dirs at the end, also after a failure or a signal.
//
//   sync_s                 agent start → /readyz 200 (the complete first plan is applied then; the
//                          ipcache map is checked to hold every pod); baseline: the same agent on a
//                          cluster of its own node and pods only (empty_sync_s).
//   rss_mb                 the agent's RSS 5 s after sync; baseline: the empty-cluster agent's.
//   event_to_map_p50/p99   a pod created (or deleted) in the API server → its address present (or
//                          gone) in the pinned ipcache map, polled from here; 200 events 50 ms apart,
//                          one in ten on the local node. Baseline: what the old path spent on one
//                          change before writing anything: a full recomputation of the plan
//                          (test/helpers/full-plan.ts) over the same cluster (full_recompute_ms).
//   cpu_percent            the agent's CPU (user + system, of one core) while the API server
//                          creates and deletes 100 pods a second for 10 s; baseline: the same agent
//                          idle for 10 s before (idle_cpu_percent: its node handshakes to the
//                          unreachable nodes, retried every 60 s each once the backoff has grown,
//                          which it has 70 s after the start, when both are measured).
//   apiserver_bytes_per_agent_sync
//                          response bytes the API server sent the agent from its start to Ready (the
//                          watch model in use: every pod of the cluster, listed in full); for
//                          comparison local_pods_bytes, a real list of the local node's pods by field
//                          selector, and compact_view_bytes, the size of the remote address →
//                          identity → node view as compact per-node objects (computed from the same
//                          cluster: that view is not served yet, docs/kubernetes.md).
//
// The maps are created before the agent starts with capacities for the cluster (what the gate's
// capacity configuration will do); with the default 65,536-entry ipcache host map the agent at
// 150,000 pods counts the refused entries instead (meshauth_datapath_write_failures_total).
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { RawMap } from 'bpf';
import { NumericIds } from '../../src/auth/numeric-ids.js';
import { NodePlanner } from '../../src/agent/node-planner.js';
import { nodeInfo, podEndpoints, policyRule } from '../../src/cluster/kubernetes/convert.js';
import { ClusterState } from '../../src/cluster/state.js';
import type { ClusterEvent } from '../../src/cluster/types.js';
import { openPinnedMap } from '../../src/datapath/gate/bpf-maps.js';
import { Datapath } from '../../src/datapath/gate/datapath.js';
import { encodeIpcacheHostKey, MAP_SPECS } from '../../src/datapath/gate/layout.js';
import { ensureBpffs, ensureMaps } from '../../src/datapath/gate/loader.js';
import { PinLayout } from '../../src/datapath/gate/pin-layout.js';
import { parseIpPrefix } from '../../src/datapath/ip-prefix.js';
import { fullPlan } from '../../test/helpers/full-plan.js';
import { KubeApiServer, type KubeObject } from '../../test/servers/kube-api-server.js';
import { checkpoint, stopAtCheckpointsOnSignals } from '../agent/interrupt.js';
import { fmt, info, median, percentile, report, thousands } from '../agent/report.js';
import { AgentProcess } from './agent-process.js';
import { clusterNode, clusterObjects, clusterPod, LOCAL_NODE, podIp, podsPerNode, type Scale } from './cluster.js';

const json = process.argv.includes('--json');
const SMALL: Scale = { nodes: 500, pods: 15_000, rules: 50 };
const LARGE: Scale = { nodes: 5_000, pods: 150_000, rules: 50 };
const SCALES: Scale[] = process.argv.includes('--small') ? [SMALL] : process.argv.includes('--large') ? [LARGE] : [SMALL, LARGE];
const TARGETS = { syncS: 15, rssMb: 300, eventToMapMs: 100, cpuPercent: 15 };
const EVENTS = 200;
const EVENT_SPACING_MS = 50;
const CHURN_PER_SECOND = 100;
const CHURN_SECONDS = 10;
const TRUST_DOMAIN = 'bench.example';
const METRICS_PORT = 9465;
const NETNS_ENV = 'MESHAUTH_BENCH_SCALE_NETNS';
/** From the agent's start: past 1 + 2 + ... + 32 s of node-handshake backoff. */
const PEER_BACKOFF_SETTLED_MS = 70_000;

interface ScaleFigures {
  nodes: number;
  pods: number;
  sync_s: number;
  empty_sync_s: number;
  rss_mb: number;
  empty_rss_mb: number;
  event_to_map_p50_ms: number;
  event_to_map_p99_ms: number;
  event_to_map_max_ms: number;
  full_recompute_ms: number;
  planner_event_ms: number;
  cpu_percent: number;
  idle_cpu_percent: number;
  apiserver_bytes_per_agent_sync: number;
  local_pods_bytes: number;
  compact_view_bytes: number;
  ipcache_entries: number;
  write_failures: number;
}

/** Runs this file again inside a network namespace of its own (nothing the agent dials is routed). */
function reexecInNamespace(): number {
  const netns = `meshauth-scale-${randomBytes(4).toString('hex')}`;
  const ip = (...args: string[]) => {
    const result = spawnSync('ip', args, { stdio: 'inherit' });
    if (result.status !== 0) throw new Error(`ip ${args.join(' ')} failed`);
  };
  ip('netns', 'add', netns);
  try {
    ip('-n', netns, 'link', 'set', 'lo', 'up');
    const self = fileURLToPath(import.meta.url);
    const run = spawnSync('nsenter', [`--net=/run/netns/${netns}`, process.execPath, self, ...process.argv.slice(2)], {
      stdio: 'inherit',
      env: { ...process.env, [NETNS_ENV]: netns },
    });
    return run.status ?? 1;
  } finally {
    spawnSync('ip', ['netns', 'del', netns]);
  }
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the scale benchmark needs root (BPF maps, a network namespace)');
  if (!process.env[NETNS_ENV]) process.exit(reexecInNamespace());
  stopAtCheckpointsOnSignals();
  const results: ScaleFigures[] = [];
  for (const scale of SCALES) {
    checkpoint();
    const figures = await measureScale(scale);
    print(figures);
    results.push(figures);
  }
  if (json) console.log(JSON.stringify({ benchmark: 'scale', targets: TARGETS, scales: results }));
}

async function measureScale(scale: Scale): Promise<ScaleFigures> {
  const tag = randomBytes(4).toString('hex');
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-bench-scale-'));
  const pinDirs: string[] = [];
  const servers: KubeApiServer[] = [];
  const agents: AgentProcess[] = [];
  try {
    const pinDir = (label: string) => {
      const path = `/sys/fs/bpf/meshauth-bench-scale-${tag}-${label}`;
      pinDirs.push(path);
      return path;
    };
    log(`${thousands(scale.nodes)} nodes / ${thousands(scale.pods)} pods: the empty-cluster baseline`);
    const empty = await runAgent(scale, { ...scale, nodes: 1, pods: podsPerNode(scale) }, pinDir('empty'), join(dir, 'empty'), servers, agents, false);
    log('the full cluster');
    const full = await runAgent(scale, scale, pinDir('full'), join(dir, 'full'), servers, agents, true);
    log('the old path: a full recomputation of the plan, and the planner, in this process');
    const old = await oldPath(scale);
    return {
      nodes: scale.nodes,
      pods: scale.pods,
      sync_s: full.syncS,
      empty_sync_s: empty.syncS,
      rss_mb: full.rssMb,
      empty_rss_mb: empty.rssMb,
      event_to_map_p50_ms: median(full.eventMs),
      event_to_map_p99_ms: percentile(full.eventMs, 99),
      event_to_map_max_ms: Math.max(...full.eventMs),
      full_recompute_ms: old.fullMs,
      planner_event_ms: old.plannerMs,
      cpu_percent: full.churnCpu,
      idle_cpu_percent: full.idleCpu,
      apiserver_bytes_per_agent_sync: full.syncBytes,
      local_pods_bytes: full.localPodsBytes,
      compact_view_bytes: compactViewBytes(scale),
      ipcache_entries: full.ipcacheEntries,
      write_failures: full.writeFailures,
    };
  } finally {
    for (const agent of agents) await agent.stop();
    for (const server of servers) await server.close();
    for (const path of pinDirs) await Datapath.uninstall({ pinDir: path }).catch(() => {});
    await rm(dir, { recursive: true, force: true });
  }
}

interface AgentRun {
  syncS: number;
  rssMb: number;
  syncBytes: number;
  eventMs: number[];
  idleCpu: number;
  churnCpu: number;
  localPodsBytes: number;
  ipcacheEntries: number;
  writeFailures: number;
}

async function runAgent(
  sizing: Scale,
  scale: Scale,
  pinDir: string,
  dir: string,
  servers: KubeApiServer[],
  agents: AgentProcess[],
  events: boolean,
): Promise<AgentRun> {
  const server = await KubeApiServer.start({ historyLimit: 100_000 });
  servers.push(server);
  for (const [resource, object] of clusterObjects(scale)) server.create(resource, object);
  // Map capacities for the cluster, with room for churn (what the gate's capacity config will do).
  const layout = new PinLayout(pinDir);
  await ensureBpffs(layout);
  await ensureMaps(layout, { ipcache_hosts4: 2 * sizing.pods, policy: 65_536 });
  const before = server.bytesSent;
  const started = performance.now();
  const agent = await AgentProcess.start({ dir: await mkdirp(dir), pinDir, server, metricsPort: METRICS_PORT });
  agents.push(agent);
  await agent.waitReady(600_000);
  const syncS = (performance.now() - started) / 1000;
  const syncBytes = server.bytesSent - before;
  const ipcache = new RawMap(openPinnedMap(layout.mapPath('ipcache_hosts4'), MAP_SPECS.ipcache_hosts4));
  let ipcacheEntries = 0;
  for (const _key of ipcache.keys()) ipcacheEntries++;
  await sleep(5000);
  const rssMb = await agent.rssMb();
  // The other nodes are unreachable here: the agent retries their node handshakes with a backoff
  // (1 s doubling to 60 s). CPU is measured once the retries have reached that steady pace.
  if (events) await sleep(Math.max(0, PEER_BACKOFF_SETTLED_MS - (performance.now() - started)));
  const idleCpu = await cpuOver(agent, CHURN_SECONDS * 1000, () => {});
  let eventMs: number[] = [];
  let churnCpu = 0;
  let localPodsBytes = 0;
  if (events) {
    checkpoint();
    eventMs = await eventsToMap(server, scale, ipcache).catch(async (err: unknown) => {
      const failures = await agent.metric('meshauth_datapath_write_failures_total').catch(() => NaN);
      throw new Error(`${(err as Error).message}; agent RSS ${fmt(await agent.rssMb())} MB, write failures ${failures}, its log: ${agent.log}`);
    });
    let serial = 0;
    churnCpu = await cpuOver(agent, CHURN_SECONDS * 1000, (stop) => churn(server, scale, stop, () => serial++));
    const response = await fetch(`${server.url}/api/v1/pods?fieldSelector=spec.nodeName%3D${LOCAL_NODE}`, { headers: { authorization: `Bearer ${server.token}` } });
    localPodsBytes = (await response.arrayBuffer()).byteLength;
  }
  const writeFailures = await agent.metric('meshauth_datapath_write_failures_total');
  ipcache.ref.close();
  await agent.stop();
  return { syncS, rssMb, syncBytes, eventMs, idleCpu, churnCpu, localPodsBytes, ipcacheEntries, writeFailures };
}

/** Creates and deletes pods one at a time; each time, how long until the pinned ipcache agrees. */
async function eventsToMap(server: KubeApiServer, scale: Scale, ipcache: RawMap): Promise<number[]> {
  const perNode = podsPerNode(scale);
  const times: number[] = [];
  for (let n = 0; n < EVENTS / 2; n++) {
    checkpoint();
    // One event in ten on the local node; the others spread over the remote ones.
    const index = n % 10 === 0 ? 0 : 1 + ((n * 7919) % (scale.nodes - 1));
    const slot = perNode + (n % 100);
    const object = clusterPod(index, slot, n);
    const key = encodeIpcacheHostKey(parseIpPrefix(podIp(index, slot)));
    for (const present of [true, false]) {
      const sent = performance.now();
      if (present) server.create('pods', object);
      else server.remove('pods', object.metadata.name, object.metadata.namespace);
      const deadline = sent + 10_000;
      while ((ipcache.get(key) !== undefined) !== present) {
        if (performance.now() > deadline) throw new Error(`pod ${object.metadata.name} ${present ? 'never appeared in' : 'never left'} the ipcache`);
        await sleep(1); // not a busy loop: this machine's cores are the agent's too
      }
      times.push(performance.now() - sent);
      await sleep(EVENT_SPACING_MS);
    }
  }
  return times;
}

/** CHURN_PER_SECOND pod creations and deletions a second on remote nodes, until stop() is true. */
async function churn(server: KubeApiServer, scale: Scale, stopped: () => boolean, next: () => number): Promise<void> {
  const perNode = podsPerNode(scale);
  const live: KubeObject[] = [];
  while (!stopped()) {
    const n = next();
    if (n % 2 === 0 || live.length === 0) {
      const object = clusterPod(1 + ((n * 104_729) % (scale.nodes - 1)), perNode + 100 + (n % 100), n);
      if (!server.get('pods', object.metadata.name, object.metadata.namespace)) {
        server.create('pods', object);
        live.push(object);
      }
    } else {
      const object = live.shift()!;
      server.remove('pods', object.metadata.name, object.metadata.namespace);
    }
    await sleep(1000 / CHURN_PER_SECOND);
  }
  for (const object of live) server.remove('pods', object.metadata.name, object.metadata.namespace);
}

/** The agent's CPU (percent of one core) over a window in which `during` runs. */
async function cpuOver(agent: AgentProcess, windowMs: number, during: (stopped: () => boolean) => Promise<void> | void): Promise<number> {
  let stop = false;
  const cpu0 = await agent.cpuSeconds();
  const t0 = performance.now();
  const running = during(() => stop);
  await sleep(windowMs);
  stop = true;
  const cpu1 = await agent.cpuSeconds();
  const t1 = performance.now();
  await running;
  return (100 * (cpu1 - cpu0)) / ((t1 - t0) / 1000);
}

/** The old path's cost per change: the whole plan recomputed (median of 3), and the planner's per event. */
async function oldPath(scale: Scale): Promise<{ fullMs: number; plannerMs: number }> {
  const state = new ClusterState(LOCAL_NODE);
  const events: ClusterEvent[] = [];
  state.on('changed', (event) => events.push(event));
  const snapshot = { nodes: [] as ReturnType<typeof nodeInfo>[], endpoints: [] as ReturnType<typeof podEndpoints>, policies: [] as ReturnType<typeof policyRule>[] };
  for (const [resource, object] of clusterObjects(scale)) {
    if (resource === 'nodes') snapshot.nodes.push(nodeInfo(object));
    else if (resource === 'pods') snapshot.endpoints.push(...podEndpoints(object, TRUST_DOMAIN));
    else snapshot.policies.push(policyRule(object));
  }
  state.replaceAll(snapshot);
  const ids = await NumericIds.load();
  const runs: number[] = [];
  for (let run = 0; run < 3; run++) {
    const t0 = performance.now();
    fullPlan(state, ids, 'disabled');
    runs.push(performance.now() - t0);
  }
  const planner = new NodePlanner({ localNode: LOCAL_NODE, ids: ids, defaultMode: 'disabled' });
  for (const event of events) planner.apply(event);
  planner.delta(() => undefined);
  const perNode = podsPerNode(scale);
  const times: number[] = [];
  for (let n = 0; n < EVENTS; n++) {
    const index = n % 10 === 0 ? 0 : 1 + ((n * 7919) % (scale.nodes - 1));
    const endpoint = podEndpoints(clusterPod(index, perNode + (n % 100), n), TRUST_DOMAIN)[0]!;
    const t0 = performance.now();
    planner.apply({ type: 'endpoint', action: 'upsert', endpoint });
    planner.delta(() => undefined);
    planner.apply({ type: 'endpoint', action: 'delete', ip: endpoint.ip });
    planner.delta(() => undefined);
    times.push((performance.now() - t0) / 2);
  }
  return { fullMs: median(runs), plannerMs: percentile(times, 99) };
}

/**
 * The remote view as compact per-node objects: for each node, its pods' addresses with the fields
 * policy reads (namespace, service account, labels) — what each agent would receive in place of
 * every pod in full.
 */
function compactViewBytes(scale: Scale): number {
  const perNode = podsPerNode(scale);
  let bytes = 0;
  for (let index = 0; index < scale.nodes; index++) {
    const node = clusterNode(index);
    const endpoints = [];
    for (let slot = 0; slot < perNode; slot++) {
      const pod = clusterPod(index, slot, index * perNode + slot) as unknown as { metadata: { namespace: string; labels: Record<string, string> }; spec: { serviceAccountName: string }; status: { podIP: string } };
      endpoints.push({ ip: pod.status.podIP, namespace: pod.metadata.namespace, serviceAccount: pod.spec.serviceAccountName, labels: pod.metadata.labels });
    }
    bytes += JSON.stringify({ type: 'ADDED', object: { apiVersion: 'meshauth.io/v1alpha1', kind: 'NodeEndpoints', metadata: { name: node.metadata.name, resourceVersion: '1' }, endpoints } }).length + 1;
  }
  return bytes;
}

function print(f: ScaleFigures): void {
  console.log(`\n${thousands(f.nodes)} nodes / ${thousands(f.pods)} pods, 30 local pods, 50 policies`);
  report('sync_s: start → Ready with the full view', f.sync_s, 's', TARGETS.syncS);
  info('  empty-cluster agent (baseline)', `${fmt(f.empty_sync_s)} s (${(f.sync_s / f.empty_sync_s).toFixed(2)}× baseline)`);
  report('rss_mb: steady, 5 s after sync', f.rss_mb, 'MB', TARGETS.rssMb);
  info('  empty-cluster agent (baseline)', `${fmt(f.empty_rss_mb)} MB (${(f.rss_mb / f.empty_rss_mb).toFixed(2)}× baseline)`);
  report('event_to_map_p50_ms: pod event → pinned ipcache', f.event_to_map_p50_ms, 'ms', TARGETS.eventToMapMs);
  report('event_to_map_p99_ms', f.event_to_map_p99_ms, 'ms', TARGETS.eventToMapMs);
  info('  max', `${fmt(f.event_to_map_max_ms)} ms`);
  info('  old path: full recomputation per change (baseline)', `${fmt(f.full_recompute_ms)} ms (p99 is ${(f.event_to_map_p99_ms / f.full_recompute_ms).toFixed(3)}× baseline)`);
  info('  incremental planner per event, p99 (in process)', `${fmt(f.planner_event_ms)} ms`);
  report(`cpu_percent: ${CHURN_PER_SECOND} pod events/s for ${CHURN_SECONDS} s`, f.cpu_percent, '%', TARGETS.cpuPercent);
  info('  the same agent idle (baseline)', `${fmt(f.idle_cpu_percent)} % (${(f.cpu_percent / Math.max(f.idle_cpu_percent, 0.01)).toFixed(2)}× baseline)`);
  info('apiserver_bytes_per_agent_sync: every pod in full', `${thousands(f.apiserver_bytes_per_agent_sync)} B`);
  info('  local pods by field selector (measured)', `${thousands(f.local_pods_bytes)} B`);
  info('  + compact remote view (computed)', `${thousands(f.compact_view_bytes)} B (together ${((f.local_pods_bytes + f.compact_view_bytes) / f.apiserver_bytes_per_agent_sync).toFixed(3)}× full pods)`);
  info('ipcache host entries after sync / write failures', `${thousands(f.ipcache_entries)} / ${thousands(f.write_failures)}`);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const log = (text: string) => process.stderr.write(`[bench:scale] ${text}\n`);

async function mkdirp(path: string): Promise<string> {
  await mkdir(path, { recursive: true });
  return path;
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
