import test from 'ava';
import type { Registry } from 'prom-client';
import { AgentMetrics } from '../src/agent/agent-metrics.js';
import { createRegistry } from '../src/metrics/registry.js';
import { COUNTER_NAMES, type Counters } from '../src/datapath/gate/layout.js';

/** `name{labels} value` lines of one metric family in the exposition text, as a map. */
async function samples(registry: Registry, name: string): Promise<Map<string, number>> {
  const text = await registry.getSingleMetricAsString(name);
  const result = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const match = /^(\S+?)(\{.*\})? (\S+)$/.exec(line);
    if (!match || match[1] !== name) throw new Error(`unexpected line "${line}"`);
    result.set(match[2] ?? '', Number(match[3]));
  }
  return result;
}

function counters(values: Partial<Counters>): Counters {
  return Object.fromEntries(COUNTER_NAMES.map((name) => [name, values[name] ?? 0n])) as Counters;
}

test('every known label value is exported at 0 from the start', async (t) => {
  const registry = createRegistry();
  new AgentMetrics(registry);
  t.deepEqual(
    [...(await samples(registry, 'meshauth_auth_pairs')).entries()],
    [
      ['{state="authenticated"}', 0],
      ['{state="pending"}', 0],
      ['{state="failed"}', 0],
    ],
  );
  t.deepEqual([...(await samples(registry, 'meshauth_peers')).keys()], ['{state="up"}', '{state="pending"}', '{state="failed"}']);
  t.deepEqual([...(await samples(registry, 'meshauth_signals_total')).keys()], [
    '{status="handled"}',
    '{status="deduplicated"}',
    '{status="unresolved"}',
    '{status="dropped"}',
  ]);
  t.deepEqual([...(await samples(registry, 'meshauth_reauth_total')).keys()], [
    '{trigger="reauth"}',
    '{trigger="rotation"}',
    '{trigger="bundle-change"}',
    '{trigger="restored"}',
  ]);
  t.deepEqual([...(await samples(registry, 'meshauth_transport_rekeys_total')).entries()], [['', 0]]);
});

test('the helpers set gauges and count events', async (t) => {
  const registry = createRegistry();
  const metrics = new AgentMetrics(registry);
  metrics.setPairs({ authenticated: 5, failed: 1 });
  metrics.setPairs({ authenticated: 7, pending: 2 });
  metrics.setPeers({ up: 3 });
  metrics.setAuthMap(9, 524_288);
  metrics.reauth('rotation');
  metrics.reauth('rotation');
  metrics.reauth('bundle-change');
  metrics.signal('handled');
  metrics.signal('deduplicated', 4);
  metrics.transportRekey();

  const pairs = await samples(registry, 'meshauth_auth_pairs');
  t.is(pairs.get('{state="authenticated"}'), 7);
  t.is(pairs.get('{state="pending"}'), 2);
  t.is(pairs.get('{state="failed"}'), 0, 'a state left out is set to 0, not kept');
  t.is((await samples(registry, 'meshauth_peers')).get('{state="up"}'), 3);
  t.is((await samples(registry, 'meshauth_auth_map_entries')).get(''), 9);
  t.is((await samples(registry, 'meshauth_auth_map_capacity')).get(''), 524_288);
  const reauths = await samples(registry, 'meshauth_reauth_total');
  t.is(reauths.get('{trigger="rotation"}'), 2);
  t.is(reauths.get('{trigger="bundle-change"}'), 1);
  const signals = await samples(registry, 'meshauth_signals_total');
  t.is(signals.get('{status="handled"}'), 1);
  t.is(signals.get('{status="deduplicated"}'), 4);
  t.is((await samples(registry, 'meshauth_transport_rekeys_total')).get(''), 1);
});

