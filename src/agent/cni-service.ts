// What the agent does for the CNI plugin's requests (the control socket's /v1/cni/* paths):
//   ADD   registers the pod's binding (read from its namespace), plans at once, and answers when
//         the pod's pairs with existing endpoints are authenticated or the plugin's wait runs out;
//   DEL   revokes the pod's addresses and pairs on this node before answering, so the address
//         can be given to a new pod only once this node no longer maps it to the old identity;
//   CHECK answers whether the binding still holds (the interface kept its name and index).
// Every request is idempotent: ADD again re-registers, DEL of an unknown container answers
// removed: false.
import type { CniAddRequest, CniAddResponse, CniCheckRequest, CniCheckResponse, CniDelRequest, CniDelResponse } from '../control/cni-api.js';
import type { CniHandlers } from '../control/server.js';
import type { ClusterState } from '../cluster/state.js';
import type { EndpointInfo } from '../cluster/types.js';
import type { KeyedPair } from '../auth/types.js';
import { stillBound } from '../datapath/gate/interface-resolver.js';
import { sleep } from '../util/backoff.js';
import type { Logger } from '../util/logger.js';
import type { CniCommand, CniMetrics } from './cni-metrics.js';
import type { PodBinding, PodBindings } from './pod-bindings.js';

/**
 * authenticated; refused by the peer's policy check (`unauthorized`: the peer does not know the
 * pod yet, as a peer whose informer lags does not, and retrying now would not help); or waiting
 * (in progress, or failed in a way a retry soon may fix: no node link yet, a timeout).
 */
export type PairOutcome = 'authenticated' | 'refused' | 'waiting';

/** How often a waiting ADD looks at its pairs: a pair completes within a handshake (milliseconds
 *  on a cluster network), so a few ms of polling add little, and no event plumbing is needed. */
const READY_POLL_MS = 5;

export interface CniServiceOptions {
  pods: PodBindings;
  state: ClusterState;
  /** The namespace of the host-side interfaces (tests, the demo); absent: ours. */
  hostNetns?: string;
  /** Computes and applies the node's plan now (the pod's binding, or its revocation, takes effect). */
  replanNow: () => void;
  /** An address came back into use: the static config's endpoint for it counts again. */
  reloadStatic: () => void;
  /**
   * The pod's endpoints, from a cluster source that names identities by pod (Kubernetes: its
   * informer's copy of the pod, scheduled but not Running yet); empty while it has not seen the
   * pod. Absent where endpoints are configured by address (the static config).
   */
  identify?: (binding: PodBinding) => EndpointInfo[];
  /** The desired pairs of the local endpoints at these addresses (either side). */
  podPairs: (ips: readonly string[]) => KeyedPair[];
  /** Where a pair stands for a waiting ADD (undefined: no longer desired). */
  pairOutcome: (pair: KeyedPair) => PairOutcome | undefined;
  metrics: CniMetrics;
  logger: Logger;
}

export class CniService implements CniHandlers {
  constructor(private readonly options: CniServiceOptions) {}

  add(request: CniAddRequest): Promise<CniAddResponse> {
    return this.counted('add', async () => {
      const started = performance.now();
      const { pods, state, logger } = this.options;
      const { binding, superseded } = await pods.register(request);
      for (const old of superseded) this.revoke(old, new Set(binding.ips));
      let restored = false;
      for (const ip of binding.ips) restored = state.unrevoke(ip) || restored;
      if (restored) this.options.reloadStatic();
      let identified = this.identify(binding);
      this.options.replanNow();
      logger.info({ containerId: binding.containerId, pod: binding.owner, ips: binding.ips, interface: binding.bound.name }, 'pod registered by the CNI plugin');
      const deadline = started + request.waitMs;
      // The wait ends when every pair of the pod is authenticated or refused by its peer (a peer
      // that does not know the pod yet; the pair is retried with backoff, and the pod must not
      // wait out the whole bound for that). An identity not known yet is one pair waiting: its
      // pairs are not even known.
      let pairs = identified ? this.options.podPairs(binding.ips) : undefined;
      const count = (outcome: PairOutcome): number =>
        pairs === undefined ? (outcome === 'waiting' ? 1 : 0) : pairs.filter((pair) => this.options.pairOutcome(pair) === outcome).length;
      while (count('waiting') > 0 && performance.now() < deadline) {
        await sleep(Math.min(READY_POLL_MS, Math.max(0, deadline - performance.now())));
        // The pod may have been deleted while its ADD waited: nothing left to wait for.
        if (pods.get(binding.containerId) !== binding) break;
        if (!identified && (identified = this.identify(binding))) {
          this.options.replanNow();
          pairs = this.options.podPairs(binding.ips);
        }
      }
      const pending = count('waiting') + count('refused');
      const outcome = pending === 0 ? 'ready' : count('waiting') > 0 ? 'timeout' : 'refused';
      this.options.metrics.addReady.observe({ outcome }, (performance.now() - started) / 1000);
      return { ready: pending === 0, pending, bound: binding.bound };
    });
  }

