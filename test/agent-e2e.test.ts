// Privileged, end to end: two real agent processes (the CLI, under nsenter) in network
// namespaces, with the real eBPF gate, WireGuard (wireguard-go here) and traffic between
// workloads. The cluster is the demo's (src/demo): node-a runs web, node-b runs db and rogue, a
// workload only node-b lists, so nobody can authenticate it. Each test builds its own uniquely
// named cluster and removes it, also on failure.
import type { ExecutionContext } from 'ava';
import { X509Certificate, createPrivateKey, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentStatus, PairStatus } from '../src/control/status.js';
import type { ConfigInput } from '../src/config/config.js';
import { tcxUsable } from '../src/datapath/gate/hooks.js';
import { defaultObjectPath } from '../src/datapath/gate/loader.js';
import { metricSum, type AgentProcess, type LogLine } from '../src/demo/agent-process.js';
import { DemoCluster, type DemoClusterOptions } from '../src/demo/cluster.js';
import { lostBetween, trafficCut } from '../src/demo/measure.js';
import { preflight } from '../src/demo/preflight.js';
import { TRUST_DOMAIN, demoWorkload } from '../src/demo/scenario.js';
import { DevCa } from '../src/identity/dev-ca.js';
import type { RawSvid } from '../src/identity/types.js';
import { WorkloadApiServer } from './servers/workload-api-server.js';
import { eventually } from './helpers/agents.js';
import { privileged } from './helpers/privileged.js';


// The timeout of a probe that must pass: generous, for a loaded machine's namespaces and
// wireguard-go. Probes that must fail keep short ones: the gate, not the wait, decides them.
const PASSES_WITHIN_MS = 5_000;

const WEB = demoWorkload('web');
const DB = demoWorkload('db');
const nodeId = (node: string) => `spiffe://${TRUST_DOMAIN}/meshauth/node/${node}`;

function pair(status: AgentStatus, localId: string, remoteId: string): PairStatus | undefined {
  return status.pairs.find((p) => p.localId === localId && p.remoteId === remoteId);
}

const authenticated = (localId: string, remoteId: string) => (status: AgentStatus) => pair(status, localId, remoteId)?.state === 'authenticated';

/** Builds the cluster (torn down by t.teardown), starts both agents and the probes, and waits
 *  until web <-> db is authenticated on both nodes. */
async function startCluster(t: ExecutionContext, options: DemoClusterOptions = {}): Promise<DemoCluster> {
  const problems = await preflight(defaultObjectPath());
  if (problems.length > 0) throw new Error(`cannot run: ${problems.join('; ')}`);
  const cluster = await DemoCluster.create({ prefix: 'meshauth-e2e', ...options });
  t.teardown(async () => {
    const leftovers = await cluster.cleanup();
    if (leftovers.length > 0) console.error(`agent-e2e cleanup: ${leftovers.join('; ')}`);
  });
  await Promise.all([cluster.startAgents(), cluster.startProbes()]);
  await Promise.all(['node-a', 'node-b'].map((node) => cluster.waitUntilReady(node)));
  await cluster.agent('node-a').waitForStatus(authenticated(WEB.spiffeId, DB.spiffeId), 'web -> db authenticated');
  await cluster.agent('node-b').waitForStatus(authenticated(DB.spiffeId, WEB.spiffeId), 'db -> web authenticated');
  return cluster;
}

async function pairHandshakes(agent: AgentProcess, role: 'initiator' | 'responder'): Promise<number> {
  return metricSum(await agent.metrics(), 'meshauth_handshakes_total', { kind: 'pair', role, result: 'success' });
}

/** rogue -> web by TCP and UDP: both must be dropped. */
async function rogueIsDropped(t: ExecutionContext, cluster: DemoCluster, when: string): Promise<void> {
  const tcp = await cluster.probe('rogue').tcp(WEB.ip, { timeoutMs: 400 });
  const token = `rogue-${randomBytes(4).toString('hex')}`;
  await cluster.probe('rogue').udp(WEB.ip, token);
  t.false(tcp.ok, `rogue -> web TCP is dropped ${when}`);
  t.false(await cluster.probe('web').received(token, 300), `rogue -> web UDP is dropped ${when}`);
}

