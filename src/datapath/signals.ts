// Delivers the gate's "authentication required" signals from the BPF queue map to the agent.
//
// The `bpf` package has no ring-buffer or perf-buffer reader, so the queue is polled, adaptively:
// every activeIntervalMs while signals keep arriving (and for activeWindowMs after the last one),
// every idleIntervalMs otherwise. An empty poll is one lookup-and-delete syscall (< 1 us), so the
// idle cost is the timer wake-ups; the idle interval bounds the delivery delay of a first signal.
// The gate rate-limits signals per key, so a drained batch is small.
import { STRUCTS, decodeSignal, type Signal } from './layout.js';

export interface SignalPollerOptions {
  activeIntervalMs?: number;
  idleIntervalMs?: number;
  activeWindowMs?: number;
  /** Most signals handed out per poll before yielding to the event loop. */
  maxBatch?: number;
  onError?: (err: unknown) => void;
}

/** What the poller needs of a queue map: pop into a reusable buffer, undefined when empty. */
export interface SignalQueue {
  pop(out?: Buffer): Buffer | undefined;
}

export type SignalListener = (signal: Signal) => void;

export class SignalPoller {
  private readonly listeners = new Set<SignalListener>();
  private readonly buffer = Buffer.alloc(STRUCTS.signal_event.size);
  private readonly activeIntervalMs: number;
  private readonly idleIntervalMs: number;
  private readonly activeWindowMs: number;
  private readonly maxBatch: number;
  private timer: NodeJS.Timeout | undefined;
  private lastSignalAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly queue: SignalQueue,
    private readonly options: SignalPollerOptions = {},
  ) {
    this.activeIntervalMs = options.activeIntervalMs ?? 1;
    this.idleIntervalMs = options.idleIntervalMs ?? 4;
    this.activeWindowMs = options.activeWindowMs ?? 500;
    this.maxBatch = options.maxBatch ?? 1024;
  }

  /** Calls `listener` for every signal from now on; returns the unsubscribe function. */
  subscribe(listener: SignalListener): () => void {
    this.listeners.add(listener);
    if (this.timer === undefined) this.schedule(0);
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) this.stop();
    };
  }

  /** Signals as an async iterator; breaking out of the loop unsubscribes. */
  iterate(): AsyncIterableIterator<Signal> {
    const pending: Signal[] = [];
    let wake: ((result: IteratorResult<Signal>) => void) | undefined;
    let done = false;
    const unsubscribe = this.subscribe((signal) => {
      if (wake) {
        const resolve = wake;
        wake = undefined;
        resolve({ value: signal, done: false });
      } else {
        pending.push(signal);
      }
    });
    const finish = (): Promise<IteratorResult<Signal>> => {
      done = true;
      unsubscribe();
      wake?.({ value: undefined, done: true });
      wake = undefined;
      return Promise.resolve({ value: undefined, done: true });
    };
    return {
      next: () => {
        const signal = pending.shift();
        if (signal) return Promise.resolve({ value: signal, done: false });
        if (done) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => (wake = resolve));
      },
      return: finish,
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.listeners.clear();
  }

  private schedule(delayMs: number): void {
    this.timer = setTimeout(() => this.poll(), delayMs);
  }

  private deliver(signal: Signal): void {
    for (const listener of this.listeners) {
      try {
        listener(signal);
      } catch (err) {
        this.options.onError?.(err);
      }
    }
  }

  private poll(): void {
    let drained = 0;
    try {
      while (drained < this.maxBatch && this.queue.pop(this.buffer) !== undefined) {
        drained++;
        this.deliver(decodeSignal(this.buffer));
      }
    } catch (err) {
      this.options.onError?.(err);
    }
    if (this.listeners.size === 0) return; // a listener unsubscribed the last one
    const now = performance.now();
    if (drained > 0) this.lastSignalAt = now;
    if (drained === this.maxBatch) this.schedule(0);
    else this.schedule(now - this.lastSignalAt < this.activeWindowMs ? this.activeIntervalMs : this.idleIntervalMs);
  }
}
