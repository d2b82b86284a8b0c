// Where the gate sits, and whom it sees there: attaches the gate to the host-side interface of
// each local endpoint, binds each interface to its endpoint's identity, and finds the interface
// of endpoints whose cluster source does not name one (Kubernetes) by asking the kernel.
import type { EndpointInfo } from '../cluster/types.js';
import type { Datapath } from '../datapath/gate/datapath.js';
import { resolveHostInterface } from '../datapath/gate/interface-resolver.js';
import type { IpcacheEntry } from '../datapath/gate/layout.js';
import type { WorkloadInterface } from '../datapath/gate/pin-layout.js';
import type { Logger } from '../util/logger.js';

/** Retry delays while an endpoint's interface cannot be found (the CNI may still be wiring it). */
const RETRY_INITIAL_MS = 500;
const RETRY_MAX_MS = 30_000;

interface Resolution {
  /** The endpoint's owner when resolved: a new pod on the same address has another interface. */
  owner: string;
  name?: string;
  pending: boolean;
  failures: number;
}

export interface GateInterfacesOptions {
  datapath: Datapath;
  /** Network namespace of the interfaces (tests and the demo); absent = ours. */
  netns?: string;
  logger: Logger;
  /** An interface was found: the plan should be computed again. */
  onResolved: () => void;
  /** Bindings a previous run left for workloads gone since were cleared (after the first apply). */
  onStaleBindings?: (count: number) => void;
}

function sameEntry(a: IpcacheEntry | undefined, b: IpcacheEntry | undefined): boolean {
  return a?.identity === b?.identity && a?.node === b?.node;
}

export class GateInterfaces {
  private readonly installed = new Set<string>();
  private readonly resolutions = new Map<string, Resolution>();
  private readonly retries = new Set<NodeJS.Timeout>();
  private installing: Promise<void> = Promise.resolve();
  private bindings = new Map<string, IpcacheEntry | undefined>();
  /** The first apply also clears what a previous run bound and this one does not. */
  private sweepPending = true;
  private stopped = false;

  constructor(private readonly options: GateInterfacesOptions) {}

  /**
   * The interface of each local endpoint, by address: the one its source names, or the one found
   * for it. Starts looking for the others; forgets addresses that are no longer local.
   */
  interfacesOf(locals: readonly EndpointInfo[]): Map<string, string> {
    const found = new Map<string, string>();
    const current = new Set<string>();
    for (const endpoint of locals) {
      current.add(endpoint.ip);
      if (endpoint.interface) {
        found.set(endpoint.ip, endpoint.interface);
        continue;
      }
      const owner = endpoint.owner ?? endpoint.spiffeId;
      let resolution = this.resolutions.get(endpoint.ip);
      if (resolution?.owner !== owner) {
        resolution = { owner, pending: false, failures: 0 };
        this.resolutions.set(endpoint.ip, resolution);
      }
      if (resolution.name) found.set(endpoint.ip, resolution.name);
      else if (!resolution.pending && resolution.failures === 0) this.resolve(endpoint.ip, resolution);
    }
    for (const ip of this.resolutions.keys()) if (!current.has(ip)) this.resolutions.delete(ip);
    return found;
  }

  /**
   * Gates every interface in `bindings` (attaching where it is new) and binds each to its
   * identity. An interface no longer listed is unbound (its workload is gone: the gate stays,
   * failing closed) and forgotten, so that an interface of that name created later is attached.
   */
  apply(bindings: Map<string, IpcacheEntry | undefined>): void {
    for (const name of this.bindings.keys()) {
      if (bindings.has(name)) continue;
      this.options.datapath.bindInterface(this.workloadInterface(name), undefined);
      this.installed.delete(name);
    }
    const previous = this.bindings;
    this.bindings = bindings;
    const changed = [...bindings].filter(([name, entry]) => !previous.has(name) || !sameEntry(previous.get(name), entry)).map(([name]) => name);
    const fresh = [...bindings.keys()].filter((name) => !this.installed.has(name));
    for (const name of fresh) this.installed.add(name);
    if (fresh.length > 0) {
      this.installing = this.installing
        .then(async () => {
          await this.options.datapath.install({ interfaces: fresh.map((name) => this.workloadInterface(name)) });
          this.bind(fresh); // with the bindings current when the attach completed
        })
        .catch((err: unknown) => {
          for (const name of fresh) this.installed.delete(name);
          this.options.logger.error({ interfaces: fresh, err: (err as Error).message }, 'attaching the gate failed');
        });
    }
    this.bind(changed);
    if (this.sweepPending) {
      this.sweepPending = false;
      // After the attaches above, whether they succeeded or not: only then are the ifindexes of
      // the interfaces to keep known.
      this.installing = this.installing.then(() => this.unbindStale());
    }
  }

  /** Clears every binding in the pinned map but those of the current plan's interfaces. */
  private unbindStale(): void {
    try {
      const bound = [...this.bindings].filter(([, entry]) => entry !== undefined).map(([name]) => this.workloadInterface(name));
      const cleared = this.options.datapath.retainBindings(bound);
      if (cleared === 0) return;
      this.options.logger.info({ cleared }, 'interface bindings of workloads gone while the agent was down cleared');
      this.options.onStaleBindings?.(cleared);
    } catch (err) {
      this.options.logger.error({ err: (err as Error).message }, 'clearing stale interface bindings failed');
    }
  }

  /** Waits for attaches in flight (tests). */
  settled(): Promise<void> {
    return this.installing;
  }

  stop(): void {
    this.stopped = true;
    for (const timer of this.retries) clearTimeout(timer);
    this.retries.clear();
  }

  /** One array-map write each; an interface still being attached is skipped (bound after). */
  private bind(names: readonly string[]): void {
    for (const name of names) {
      if (this.bindings.has(name)) this.options.datapath.bindInterface(this.workloadInterface(name), this.bindings.get(name));
    }
  }

  private resolve(ip: string, resolution: Resolution): void {
    resolution.pending = true;
    void resolveHostInterface(ip, this.options.netns)
      .catch((err: unknown) => {
        this.options.logger.warn({ ip, err: (err as Error).message }, 'looking up the host-side interface failed');
        return undefined;
      })
      .then((name) => {
        resolution.pending = false;
        if (this.stopped || this.resolutions.get(ip) !== resolution) return;
        if (name) {
          resolution.name = name;
          this.options.logger.debug({ ip, interface: name }, 'host-side interface found');
          this.options.onResolved();
          return;
        }
        resolution.failures++;
        const delay = Math.min(RETRY_MAX_MS, RETRY_INITIAL_MS * 2 ** (resolution.failures - 1));
        if (resolution.failures === 3) this.options.logger.warn({ ip }, 'no host-side interface for a local endpoint yet: its traffic is not gated; still looking');
        const timer = setTimeout(() => {
          this.retries.delete(timer);
          if (this.stopped || this.resolutions.get(ip) !== resolution) return;
          this.resolve(ip, resolution);
        }, delay);
        timer.unref();
        this.retries.add(timer);
      });
  }

  private workloadInterface(name: string): WorkloadInterface {
    return { name, ...(this.options.netns !== undefined && { netns: this.options.netns }) };
  }
}
