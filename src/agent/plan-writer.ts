import type { Datapath } from '../datapath/gate/datapath.js';
import type { IpcacheEntry } from '../datapath/gate/layout.js';
import type { Logger } from '../util/logger.js';
import { policyId, type PlanDelta, type PolicyEntry } from './plan.js';
import type { PlanMap, PlanMetrics } from './plan-metrics.js';

/** The maps a plan delta writes. */
export type PlanMaps = Pick<Datapath, 'setIpcache' | 'deleteIpcache' | 'setPolicy' | 'deletePolicy'>;

/**
 * Writes the ipcache and policy parts of plan deltas to the pinned maps. A write the map refuses —
 * full because its capacity is too small for the cluster (setIpcache/setPolicy return false) — does not stop
 * the agent or the rest of the delta: it is counted, logged once per delta, and kept with the
 * entries after it to be retried with the next delta (deletions may have made room). Deletions go first, so a full map frees
 * room before it is written to.
 */
export class PlanWriter {
  /** Entries the maps refused, with the value still wanted, until written or no longer wanted. */
  private readonly unwritten = { ipcache: new Map<string, IpcacheEntry>(), policy: new Map<string, PolicyEntry>() };

  constructor(
    private readonly maps: PlanMaps,
    private readonly metrics: PlanMetrics,
    private readonly logger: Logger,
  ) {}

  /** Entries wanted but not in the maps (the last delta's refusals). */
  get pending(): number {
    return this.unwritten.ipcache.size + this.unwritten.policy.size;
  }

  write(delta: Pick<PlanDelta, 'ipcache' | 'policy'>): void {
    const failures = { ipcache: 0, policy: 0 };
    const errors = new Set<string>();
    /** `write` returns false where the map is full (Datapath leaves the entry out rather than throw). */
    const attempt = (map: PlanMap, write: () => boolean): boolean => {
      try {
        if (write()) return true;
        failures[map]++;
        errors.add(`${map} map full`);
        return false;
      } catch (err) {
        failures[map]++;
        errors.add((err as Error).message);
        return false;
      }
    };
    // A deletion's result says only whether the entry was there: not a failure either way.
    for (const prefix of delta.ipcache.deleted) {
      if (!this.unwritten.ipcache.delete(prefix)) attempt('ipcache', () => this.maps.deleteIpcache(prefix) || true);
    }
    for (const key of delta.policy.deleted) {
      if (!this.unwritten.policy.delete(policyId(key))) attempt('policy', () => this.maps.deletePolicy(key) || true);
    }
    for (const [prefix, entry] of delta.ipcache.set) this.unwritten.ipcache.set(prefix, entry);
    for (const entry of delta.policy.set) this.unwritten.policy.set(policyId(entry.key), entry);
    // After a refusal the map is full: the rest waits for the next delta rather than each failing.
    for (const [prefix, entry] of this.unwritten.ipcache) {
      if (!attempt('ipcache', () => this.maps.setIpcache(prefix, entry))) break;
      this.unwritten.ipcache.delete(prefix);
    }
    for (const [id, entry] of this.unwritten.policy) {
      if (!attempt('policy', () => this.maps.setPolicy(entry.key, entry.authType))) break;
      this.unwritten.policy.delete(id);
    }
    if (failures.ipcache + failures.policy === 0) return;
    for (const map of ['ipcache', 'policy'] as const) if (failures[map] > 0) this.metrics.writeFailures.inc({ map }, failures[map]);
    this.logger.error(
      { failures, pending: this.pending, errors: [...errors].slice(0, 3) },
      'the datapath refused plan entries (a full map? raise its capacity): their addresses or pairs are not enforced as planned; retried at the next change',
    );
  }
}