privileged('an agent killed during traffic leaves enforcement in place, and restarted restores its pinned pairs without a handshake', async (t) => {
  const cluster = await startCluster(t);
  const a = cluster.agent('node-a');
  const b = cluster.agent('node-b');
  const before = { bResponder: await pairHandshakes(b, 'responder'), bInitiator: await pairHandshakes(b, 'initiator') };
  const nodeHandshakesBefore = metricSum(await b.metrics(), 'meshauth_handshakes_total', { kind: 'node', result: 'success' });

  // web streams to db across the kill and the restart.
  const tag = `kill-${randomBytes(3).toString('hex')}`;
  const streaming = cluster.probe('web').stream(DB.ip, tag, { intervalMs: 5, count: 1400 });
  await sleep(300);
  const killedAt = process.hrtime.bigint();
  await a.kill();
  t.false(a.running);

  // While node-a's agent is down: the authenticated pair keeps passing, the unauthenticated one stays dropped.
  const whileDown = await cluster.probe('web').tcp(DB.ip, { timeoutMs: PASSES_WITHIN_MS, payload: 'while-the-agent-is-down' });
  t.true(whileDown.ok, 'a new connection web -> db works while the agent is down');
  await rogueIsDropped(t, cluster, 'while the agent is down');

  const restarted = await cluster.startAgent('node-a');
  const started = await restarted.waitForLog((line) => line.msg === 'agent started', 'the start');
  t.is(started.gate, (await tcxUsable()) ? 'tcx' : 'tc', 'the start says how the gate hooks interfaces');
  const restoredLine = await restarted.waitForLog((line) => line.msg === 'auth cache restored from the pinned map', 'the restore');
  t.true(Number(restoredLine.restored) >= 1, 'the pinned pair was restored');
  const status = await restarted.waitForStatus(authenticated(WEB.spiffeId, DB.spiffeId), 'web -> db back');
  const restoredPair = pair(status, WEB.spiffeId, DB.spiffeId)!;
  t.is(restoredPair.trigger, 'restored');
  const restoreMs = restoredLine.time! - Date.parse(status.startedAt);
  t.log(`restored ${String(restoredLine.restored)} pair(s) ${restoreMs} ms after the agent started (${restoredLine.time! - restarted.spawnedAt} ms after spawn, Node and tsx start-up included)`);
  // How fast is bench/agent.ts's figure (restore_ms); on a slow or loaded CI machine any bound
  // here would measure the machine. What this test holds is the order: the pairs are restored
  // from the pinned map before the agent can make or answer any handshake.
  const logs = await restarted.logs();
  const restoredAt = logs.findIndex((line) => line.msg === 'auth cache restored from the pinned map');
  const firstHandshakeAt = logs.findIndex((line) => line.msg === 'handshake responder listening' || line.msg === 'node link up');
  t.true(firstHandshakeAt >= 0 && restoredAt < firstHandshakeAt, 'the pinned pairs were restored before the agent could make or answer a handshake');
  await cluster.waitUntilReady('node-a');

  const { sent } = await streaming;
  await sleep(200);
  const arrived = await cluster.probe('db').arrivals(tag);
  const window = lostBetween(sent, arrived, killedAt, process.hrtime.bigint());
  t.log(`${window.sent - window.lost} of ${window.sent} datagrams sent from the kill on arrived`);
  t.true(window.sent > 500, 'the stream covered the kill and the restart');
  t.true(window.lost <= window.sent / 100, `traffic kept passing through the kill and the restart (${window.lost} of ${window.sent} lost)`);

  // No pair handshake on either side: node-b neither answered nor made one; the restarted agent made none.
  t.is(await pairHandshakes(b, 'responder'), before.bResponder, 'node-b answered no pair handshake');
  t.is(await pairHandshakes(b, 'initiator'), before.bInitiator, 'node-b made no pair handshake');
  t.is(await pairHandshakes(restarted, 'initiator'), 0, 'the restarted agent made no pair handshake');
  t.true(metricSum(await b.metrics(), 'meshauth_handshakes_total', { kind: 'node', result: 'success' }) > nodeHandshakesBefore, 'the node link was re-authenticated');
  t.is(pair(await restarted.status(), WEB.spiffeId, DB.spiffeId)?.trigger, 'restored');

  t.true((await cluster.probe('web').tcp(DB.ip, { timeoutMs: PASSES_WITHIN_MS, payload: 'after-the-restart' })).ok, 'web -> db after the restart');
  await rogueIsDropped(t, cluster, 'after the restart');
});

