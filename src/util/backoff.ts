// Exponential backoff with full jitter, shared by everything that retries (providers, handshakes).
// Jitter keeps a fleet of agents that failed together from retrying together.

export interface BackoffOptions {
  initialMs: number;
  maxMs: number;
  /** Fraction of each delay that is randomised (0 = none, 1 = full jitter). */
  jitter?: number;
  random?: () => number;
}

export class Backoff {
  private attempt = 0;

  constructor(private readonly options: BackoffOptions) {}

  /** The delay before the next retry; each call doubles the base up to maxMs. */
  next(): number {
    const base = Math.min(this.options.maxMs, this.options.initialMs * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 52);
    const jitter = this.options.jitter ?? 0.2;
    const random = this.options.random ?? Math.random;
    return Math.round(base * (1 - jitter + jitter * random()));
  }

  /** After a success: the next failure starts from initialMs again. */
  reset(): void {
    this.attempt = 0;
  }

  get attempts(): number {
    return this.attempt;
  }
}

/** Resolves after ms, or at once when the signal aborts (never rejects). */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
  });
}
