import { Counter, type Registry } from 'prom-client';
import type { RejectionReason } from '../cluster/state.js';

const REJECTION_REASONS: readonly RejectionReason[] = ['endpoint_outside_node_cidrs', 'node_address_conflict'];
export const PLAN_MAPS = ['ipcache', 'policy'] as const;
export type PlanMap = (typeof PLAN_MAPS)[number];

/**
 * What becomes of the cluster state on its way to the datapath: claims the cluster state refused
 * (a node claiming an address that is not its own), and plan entries a full BPF map refused. Every
 * label value is exported from the start at 0.
 */
export class PlanMetrics {
  readonly rejected: Counter<'reason'>;
  readonly writeFailures: Counter<'map'>;

  constructor(registry: Registry) {
    this.rejected = new Counter({
      name: 'meshauth_cluster_rejected_total',
      help: 'Claims of the cluster state refused: an endpoint outside its node\'s pod CIDRs, an address two nodes claim',
      labelNames: ['reason'],
      registers: [registry],
    });
    this.writeFailures = new Counter({
      name: 'meshauth_datapath_write_failures_total',
      help: 'Plan entries a BPF map refused (full: its capacity is too small for the cluster), by map; retried at every plan change',
      labelNames: ['map'],
      registers: [registry],
    });
    for (const reason of REJECTION_REASONS) this.rejected.inc({ reason }, 0);
    for (const map of PLAN_MAPS) this.writeFailures.inc({ map }, 0);
  }
}