privileged('endpoints that name no interface (as Kubernetes gives them) are found through the kernel and gated', async (t) => {
  // startCluster waits for the gate on every local workload's interface and for web <-> db.
  // Plus an endpoint on node-a (in its pod CIDR) that no interface leads to: counted as ungated until one does.
  const ghost = { ip: '10.77.1.99', spiffeId: `spiffe://${TRUST_DOMAIN}/ns/demo/sa/ghost`, node: 'node-a' };
  const cluster = await startCluster(t, {
    configure: (_node, config) => ({
      ...config,
      cluster: { ...config.cluster, endpoints: [...(config.cluster?.endpoints?.map(({ interface: _named, ...endpoint }) => endpoint) ?? []), ghost] },
    }),
  });
  t.true((await cluster.probe('web').tcp(DB.ip, { timeoutMs: PASSES_WITHIN_MS, payload: 'found-interfaces' })).ok, 'web -> db');
  await rogueIsDropped(t, cluster, 'on interfaces the agents found');
  const ungated = async (node: string) => metricSum(await cluster.agent(node).metrics(), 'meshauth_gate_ungated_endpoints');
  for (let waited = 0; (await ungated('node-a')) !== 1 && waited < 5000; waited += 100) await sleep(100);
  t.is(await ungated('node-a'), 1, 'the endpoint without an interface is reported');
  t.is(await ungated('node-b'), 0);
});

/** SVID and bundle files for the file provider, rewritten atomically like cert-manager does. */
class SvidFiles {
  constructor(private readonly dir: string) {}

  static async create(dir: string): Promise<SvidFiles> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    return new SvidFiles(dir);
  }

  /** The identity.file config section for these SPIFFE IDs. */
  options(ids: readonly string[]): NonNullable<NonNullable<ConfigInput['identity']>['file']> {
    return {
      svids: ids.map((id) => ({ certChain: this.path(id, 'crt'), privateKey: this.path(id, 'key'), bundle: join(this.dir, 'bundle.pem') })),
    };
  }

  /** Issues every ID from `ca` and makes `ca` the only trust anchor. */
  async write(ca: DevCa, ids: readonly string[]): Promise<void> {
    for (const id of ids) {
      const svid: RawSvid = await ca.issue({ id, ttlMs: 3_600_000 });
      await this.replace(this.path(id, 'key'), createPrivateKey({ key: svid.key, format: 'der', type: 'pkcs8' }).export({ type: 'pkcs8', format: 'pem' }).toString());
      await this.replace(this.path(id, 'crt'), svid.chain.map((der) => new X509Certificate(der).toString()).join(''));
    }
    await this.replace(join(this.dir, 'bundle.pem'), ca.bundle().map((der) => new X509Certificate(der).toString()).join(''));
  }

  private path(id: string, kind: 'crt' | 'key'): string {
    return join(this.dir, `${id.split('/').pop()}.${kind}`);
  }

  private async replace(path: string, content: string): Promise<void> {
    const staging = `${path}.new`;
    await writeFile(staging, content, { mode: 0o600 });
    await rename(staging, path);
  }
}

