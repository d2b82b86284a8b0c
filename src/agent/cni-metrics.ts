import { Counter, Histogram, type Registry } from 'prom-client';

export type CniCommand = 'add' | 'del' | 'check';
export type CniResult = 'ok' | 'error';

/**
 * The CNI plugin's requests as the agent served them, and the time from a pod's CNI ADD to its
 * pairs being ready: how long a new pod's first connections could have waited on meshauth.
 */
export class CniMetrics {
  readonly requests: Counter<'command' | 'result'>;
  readonly addReady: Histogram<'outcome'>;
  readonly spoolRejected: Counter;

  constructor(registry: Registry) {
    const registers = [registry];
    this.requests = new Counter({
      name: 'meshauth_cni_requests_total',
      help: 'CNI plugin requests served by the agent, by command (add, del, check) and result (ok, error)',
      labelNames: ['command', 'result'],
      registers,
    });
    for (const command of ['add', 'del', 'check'] as const) for (const result of ['ok', 'error'] as const) this.requests.inc({ command, result }, 0);
    this.addReady = new Histogram({
      name: 'meshauth_cni_add_ready_seconds',
      help: "Time from a pod's CNI ADD to every pair it needs being authenticated (outcome ready), to each being authenticated or refused by a peer that does not know the pod yet (refused: retried later), or to the end of the bounded wait (timeout)",
      labelNames: ['outcome'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
      registers,
    });
    this.spoolRejected = new Counter({
      name: 'meshauth_cni_spool_rejected_total',
      help: 'CNI spool records not registered at start (unreadable, or the pod namespace no longer shows its veth)',
      registers,
    });
  }
}
