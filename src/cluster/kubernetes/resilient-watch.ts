// The watch half of one informer. client-node's ListWatch relists on 410 Gone and re-watches from
// the last resourceVersion on a clean close, but it asks for no bookmarks, sets no server-side
// timeout, and reconnects at once however often the stream ends empty. This Watch adds those, and
// tells its owner when ListWatch has finished a list (ListWatch starts a watch right after it has
// delivered every listed object, and only then).
import { Watch, type KubeConfig } from '@kubernetes/client-node';
import { sleep, type Backoff } from '../../util/backoff.js';

/** Like client-go: the server ends each watch after 5–10 minutes, so a silently stuck watch cannot last. */
const MIN_WATCH_TIMEOUT_SECONDS = 300;

/** Event types that mean the watch makes progress (an ERROR event does not). */
const PROGRESS = new Set(['ADDED', 'MODIFIED', 'DELETED', 'BOOKMARK']);

type WatchCallback = (phase: string, apiObj: unknown, watchObj?: unknown) => void;
type DoneCallback = (err: unknown) => void;

export interface ResilientWatchHooks {
  /** ListWatch is about to watch: every object of the preceding list (if any) has been delivered. */
  beforeWatch(): void;
  /** What the informer keeps of an object of an ADDED, MODIFIED or DELETED event (strip.ts). */
  strip?(object: unknown): unknown;
}

/** Events that carry an object of the watched kind (BOOKMARK carries only a resourceVersion). */
const OBJECT_EVENTS = new Set(['ADDED', 'MODIFIED', 'DELETED']);

export class ResilientWatch extends Watch {
  /** Set when the last watch ended cleanly without a single event: the next one waits first. */
  private lastWatchIdle = false;

  constructor(
    config: KubeConfig,
    private readonly backoff: Backoff,
    private readonly signal: AbortSignal,
    private readonly hooks: ResilientWatchHooks,
    private readonly random: () => number = Math.random,
  ) {
    super(config);
  }

  override async watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: WatchCallback,
    done: DoneCallback,
  ): Promise<AbortController> {
    this.hooks.beforeWatch();
    // A server that ends every watch at once must not turn the agent into a request loop.
    if (this.lastWatchIdle) await sleep(this.backoff.next(), this.signal);
    if (this.signal.aborted) return new AbortController();
    let progressed = false;
    const params = {
      ...queryParams,
      allowWatchBookmarks: true,
      timeoutSeconds: Math.floor(MIN_WATCH_TIMEOUT_SECONDS * (1 + this.random())),
    };
    let stopOnAbort: (() => void) | undefined;
    const controller = await super.watch(
      path,
      params,
      (phase, apiObj, watchObj) => {
        if (PROGRESS.has(phase) && !progressed) {
          progressed = true;
          this.backoff.reset();
        }
        callback(phase, this.hooks.strip && OBJECT_EVENTS.has(phase) ? this.hooks.strip(apiObj) : apiObj, watchObj);
      },
      (err) => {
        if (stopOnAbort) this.signal.removeEventListener('abort', stopOnAbort);
        // A failed watch is retried by the owner after its own backoff; only a clean, empty end is ours.
        this.lastWatchIdle = !err && !progressed;
        done(err);
      },
    );
    // ListWatch.stop() can only abort a watch whose request has been answered; one stopped while
    // waiting for the answer would stay open, so the owner's signal ends it too.
    if (this.signal.aborted) {
      controller.abort();
    } else {
      stopOnAbort = () => controller.abort();
      this.signal.addEventListener('abort', stopOnAbort, { once: true });
    }
    return controller;
  }
}
