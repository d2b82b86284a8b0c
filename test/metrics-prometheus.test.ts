// A real Prometheus server (Debian's `prometheus` package) scrapes the agent's metrics server and
// answers PromQL about it: the exposition is what Prometheus accepts, not just what we think it is.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { AgentMetrics } from '../src/agent/agent-metrics.js';
import { createRegistry } from '../src/metrics/registry.js';
import { MetricsServer } from '../src/metrics/server.js';
import { COUNTER_NAMES, type Counters } from '../src/datapath/gate/layout.js';

const DEADLINE_MS = 30_000;

interface QueryResult {
  metric: Record<string, string>;
  value: [number, string];
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

/** Retries `attempt` until it returns a value, or fails with the last reason at the deadline. */
async function eventually<T>(what: string, attempt: () => Promise<T | undefined>, prometheus: ResultPromise): Promise<T> {
  const deadline = Date.now() + DEADLINE_MS;
  let last = 'no answer yet';
  while (Date.now() < deadline) {
    if (prometheus.exitCode !== null) throw new Error(`prometheus exited (${prometheus.exitCode}) while waiting for ${what}`);
    try {
      const value = await attempt();
      if (value !== undefined) return value;
    } catch (err) {
      last = (err as Error).message;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`timed out after ${DEADLINE_MS} ms waiting for ${what} (last: ${last})`);
}

test('Prometheus scrapes the metrics server and answers PromQL over the agent metrics', async (t) => {
  const installed = await execa('prometheus', ['--version'], { reject: false });
  if (installed.failed) {
    t.fail(`the prometheus binary is not installed (${installed.shortMessage}): run scripts/setup.sh (Debian package "prometheus")`);
    return;
  }

  const registry = createRegistry();
  let allowed = 0n;
  const metrics = new AgentMetrics(registry, {
    datapathCounters: () => {
      allowed += 1000n;
      return Object.fromEntries(COUNTER_NAMES.map((name) => [name, name === 'allowed' ? allowed : name === 'droppedNoEntry' ? 7n : 0n])) as Counters;
    },
  });
  metrics.setAuthMap(12, 524_288);
  metrics.reauth('rotation');
  metrics.reauth('rotation');
  metrics.reauth('bundle-change');
  const server = await MetricsServer.start({ host: '127.0.0.1', port: 0, registry, readiness: () => ({ ready: true }) });
  t.teardown(() => server.close());

  const dir = await mkdtemp(join(tmpdir(), 'meshauth-prometheus-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const config = join(dir, 'prometheus.yml');
  await writeFile(
    config,
    [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      '  evaluation_interval: 1s',
      'scrape_configs:',
      '  - job_name: meshauth',
      '    static_configs:',
      `      - targets: ['127.0.0.1:${server.port}']`,
      '',
    ].join('\n'),
  );
  const port = await freePort();
  const prometheus = execa(
    'prometheus',
    [`--config.file=${config}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
    { reject: false, stdin: 'ignore', forceKillAfterDelay: 5_000 },
  );
  // Registered before anything can fail, and registered after the directory's removal, so that
  // (teardowns run last-in first-out) Prometheus is stopped before its data directory goes.
  t.teardown(async () => {
    prometheus.kill('SIGTERM');
    await prometheus;
  });

  const api = `http://127.0.0.1:${port}/api/v1`;
  const query = async (promql: string): Promise<QueryResult[]> => {
    const response = await fetch(`${api}/query?query=${encodeURIComponent(promql)}`);
    const body = (await response.json()) as { status: string; error?: string; data?: { result: QueryResult[] } };
    if (body.status !== 'success' || !body.data) throw new Error(`query ${promql}: ${body.error ?? response.status}`);
    return body.data.result;
  };

  await eventually(
    'the meshauth target to be up',
    async () => {
      const response = await fetch(`${api}/targets`);
      const body = (await response.json()) as { data: { activeTargets: { health: string; lastError: string }[] } };
      const [target] = body.data.activeTargets;
      if (target?.health !== 'up') throw new Error(`target health ${target?.health ?? 'none'} ${target?.lastError ?? ''}`);
      return true;
    },
    prometheus,
  );

  const capacity = await eventually('meshauth_auth_map_capacity', async () => (await query('meshauth_auth_map_capacity'))[0], prometheus);
  t.is(capacity.value[1], '524288');
  t.is(capacity.metric.job, 'meshauth');

  const reauths = await query('sum by (trigger) (meshauth_reauth_total)');
  const byTrigger = Object.fromEntries(reauths.map((sample) => [sample.metric.trigger ?? '', sample.value[1]]));
  t.deepEqual(byTrigger, { reauth: '0', rotation: '2', 'bundle-change': '1', restored: '0' });

  const dropped = await query('meshauth_datapath_packets_total{verdict="dropped_no_entry"}');
  t.is(dropped[0]?.value[1], '7');

  // Counters that move between scrapes give a positive rate: the agent's own counter, and the
  // BPF counter that is read at every scrape (it grows by 1000 per read).
  const ticker = setInterval(() => metrics.signal('handled'), 100);
  t.teardown(() => clearInterval(ticker));
  const handledRate = await eventually(
    'a positive rate of handled signals',
    async () => (await query('rate(meshauth_signals_total{status="handled"}[5s]) > 0'))[0],
    prometheus,
  );
  t.true(Number(handledRate.value[1]) > 0);
  const allowedRate = await eventually(
    'a positive rate of allowed packets',
    async () => (await query('sum(rate(meshauth_datapath_packets_total{verdict="allowed"}[5s])) > 0'))[0],
    prometheus,
  );
  t.true(Number(allowedRate.value[1]) > 0);
});
