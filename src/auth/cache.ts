import { LRUCache } from 'lru-cache';
import type { AuthEntry } from '../datapath/gate/datapath.js';
import type { AuthKey } from '../datapath/gate/layout.js';
import type { Logger } from '../util/logger.js';
import type { NumericIds } from './numeric-ids.js';
import { pairKeyString, type CachedPair, type PairKey } from './types.js';

/** The part of the datapath the cache writes through to (the pinned BPF auth map). */
export interface AuthMap {
  setAuth(key: AuthKey, expiryNs: bigint): void;
  deleteAuth(key: AuthKey): boolean;
  batchSetAuth(entries: readonly AuthEntry[]): void;
  dumpAuth(): AuthEntry[];
}

/** Wall clock for expiry arithmetic, monotonic clock for the BPF map (bpf_ktime_get_ns). */
export interface Clocks {
  wallMs(): number;
  monotonicNs(): bigint;
}

export const systemClocks: Clocks = { wallMs: () => Date.now(), monotonicNs: () => process.hrtime.bigint() };

export interface AuthCacheOptions {
  map: AuthMap;
  ids: NumericIds;
  capacity: number;
  logger: Logger;
  clocks?: Clocks;
  /** Called for every pair that leaves the cache, whatever the reason. */
  onRemoved?: (pair: CachedPair, reason: string) => void;
}

/**
 * The authenticated pairs, kept in step with the BPF auth map: every change is written through
 * at once, so the map is never behind the cache. The map is the enforcement; the cache is what
 * the agent knows about each entry (why and when it was authenticated, when to re-authenticate).
 * Bounded: when full, the least recently authenticated pair is evicted from both.
 */
export class AuthCache {
  private readonly pairs: LRUCache<string, CachedPair>;
  private readonly clocks: Clocks;

  constructor(private readonly options: AuthCacheOptions) {
    this.clocks = options.clocks ?? systemClocks;
    this.pairs = new LRUCache<string, CachedPair>({
      max: options.capacity,
      dispose: (pair, _key, reason) => {
        // 'set' replaces a value for the same key: the map entry was just overwritten, not removed.
        if (reason === 'set') return;
        this.options.map.deleteAuth(this.authKey(pair));
        this.options.onRemoved?.(pair, reason === 'evict' ? 'evicted' : 'removed');
      },
    });
  }

  get size(): number {
    return this.pairs.size;
  }

  get capacity(): number {
    return this.options.capacity;
  }

  /** Looks a pair up without touching its recency: only (re-)authentication counts as use. */
  get(key: PairKey): CachedPair | undefined {
    return this.pairs.peek(pairKeyString(key));
  }

  /** Records a pair and writes its BPF entry; `key` is the pair's key string when the caller holds it. */
  upsert(pair: CachedPair, key = pairKeyString(pair)): void {
    this.options.map.setAuth(this.authKey(pair), this.toMonotonic(pair.expiresAt));
    this.pairs.set(key, pair);
  }

  /** Removes a pair and its BPF entry; true if it was cached. */
  delete(key: PairKey): boolean {
    return this.pairs.delete(pairKeyString(key));
  }

  /** Removes every pair the predicate selects; returns how many. */
  deleteWhere(predicate: (pair: CachedPair) => boolean): number {
    let removed = 0;
    for (const [key, pair] of this.pairs.entries()) {
      if (predicate(pair)) {
        this.pairs.delete(key);
        removed++;
      }
    }
    return removed;
  }

  values(): CachedPair[] {
    return [...this.pairs.values()];
  }

  /**
   * After a restart: rebuilds the cache from the pinned map, which kept enforcing while the agent
   * was away. Entries whose numbers the agent cannot name (lost numbering) or that are already
   * expired are deleted from the map: they would be re-authenticated on demand anyway.
   */
  restore(): CachedPair[] {
    const restored: CachedPair[] = [];
    const monotonicNow = this.clocks.monotonicNs();
    const wallNow = this.clocks.wallMs();
    for (const entry of this.options.map.dumpAuth()) {
      const localId = this.options.ids.identityName(entry.key.localIdentity);
      const remoteId = this.options.ids.identityName(entry.key.remoteIdentity);
      const remoteNode = this.options.ids.nodeName(entry.key.remoteNode);
      if (!localId || !remoteId || !remoteNode || entry.expiryNs <= monotonicNow) {
        this.options.map.deleteAuth(entry.key);
        continue;
      }
      const expiresAt = wallNow + Number((entry.expiryNs - monotonicNow) / 1_000_000n);
      // What the map does not hold (when it was authenticated, the certificates' notAfter) is
      // unknown after a restart; the expiry bounds both, and the pair is re-authenticated.
      const pair: CachedPair = {
        localId,
        remoteId,
        remoteNode,
        expiresAt,
        authenticatedAt: wallNow,
        localNotAfter: expiresAt,
        remoteNotAfter: expiresAt,
        trigger: 'restored',
        epoch: 0,
      };
      this.pairs.set(pairKeyString(pair), pair);
      restored.push(pair);
    }
    this.options.logger.info({ restored: restored.length }, 'auth cache restored from the pinned map');
    return restored;
  }

  /**
   * Repairs drift between the cache and the map (an entry written by someone else, deleted by
   * someone else, or with another expiry). Returns how many map entries it had to repair.
   */
  reconcile(): number {
    const expected = new Map<string, { key: AuthKey; expiryNs: bigint }>();
    for (const pair of this.pairs.values()) {
      const key = this.authKey(pair);
      expected.set(authKeyString(key), { key, expiryNs: this.toMonotonic(pair.expiresAt) });
    }
    let repaired = 0;
    // Two conversions of the same wall-clock expiry differ by the time between them.
    const toleranceNs = 1_000_000_000n;
    for (const entry of this.options.map.dumpAuth()) {
      const wanted = expected.get(authKeyString(entry.key));
      if (!wanted) {
        this.options.map.deleteAuth(entry.key);
        repaired++;
        continue;
      }
      expected.delete(authKeyString(entry.key));
      const drift = entry.expiryNs - wanted.expiryNs;
      if (drift > toleranceNs || drift < -toleranceNs) {
        this.options.map.setAuth(wanted.key, wanted.expiryNs);
        repaired++;
      }
    }
    for (const missing of expected.values()) {
      this.options.map.setAuth(missing.key, missing.expiryNs);
      repaired++;
    }
    return repaired;
  }

  private authKey(pair: PairKey): AuthKey {
    return {
      localIdentity: this.options.ids.identity(pair.localId),
      remoteIdentity: this.options.ids.identity(pair.remoteId),
      remoteNode: this.options.ids.node(pair.remoteNode),
    };
  }

  private toMonotonic(wallMs: number): bigint {
    const remainingMs = Math.max(0, Math.floor(wallMs - this.clocks.wallMs()));
    return this.clocks.monotonicNs() + BigInt(remainingMs) * 1_000_000n;
  }
}

function authKeyString(key: AuthKey): string {
  return `${key.localIdentity}:${key.remoteIdentity}:${key.remoteNode}:${key.authType ?? 1}`;
}
