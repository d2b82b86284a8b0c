// Delivers the gate's "authentication required" signals from the BPF queue map to the agent.
//
// Event-driven: the gate rings a doorbell after each signal (see doorbell.ts) and the queue is
// drained at once; a slow safety poll (safetyIntervalMs) catches anything rung while no reader
// listened, e.g. signals queued while the agent was down (the pinned queue keeps them).
// Without a doorbell reader the queue is polled adaptively instead: every activeIntervalMs while
// signals arrive (and for activeWindowMs after the last one), every idleIntervalMs otherwise.
// An empty poll is one lookup-and-delete syscall (< 1 us); the cost of polling is the wake-ups.
import { Doorbell } from './doorbell.js';
import { STRUCTS, decodeSignal, type Signal } from './layout.js';

export interface SignalPollerOptions {
  /** Poll interval while a doorbell reader listens (default 1000 ms). */
  safetyIntervalMs?: number;
  /** Fallback polling without a reader: while signals flow (default 1 ms)... */
  activeIntervalMs?: number;
  /** ...and when quiet (default 10 ms). */
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
  private readonly safetyIntervalMs: number;
  private readonly activeIntervalMs: number;
  private readonly idleIntervalMs: number;
  private readonly activeWindowMs: number;
  private readonly maxBatch: number;
  private readonly doorbell: Doorbell | undefined;
  private timer: NodeJS.Timeout | undefined;
  private lastSignalAt = Number.NEGATIVE_INFINITY;

  /** `doorbellPath`: the pinned doorbell map; without it, polling only. */
  constructor(
    private readonly queue: SignalQueue,
    private readonly options: SignalPollerOptions = {},
    doorbellPath?: string,
  ) {
    this.safetyIntervalMs = options.safetyIntervalMs ?? 1000;
    this.activeIntervalMs = options.activeIntervalMs ?? 1;
    this.idleIntervalMs = options.idleIntervalMs ?? 10;
    this.activeWindowMs = options.activeWindowMs ?? 500;
    this.maxBatch = options.maxBatch ?? 1024;
    this.doorbell =
      doorbellPath === undefined
        ? undefined
        : new Doorbell(doorbellPath, () => this.ring(), (err) => this.options.onError?.(err));
  }

  /** 'event' while a doorbell reader runs, 'polling' otherwise. */
  get mode(): 'event' | 'polling' {
    return this.doorbell?.listening ? 'event' : 'polling';
  }

  /** Calls `listener` for every signal from now on; returns the unsubscribe function. */
  subscribe(listener: SignalListener): () => void {
    this.listeners.add(listener);
    if (this.timer === undefined) {
      this.doorbell?.start();
      this.schedule(0);
    }
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
    this.doorbell?.stop();
    this.listeners.clear();
  }

  private schedule(delayMs: number): void {
    this.timer = setTimeout(() => this.poll(), delayMs);
  }

  private ring(): void {
    if (this.timer === undefined) return; // stopped
    clearTimeout(this.timer);
    this.poll();
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
    else if (this.doorbell?.listening) this.schedule(this.safetyIntervalMs);
    else this.schedule(now - this.lastSignalAt < this.activeWindowMs ? this.activeIntervalMs : this.idleIntervalMs);
  }
}