  del(request: CniDelRequest): Promise<CniDelResponse> {
    return this.counted('del', (): Promise<CniDelResponse> => {
      const binding = this.options.pods.remove(request.containerId);
      if (!binding) return Promise.resolve({ removed: false });
      this.revoke(binding);
      this.options.replanNow();
      this.options.logger.info({ containerId: binding.containerId, pod: binding.owner, ips: binding.ips }, 'pod deleted: its addresses and pairs revoked');
      return Promise.resolve({ removed: true });
    });
  }

  check(request: CniCheckRequest): Promise<CniCheckResponse> {
    return this.counted('check', async () => {
      const binding = this.options.pods.get(request.containerId);
      if (!binding) return { ok: false, reason: `container ${request.containerId} is not registered with the agent` };
      if (!(await stillBound(binding.bound, this.options.hostNetns))) {
        return { ok: false, reason: `interface ${binding.bound.name} (ifindex ${binding.bound.ifindex}) is gone or was replaced` };
      }
      return { ok: true };
    });
  }

  /** Bindings whose interface went away (re-check): their addresses are revoked as by DEL. */
  revokeStale(stale: readonly PodBinding[]): void {
    if (stale.length === 0) return;
    for (const binding of stale) this.revoke(binding);
    this.options.replanNow();
    this.options.logger.warn({ containers: stale.map((binding) => binding.containerId) }, 'pod interfaces gone or replaced: their addresses revoked');
  }

  /**
   * Puts the pod's endpoints into the node's state, when its source names identities by pod;
   * returns whether its identity is known. A different owner of one of its addresses (a deleted
   * pod whose deletion the informer has not delivered yet) is removed first, so the address is
   * never mapped to both.
   */
  private identify(binding: PodBinding): boolean {
    if (!this.options.identify) return true;
    const endpoints = this.options.identify(binding);
    const { state } = this.options;
    for (const endpoint of endpoints) {
      const current = state.endpointByIp(endpoint.ip);
      if (current && current.owner === endpoint.owner && current.spiffeId === endpoint.spiffeId) continue;
      if (current) state.apply({ type: 'endpoint', action: 'delete', ip: endpoint.ip, ...(current.owner !== undefined && { owner: current.owner }) });
      state.apply({ type: 'endpoint', action: 'upsert', endpoint });
    }
    return endpoints.length > 0;
  }

  /** The binding's addresses leave this node's state (except those now held by another pod). */
  private revoke(binding: PodBinding, keep: ReadonlySet<string> = new Set()): void {
    for (const ip of binding.ips) if (!keep.has(ip)) this.options.state.revoke(ip, binding.owner);
  }

  private async counted<T>(command: CniCommand, serve: () => Promise<T>): Promise<T> {
    try {
      const answer = await serve();
      this.options.metrics.requests.inc({ command, result: 'ok' });
      return answer;
    } catch (err) {
      this.options.metrics.requests.inc({ command, result: 'error' });
      this.options.logger.warn({ command, err: (err as Error).message }, 'CNI request failed');
      throw err;
    }
  }
}
