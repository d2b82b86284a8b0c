import { Counter, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * The agent's metric registry, with prom-client's process and Node.js runtime metrics.
 *
 * Those keep their standard unprefixed names (process_cpu_seconds_total, nodejs_heap_size_used_bytes,
 * ...) so the usual dashboards and alerts work unchanged; meshauth's own metrics carry meshauth_.
 */
export function createRegistry(): Registry {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  // prom-client exports three gauges named like counters (nodejs_active_handles_total, ...), which
  // `promtool check metrics` flags and which break rate()-style tooling that trusts the suffix. The
  // same numbers remain available, split by type, in the unsuffixed gauges (nodejs_active_handles).
  for (const { name } of registry.getMetricsAsArray()) {
    if (name.endsWith('_total') && !(registry.getSingleMetric(name) instanceof Counter)) registry.removeSingleMetric(name);
  }
  return registry;
}