privileged('a CA rotation re-validates pairs: removed while the nodes do not trust each other, back once they do', async (t) => {
  const ca1 = await DevCa.create({ trustDomain: TRUST_DOMAIN });
  const ca2 = await DevCa.create({ trustDomain: TRUST_DOMAIN });
  const ids = { 'node-a': [nodeId('node-a'), WEB.spiffeId], 'node-b': [nodeId('node-b'), DB.spiffeId] } as Record<string, string[]>;
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-e2e-svids-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const files: Record<string, SvidFiles> = {};
  for (const node of ['node-a', 'node-b']) {
    files[node] = await SvidFiles.create(join(dir, node));
    await files[node].write(ca1, ids[node]!);
  }
  const cluster = await startCluster(t, {
    workloads: ['web', 'db'],
    configure: (node, config) => ({ ...config, identity: { provider: 'file', file: files[node]!.options(ids[node]!) } }),
  });
  const a = cluster.agent('node-a');
  const b = cluster.agent('node-b');
  t.true((await cluster.probe('web').tcp(DB.ip, { timeoutMs: PASSES_WITHIN_MS })).ok, 'web -> db under the first CA');

  // node-a moves to the new CA alone: it no longer trusts node-b's certificates, nor node-b its own.
  const logged = (await a.logs()).length;
  await files['node-a']!.write(ca2, ids['node-a']!);
  await a.waitForStatus((s) => !authenticated(WEB.spiffeId, DB.spiffeId)(s), 'web -> db removed on node-a', 10_000);
  const failure = await a.waitForLog((line) => line.msg === 'pair authentication failed' && line.trigger === 'bundle-change', 'the failed re-validation', { since: logged });
  t.log(`node-a's re-validation failed: ${String(failure.failureClass)}: ${String(failure.err)}`);
  t.false((await cluster.probe('web').tcp(DB.ip, { timeoutMs: 600 })).ok, 'web -> db is cut while the nodes do not trust each other');

  // node-b follows: both trust the new CA, the pair comes back on both sides.
  const rotatedAt = Date.now();
  await files['node-b']!.write(ca2, ids['node-b']!);
  const onA = await a.waitForStatus(authenticated(WEB.spiffeId, DB.spiffeId), 'web -> db back on node-a', 20_000);
  const onB = await b.waitForStatus(
    (s) => authenticated(DB.spiffeId, WEB.spiffeId)(s) && Date.parse(pair(s, DB.spiffeId, WEB.spiffeId)!.lastAuthenticatedAt!) >= rotatedAt - 1000,
    'db -> web re-authenticated on node-b',
    20_000,
  );
  t.true(Date.parse(pair(onA, WEB.spiffeId, DB.spiffeId)!.lastAuthenticatedAt!) >= rotatedAt - 1000, 'node-a holds a fresh authentication');
  t.truthy(pair(onB, DB.spiffeId, WEB.spiffeId));
  t.true((await cluster.probe('web').tcp(DB.ip, { timeoutMs: PASSES_WITHIN_MS })).ok, 'web -> db under the new CA');
});