test('datapath counters are read at scrape time, bigints converted, packets and signals apart', async (t) => {
  const registry = createRegistry();
  let reads = 0;
  let current = counters({ allowed: 10n, droppedNoEntry: 3n, signalsSent: 2n });
  new AgentMetrics(registry, {
    datapathCounters: () => {
      reads += 1;
      return current;
    },
  });
  t.is(reads, 0, 'nothing is read before a scrape');

  const packets = await samples(registry, 'meshauth_datapath_packets_total');
  t.deepEqual([...packets.keys()], [
    '{verdict="allowed"}',
    '{verdict="not_required"}',
    '{verdict="exempt"}',
    '{verdict="dropped_no_entry"}',
    '{verdict="dropped_expired"}',
    '{verdict="unknown_identity"}',
    '{verdict="dropped_malformed"}',
    '{verdict="dropped_not_ip"}',
    '{verdict="dropped_spoofed_source"}',
    '{verdict="dropped_unverified_arrival"}',
    '{verdict="service_deferred"}',
  ]);
  t.is(packets.get('{verdict="allowed"}'), 10);
  t.is(packets.get('{verdict="dropped_no_entry"}'), 3);
  const signals = await samples(registry, 'meshauth_datapath_signals_total');
  t.deepEqual([...signals.entries()], [
    ['{result="sent"}', 2],
    ['{result="suppressed"}', 0],
    ['{result="lost"}', 0],
  ]);
  t.is(reads, 2);

  // The next scrape sees the new values: nothing is cached or accumulated on the agent side.
  current = counters({ allowed: 2n ** 53n + 2n, droppedExpired: 18_446_744_073_709_551_615n });
  const later = await samples(registry, 'meshauth_datapath_packets_total');
  t.is(later.get('{verdict="allowed"}'), 2 ** 53 + 2);
  t.is(later.get('{verdict="dropped_expired"}'), Number(18_446_744_073_709_551_615n), 'u64 max, rounded to the nearest float64');
  t.is(later.get('{verdict="dropped_no_entry"}'), 0);
});

test('no datapath, or a failing read: no datapath samples, the error is reported, the scrape still works', async (t) => {
  const registry = createRegistry();
  let attached = false;
  const errors: unknown[] = [];
  new AgentMetrics(registry, {
    datapathCounters: () => {
      if (!attached) return undefined;
      throw new Error('map closed');
    },
    onCollectError: (err) => errors.push(err),
  });
  t.is((await samples(registry, 'meshauth_datapath_packets_total')).size, 0);
  attached = true;
  const text = await registry.metrics();
  t.false(/^meshauth_datapath_packets_total/m.test(text));
  t.false(/^meshauth_datapath_signals_total/m.test(text));
  t.regex(text, /^meshauth_auth_map_capacity 0$/m, 'the other metrics are still served');
  t.is(errors.length, 2);
  t.is((errors[0] as Error).message, 'map closed');
});

test('a counter that is not a non-negative bigint is left out, not exported wrong', async (t) => {
  const registry = createRegistry();
  const bad = { ...counters({ allowed: 5n }), exempt: -1n, droppedNotIp: 7 as unknown as bigint };
  new AgentMetrics(registry, { datapathCounters: () => bad });
  const packets = await samples(registry, 'meshauth_datapath_packets_total');
  t.is(packets.get('{verdict="allowed"}'), 5);
  t.false(packets.has('{verdict="exempt"}'));
  t.false(packets.has('{verdict="dropped_not_ip"}'));
});

test('the registry has the standard process and Node.js metrics, unprefixed, and no gauge named like a counter', async (t) => {
  const text = await createRegistry().metrics();
  t.regex(text, /^# TYPE process_cpu_seconds_total counter$/m);
  t.regex(text, /^# TYPE process_resident_memory_bytes gauge$/m);
  t.regex(text, /^# TYPE nodejs_heap_size_used_bytes gauge$/m);
  t.regex(text, /^# TYPE nodejs_eventloop_lag_seconds gauge$/m);
  t.false(/^# TYPE \S+_total (gauge|histogram|summary)$/m.test(text));
});
