// Re-authentication timing for many pairs with one timer: a min-heap of due times.
//
// Jitter uses an additive low-discrepancy sequence (the golden ratio) instead of plain random
// numbers: consecutive schedulings — for example 10,000 pairs authenticated in the same second
// — land evenly across the jitter window, so no second of the window gets much more than its
// share (random jitter would leave Poisson clumps of twice the mean).

const GOLDEN_RATIO_FRACTION = 0.6180339887498949;
// setTimeout fires at once for delays beyond 2^31-1 ms; longer waits wake early and re-arm.
const MAX_TIMER_MS = 2_147_483_647;

export interface ReauthTiming {
  /** Fraction of the lifetime after which a pair is re-authenticated (default 2/3). */
  fraction: number;
  /** Width of the jitter window as a fraction of the lifetime, centred on `fraction`. */
  jitter: number;
}

interface Scheduled<K> {
  key: K;
  dueAt: number;
}

export class ReauthScheduler<K> {
  private readonly heap: Scheduled<K>[] = [];
  private readonly dueByKey = new Map<K, number>();
  private timer?: NodeJS.Timeout;
  private armedFor = Number.POSITIVE_INFINITY;
  private sequence = Math.random();

  constructor(
    private readonly onDue: (key: K) => void,
    private readonly now: () => number = Date.now,
  ) {}

  get size(): number {
    return this.dueByKey.size;
  }

  /** When, for a pair authenticated at `from` that expires at `until`, re-authentication is due. */
  dueTime(from: number, until: number, timing: ReauthTiming): number {
    this.sequence = (this.sequence + GOLDEN_RATIO_FRACTION) % 1;
    const lifetime = Math.max(0, until - from);
    const offset = timing.fraction + timing.jitter * (this.sequence - 0.5);
    return from + lifetime * Math.min(1, Math.max(0, offset));
  }

  /** Schedules (or reschedules) key; a later call for the same key replaces the earlier one. */
  schedule(key: K, dueAt: number): void {
    this.dueByKey.set(key, dueAt);
    this.push({ key, dueAt });
    // Cancelled and rescheduled entries linger in the heap; rebuild it when they dominate.
    if (this.heap.length > 2 * this.dueByKey.size + 1024) this.compact();
    this.arm();
  }

  cancel(key: K): void {
    // The heap entry stays and is skipped when it surfaces (lazy deletion keeps cancel O(1)).
    this.dueByKey.delete(key);
  }

  dueAt(key: K): number | undefined {
    return this.dueByKey.get(key);
  }

  stop(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.armedFor = Number.POSITIVE_INFINITY;
    this.heap.length = 0;
    this.dueByKey.clear();
  }

  private fire(): void {
    this.timer = undefined;
    this.armedFor = Number.POSITIVE_INFINITY;
    const now = this.now();
    while (this.heap.length > 0 && this.heap[0]!.dueAt <= now) {
      const next = this.pop()!;
      // Skip entries that were cancelled or rescheduled since they were pushed.
      if (this.dueByKey.get(next.key) !== next.dueAt) continue;
      this.dueByKey.delete(next.key);
      this.onDue(next.key);
    }
    this.arm();
  }

  private arm(): void {
    const head = this.heap[0];
    // Re-arm only when the earliest due time moved earlier: scheduling many pairs costs no timer churn.
    if (!head || (this.timer && this.armedFor <= head.dueAt)) return;
    clearTimeout(this.timer);
    this.armedFor = head.dueAt;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, head.dueAt - this.now()));
    this.timer = setTimeout(() => this.fire(), delay);
    this.timer.unref();
  }

  private compact(): void {
    const live = this.heap.filter((item) => this.dueByKey.get(item.key) === item.dueAt);
    this.heap.length = 0;
    for (const item of live) this.push(item);
  }

  private push(item: Scheduled<K>): void {
    const heap = this.heap;
    heap.push(item);
    let index = heap.length - 1;
    while (index > 0) {
      const parent = (index - 1) >> 1;
      if (heap[parent]!.dueAt <= item.dueAt) break;
      heap[index] = heap[parent]!;
      index = parent;
    }
    heap[index] = item;
  }

  private pop(): Scheduled<K> | undefined {
    const heap = this.heap;
    const top = heap[0];
    const last = heap.pop();
    if (!top || !last || heap.length === 0) return top;
    let index = 0;
    for (;;) {
      const left = 2 * index + 1;
      if (left >= heap.length) break;
      const right = left + 1;
      const child = right < heap.length && heap[right]!.dueAt < heap[left]!.dueAt ? right : left;
      if (heap[child]!.dueAt >= last.dueAt) break;
      heap[index] = heap[child]!;
      index = child;
    }
    heap[index] = last;
    return top;
  }
}

/**
 * The timing of the node that does not lead a pair or link: its window starts after the leader's
 * ends, so that it re-authenticates only when the leader's re-authentication never came, and the
 * two never race.
 */
export function followerTiming(timing: ReauthTiming): ReauthTiming {
  const leaderEnd = timing.fraction + timing.jitter / 2;
  const room = Math.max(0, 1 - leaderEnd);
  return { fraction: leaderEnd + room / 2, jitter: Math.min(timing.jitter, room / 2) };
}