privileged('config reloads: a malformed file changes nothing, an identity removed loses its traffic', async (t) => {
  const cluster = await startCluster(t);
  const a = cluster.agent('node-a');
  const pairBefore = pair(await a.status(), WEB.spiffeId, DB.spiffeId)!;
  const configPath = cluster.files('node-a').configPath;

  for (const [content, expected] of [
    ['cluster: [this is not yaml\n', /not valid YAML/],
    ['nodeName: node-a\nauth: { cacheSize: lots }\n', /auth\.cacheSize/],
  ] as const) {
    const logged = (await a.logs()).length;
    await writeFile(configPath, content, { mode: 0o600 });
    a.signal('SIGHUP');
    // This file's own rejection: the file watcher may still report the previous bad file too.
    const rejected = await a.waitForLog((line) => line.msg === 'configuration reload rejected; keeping the running state' && expected.test(String(line.err)), 'the rejection', {
      since: logged,
    });
    t.regex(String(rejected.err), expected);
    t.true(a.running, 'the agent keeps running');
    t.deepEqual(pair(await a.status(), WEB.spiffeId, DB.spiffeId), pairBefore, 'the pair is untouched');
    t.true((await cluster.probe('web').tcp(DB.ip, { timeoutMs: PASSES_WITHIN_MS })).ok, 'web -> db still passes');
  }
  await rogueIsDropped(t, cluster, 'after the rejected reloads');

  // Revocation: web's endpoint leaves the cluster while it streams to db.
  const tag = `revoke-${randomBytes(3).toString('hex')}`;
  const streaming = cluster.probe('web').stream(DB.ip, tag, { intervalMs: 2, count: 500 });
  // The revocation starts once the stream is seen passing, not after a fixed time a loaded
  // machine may spend starting it.
  await eventually(async () => (await cluster.probe('db').arrivals(tag)).size > 50, 'web -> db passing before the revocation');
  cluster.setWorkloads(['db', 'rogue']);
  const revokedAt = await cluster.reload();
  // The property: once reloaded, web -> db is cut. A datagram sent now either arrives within
  // moments (not cut) or never (cut); polled for 10 s, far longer than the cut takes on any
  // machine (bench/agent.ts: revoke_ms_p99, target 100 ms), while nothing but the reload would cut
  // it before the pair expires in an hour.
  await eventually(async () => {
    const token = `after-revoke-${randomBytes(4).toString('hex')}`;
    await cluster.probe('web').udp(DB.ip, token);
    return !(await cluster.probe('db').received(token, 1000));
  }, 'web -> db cut after the reload');
  // How soon is a benchmark's figure: logged, not asserted (the stream may end before a slow
  // machine's reload does).
  const { sent } = await streaming;
  const cut = trafficCut(sent, await cluster.probe('db').arrivals(tag), revokedAt);
  t.log(`revocation: last datagram through sent ${cut.lastPassedMs?.toFixed(1)} ms, first dropped ${cut.cutMs?.toFixed(1) ?? '(the stream ended before the cut)'} ms after the SIGHUP`);
  t.false((await cluster.probe('web').tcp(DB.ip, { timeoutMs: 600 })).ok, 'no new connection either');
  t.is(pair(await a.status(), WEB.spiffeId, DB.spiffeId), undefined, 'the pair is gone on node-a');
  t.is(pair(await cluster.agent('node-b').status(), DB.spiffeId, WEB.spiffeId), undefined, 'and on node-b');
});

privileged('an unreachable identity provider is a clear error, and the agent keeps serving with what it had', async (t) => {
  const ca = await DevCa.create({ trustDomain: TRUST_DOMAIN });
  const servers: Record<string, WorkloadApiServer> = {};
  t.teardown(() => Promise.all(Object.values(servers).map((server) => server.close().catch(() => undefined))));
  servers['node-a'] = await WorkloadApiServer.start({ ca, svids: [{ id: nodeId('node-a') }, { id: WEB.spiffeId }] });
  servers['node-b'] = await WorkloadApiServer.start({ ca, svids: [{ id: nodeId('node-b') }, { id: DB.spiffeId }] });
  const cluster = await startCluster(t, {
    workloads: ['web', 'db'],
    configure: (node, config) => ({ ...config, identity: { provider: 'spiffe', spiffe: { endpoint: servers[node]!.address } } }),
  });
  const a = cluster.agent('node-a');
  const before = await a.status();

  const logged = (await a.logs()).length;
  const socketPath = servers['node-a'].address.replace(/^unix:\/\//, '');
  await servers['node-a'].close();
  // The stream ends (CANCELLED), then every reconnection finds nobody there.
  const unreachable = (line: LogLine) => line.msg === 'identity provider error' && /UNAVAILABLE/.test(String(line.err));
  const error = await a.waitForLog(unreachable, 'the provider error', { since: logged, timeoutMs: 20_000 });
  t.log(`node-a: identity provider error: ${String(error.kind)}: ${String(error.err)}`);
  t.like(error, { level: 40, provider: 'spiffe', kind: 'unavailable' });
  t.true(String(error.err).includes(socketPath), 'the error names the endpoint it cannot reach');
  await sleep(1000); // more reconnection attempts
  const after = await a.status();
  t.true(a.running, 'the agent keeps running');
  t.deepEqual(after.identities, before.identities, 'it keeps its SVIDs');
  t.deepEqual(pair(after, WEB.spiffeId, DB.spiffeId), pair(before, WEB.spiffeId, DB.spiffeId), 'and its pair');
  t.true((await cluster.probe('web').tcp(DB.ip, { timeoutMs: PASSES_WITHIN_MS, payload: 'provider-down' })).ok, 'web -> db still passes');
  t.true(metricSum(await a.metrics(), 'meshauth_identity_provider_errors_total', { provider: 'spiffe' }) > 0, 'the error is counted');
});
