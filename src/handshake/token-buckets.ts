import { LRUCache } from 'lru-cache';

export interface BucketRate {
  /** Tokens added per second. */
  ratePerSecond: number;
  /** Tokens a bucket holds at most (what an idle key may spend at once). */
  burst: number;
}

interface Bucket {
  tokens: number;
  updatedAt: number;
}

/** A token bucket per key; the least recently used keys are forgotten (their buckets refill). */
export class TokenBuckets {
  private readonly buckets: LRUCache<string, Bucket>;

  constructor(
    maxKeys: number,
    /** Monotonic milliseconds. */
    private readonly now: () => number = () => performance.now(),
  ) {
    this.buckets = new LRUCache({ max: maxKeys });
  }

  /** Takes one token from the key's bucket; false (and nothing taken) when it is empty. */
  take(key: string, rate: BucketRate): boolean {
    const now = this.now();
    const bucket = this.buckets.get(key) ?? { tokens: rate.burst, updatedAt: now };
    bucket.tokens = Math.min(rate.burst, bucket.tokens + ((now - bucket.updatedAt) / 1000) * rate.ratePerSecond);
    bucket.updatedAt = now;
    this.buckets.set(key, bucket);
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }
}
