import { LRUCache } from 'lru-cache';

export interface SourceAdmissionOptions {
  /** Sustained new connections per second per source address. */
  ratePerSecond: number;
  /** Connections a source may open at once after being idle (bucket size). */
  burst: number;
  /** Connections one source may hold open at the same time. */
  maxConcurrentPerSource: number;
  /** Source addresses remembered; the least recently seen are forgotten (their bucket refills). */
  maxSources?: number;
  /** Monotonic milliseconds. */
  now?: () => number;
}

export type AdmissionDecision = 'admit' | 'rate' | 'concurrency';

interface Bucket {
  tokens: number;
  updatedAt: number;
}

/**
 * Per-source-address admission for the responder: a token bucket on new connections and a cap
 * on open ones, so that one noisy or hostile source cannot take the listener from the others.
 * Every admitted connection must be released exactly once when it closes.
 */
export class SourceAdmission {
  private readonly buckets: LRUCache<string, Bucket>;
  private readonly open = new Map<string, number>();
  private readonly now: () => number;

  constructor(private readonly options: SourceAdmissionOptions) {
    this.buckets = new LRUCache({ max: options.maxSources ?? 16_384 });
    this.now = options.now ?? (() => performance.now());
  }

  admit(source: string): AdmissionDecision {
    const open = this.open.get(source) ?? 0;
    if (open >= this.options.maxConcurrentPerSource) return 'concurrency';
    const now = this.now();
    const bucket = this.buckets.get(source) ?? { tokens: this.options.burst, updatedAt: now };
    bucket.tokens = Math.min(this.options.burst, bucket.tokens + ((now - bucket.updatedAt) / 1000) * this.options.ratePerSecond);
    bucket.updatedAt = now;
    this.buckets.set(source, bucket);
    if (bucket.tokens < 1) return 'rate';
    bucket.tokens -= 1;
    this.open.set(source, open + 1);
    return 'admit';
  }

  release(source: string): void {
    const open = this.open.get(source) ?? 0;
    if (open <= 1) this.open.delete(source);
    else this.open.set(source, open - 1);
  }
}

/** "::ffff:10.0.0.1" (an IPv4 peer on a dual-stack socket) → "10.0.0.1", so both forms share limits and node lookups. */
export function normalizeAddress(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}
