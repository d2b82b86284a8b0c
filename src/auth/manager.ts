import { Backoff } from '../util/backoff.js';
import type { Logger } from '../util/logger.js';
import type { AuthCache } from './cache.js';
import { ReauthScheduler, followerTiming, type ReauthTiming } from './scheduler.js';
import { keyed, pairKeyString, type AuthTrigger, type CachedPair, type KeyedPair, type PairKey, type PairState, type PairStatus, type SignalStatus } from './types.js';

/** What the handshake layer reports for a pair, from either role. */
export interface PairAuthentication extends PairKey {
  authenticatedAt: number;
  expiresAt: number;
  localNotAfter: number;
  remoteNotAfter: number;
}

/** The authenticated transport to a remote node; pairs on that node are valid only while it is up. */
export interface NodeLink {
  expiresAt: number;
  epoch: number;
}

export interface AuthManagerOptions {
  cache: AuthCache;
  localNode: string;
  /** Runs a pair handshake as initiator; rejects with an error carrying `failureClass`. */
  authenticate: (pair: PairKey) => Promise<PairAuthentication>;
  /** Authenticates a pair of two identities both held by this node (no handshake needed). */
  authenticateLocal: (pair: PairKey) => PairAuthentication | undefined;
  /** The live transport to a node, if any. */
  nodeLink: (node: string) => NodeLink | undefined;
  timing: ReauthTiming & {
    /** Backoff after a failed authentication of a pair. */
    failureBackoff: { initialMs: number; maxMs: number };
    /** How long the node that does not initiate a proactive pair waits for its peer to do it. */
    proactiveGraceMs: number;
  };
  /** Authenticate desired pairs ahead of traffic (default); false: only on datapath signals. */
  proactive?: () => boolean;
  logger: Logger;
  onReauth?: (trigger: AuthTrigger) => void;
  /** What became of each datapath signal (the meshauth_signals_total{status} label). */
  onSignalHandled?: (status: SignalStatus) => void;
  now?: () => number;
}

interface PairProgress {
  state: 'pending' | 'failed';
  trigger: AuthTrigger;
  lastError?: string;
  backoff?: Backoff;
  retryAt?: number;
}

/**
 * Decides when each identity pair is authenticated and keeps the auth cache (and with it the
 * BPF map) holding exactly the pairs that are desired, authenticated, unexpired and carried by a
 * live node transport.
 *
 * Triggers: proactive (a pair policy requires appears), on demand (a datapath signal),
 * re-authentication at a fraction of the lifetime with jitter, local SVID rotation, and
 * trust-bundle changes. Removing a pair from the desired set removes its entry at once.
 */
export class AuthManager {
  private desired: ReadonlyMap<string, KeyedPair> = new Map();
  /** Whether `desired` is this manager's own map (changeDesired edits it) or the caller's (setDesired). */
  private ownsDesired = false;
  private readonly progress = new Map<string, PairProgress>();
  private readonly inFlight = new Map<string, Promise<void>>();
  /** Why a scheduled pair is due, for the trigger label when it fires; only where that is not
   *  the default (re-authentication of a cached pair, proactive for a missing one). */
  private readonly dueTrigger = new Map<string, AuthTrigger>();
  private readonly scheduler: ReauthScheduler<string>;
  private readonly now: () => number;
  private stopped = false;
  /** Local identities this process has had an SVID for (see onLocalSvid). */
  private readonly svidSeen = new Set<string>();
  /**
   * Whether the cache may hold pairs nobody desires: pairs restored from the pinned map, before
   * the first setDesired. Otherwise it holds desired pairs only (record() refuses the others), so
   * setDesired removes what left the set without scanning the whole cache.
   */
  private sweepCache = true;

  constructor(private readonly options: AuthManagerOptions) {
    this.now = options.now ?? Date.now;
    this.scheduler = new ReauthScheduler((key) => this.onDue(key), this.now);
  }

  /** Re-schedules pairs restored from the pinned map: they keep enforcing until re-authenticated. */
  adoptRestored(pairs: readonly CachedPair[]): void {
    this.sweepCache = true;
    for (const pair of pairs) this.scheduleReauth(pair);
  }

  /**
   * The full set of pairs policy requires between local and known remote endpoints. New ones are
   * authenticated proactively; cached pairs no longer in the set are removed from the datapath.
   * A map keyed by each pair's key string (as the agent's plan builds it) is taken as it is, and
   * must not be changed afterwards; a list is keyed here.
   */
  setDesired(pairs: ReadonlyMap<string, KeyedPair> | readonly PairKey[]): void {
    const next: ReadonlyMap<string, KeyedPair> = pairs instanceof Map ? pairs : keyedMap(pairs as readonly PairKey[]);
    const previous = this.desired;
    this.desired = next;
    this.ownsDesired = false;
    // Revocation first. The previous set names what left; scanning the whole cache instead (a key
    // string built per cached pair) doubled the cost of every change with 100,000 pairs held.
    const gone: KeyedPair[] = [];
    // forEach: no [key, value] array per entry, which at 100,000 pairs is garbage worth avoiding.
    previous.forEach((pair, key) => {
      if (!next.has(key)) gone.push(pair);
    });
    this.revoke(gone);
    next.forEach((pair, key) => {
      if (!previous.has(key) && !this.options.cache.get(pair)) this.want(pair);
    });
  }

  /**
   * Changes the desired set by what was added and removed (the agent's incremental plan): the
   * same as setDesired with the whole set, at a cost proportional to the change. A pair is in at
   * most one of the two lists.
   */
  changeDesired(added: readonly KeyedPair[], removed: readonly KeyedPair[]): void {
    if (!this.ownsDesired) {
      this.desired = new Map(this.desired);
      this.ownsDesired = true;
    }
    const desired = this.desired as Map<string, KeyedPair>;
    for (const pair of removed) desired.delete(pair.key);
    const fresh = added.filter((pair) => !desired.has(pair.key));
    for (const pair of fresh) desired.set(pair.key, pair);
    // Revocation (and the sweep of restored pairs) once the set is complete, then the new pairs.
    this.revoke(removed);
    for (const pair of fresh) if (!this.options.cache.get(pair)) this.want(pair);
  }

  /** Pairs that left the desired set: their entries leave the datapath at once. */
  private revoke(gone: readonly KeyedPair[]): void {
    let removed = 0;
    for (const pair of gone) {
      if (this.options.cache.delete(pair)) removed++;
      this.scheduler.cancel(pair.key);
      this.dueTrigger.delete(pair.key);
      this.progress.delete(pair.key);
    }
    if (this.sweepCache) {
      this.sweepCache = false;
      removed += this.options.cache.deleteWhere((pair) => !this.desired.has(pairKeyString(pair)));
    }
    if (removed > 0) this.options.logger.info({ removed }, 'pairs no longer desired removed from the datapath');
  }

  /** A datapath signal: traffic of this pair was dropped for want of an entry. */
  onSignal(pair: PairKey): void {
    const key = pairKeyString(pair);
    // Policy does not require this pair (the agent's view is newer than the gate's): nothing to do.
    if (!this.desired.has(key)) return this.options.onSignalHandled?.('unresolved');
    const cached = this.options.cache.get(pair);
    // Already authenticated (the packet raced the map write) or being authenticated.
    if (this.inFlight.has(key) || (cached && cached.expiresAt > this.now() + SIGNAL_EXPIRY_MARGIN_MS)) {
      return this.options.onSignalHandled?.('deduplicated');
    }
    const progress = this.progress.get(key);
    // Failed recently: the backoff decides when to try again, not the traffic.
    if (progress?.retryAt !== undefined && progress.retryAt > this.now()) return this.options.onSignalHandled?.('dropped');
    this.options.onSignalHandled?.('handled');
    this.ensure(pair, 'on-demand');
  }

  /** Whether policy requires this pair now (the responder's authorization check). */
  isDesired(pair: PairKey): boolean {
    return this.desired.has(pairKeyString(pair));
  }

  /** A successful handshake (either role) for a pair. Pairs nobody desires are not recorded. */
  record(result: PairAuthentication, trigger: AuthTrigger): boolean {
    const wanted = this.desired.get(pairKeyString(result));
    if (!wanted) return false;
    const key = wanted.key;
    const link = result.remoteNode === this.options.localNode ? undefined : this.options.nodeLink(result.remoteNode);
    if (result.remoteNode !== this.options.localNode && !link) {
      this.options.logger.debug({ pair: describe(result) }, 'pair authenticated, but its node has no live transport: not recorded');
      return false;
    }
    // The desired pair's strings, shared with the plan, rather than the result's copies.
    const pair: CachedPair = {
      localId: wanted.localId,
      remoteId: wanted.remoteId,
      remoteNode: wanted.remoteNode,
      authenticatedAt: result.authenticatedAt,
      // A pair is valid only as long as the transport that carries it.
      expiresAt: Math.min(result.expiresAt, link?.expiresAt ?? Number.POSITIVE_INFINITY),
      localNotAfter: result.localNotAfter,
      remoteNotAfter: result.remoteNotAfter,
      trigger,
      epoch: link?.epoch ?? 0,
    };
    this.options.cache.upsert(pair, key);
    this.progress.delete(key);
    this.scheduleReauth(pair, key);
    return true;
  }

  /**
   * A local identity got a new SVID. Pairs waiting for it (it had none yet) are authenticated at
   * once; pairs authenticated with the old SVID are re-authenticated, spread over a short window
   * so a rotation does not become a handshake storm, and always before the old SVID expires.
   * The first SVID of an identity in this process rotates nothing: pairs restored from the pinned
   * map were authenticated by the previous run, and keep the re-authentication adoptRestored
   * scheduled before their expiry (a restart re-handshakes no valid pair).
   */
  onLocalSvid(localId: string): void {
    const first = !this.svidSeen.has(localId);
    this.svidSeen.add(localId);
    for (const pair of this.desired.values()) {
      const involved = pair.localId === localId || (pair.remoteNode === this.options.localNode && pair.remoteId === localId);
      if (involved && !this.options.cache.get(pair)) this.want(pair, { svidArrived: true });
    }
    const now = this.now();
    for (const pair of this.options.cache.values()) {
      if (pair.localId !== localId || !this.desired.has(pairKeyString(pair))) continue;
      if (first && pair.trigger === 'restored') continue;
      const window = Math.min(ROTATION_SPREAD_MS, Math.max(0, pair.expiresAt - now) / 2);
      this.scheduleFor(pairKeyString(pair), this.scheduler.dueTime(now, now + window, { fraction: 0.5, jitter: 1 }), 'rotation');
    }
  }

  /** Pairs whose peer's trust domain lost its bundle are invalid at once; changed bundles force re-validation. */
  onBundleChange(change: { removed: readonly string[]; changed: readonly string[] }): void {
    const removed = new Set(change.removed);
    const changed = new Set(change.changed);
    const removedCount = this.options.cache.deleteWhere((pair) => removed.has(trustDomainOf(pair.remoteId)));
    if (removedCount > 0) this.options.logger.info({ removed: removedCount, trustDomains: change.removed }, 'pairs of an unloaded trust domain removed');
    for (const pair of this.desired.values()) {
      if (removed.has(trustDomainOf(pair.remoteId)) && !this.inFlight.has(pairKeyString(pair))) this.ensure(pair, 'bundle-change');
    }
    // A changed bundle may no longer anchor a peer's chain: a fresh handshake re-validates it, and
    // a failure removes the pair (see authenticateNow).
    this.reauthWhere((pair) => changed.has(trustDomainOf(pair.remoteId)), 'bundle-change', { removeOnFailure: true });
  }

  /** The transport to a node went down (or was re-keyed): its pairs follow. */
  onNodeLinkChanged(node: string): void {
    const link = this.options.nodeLink(node);
    if (!link) {
      const removed = this.options.cache.deleteWhere((pair) => pair.remoteNode === node);
      if (removed > 0) this.options.logger.info({ node, removed }, 'node transport down: its pairs removed');
      return;
    }
    // The link was re-authenticated: pairs keep their own expiry, capped by the link's new one.
    for (const pair of this.options.cache.values()) {
      if (pair.remoteNode !== node) continue;
      this.options.cache.upsert({ ...pair, epoch: link.epoch });
    }
    for (const pair of this.desired.values()) {
      if (pair.remoteNode === node && !this.options.cache.get(pair)) this.want(pair);
    }
  }

  status(): PairStatus[] {
    const out: PairStatus[] = [];
    for (const [key, pair] of this.desired) {
      const cached = this.options.cache.get(pair);
      const progress = this.progress.get(key);
      out.push({
        localId: pair.localId,
        remoteId: pair.remoteId,
        remoteNode: pair.remoteNode,
        state: cached ? 'authenticated' : (progress?.state ?? 'pending'),
        ...(cached && { expiresAt: new Date(cached.expiresAt).toISOString(), lastAuthenticatedAt: new Date(cached.authenticatedAt).toISOString() }),
        ...((cached?.trigger ?? progress?.trigger) && { trigger: cached?.trigger ?? progress?.trigger }),
        ...(progress?.lastError && { lastError: progress.lastError }),
      });
    }
    return out;
  }

  /** One desired pair's state and last failure class (undefined: not desired), without building the whole status. */
  stateOf(pair: KeyedPair): { state: PairState; lastError?: string } | undefined {
    if (!this.desired.has(pair.key)) return undefined;
    if (this.options.cache.get(pair)) return { state: 'authenticated' };
    const progress = this.progress.get(pair.key);
    return { state: progress?.state ?? 'pending', ...(progress?.lastError !== undefined && { lastError: progress.lastError }) };
  }

  /** How many desired pairs are in each state (the meshauth_auth_pairs gauge). */
  counts(): Record<'authenticated' | 'pending' | 'failed', number> {
    const counts = { authenticated: 0, pending: 0, failed: 0 };
    for (const [key, pair] of this.desired) {
      if (this.options.cache.get(pair)) counts.authenticated++;
      else counts[this.progress.get(key)?.state ?? 'pending']++;
    }
    return counts;
  }

  /** Waits for every authentication in flight (tests and shutdown). */
  async settled(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight.values()]);
  }

  stop(): void {
    this.stopped = true;
    this.scheduler.stop();
  }

  /**
   * A desired pair without an entry. Both nodes want it, and one handshake serves both: the node
   * with the lower name initiates at once, the other after a grace period, if the pair is still
   * missing then (or at once when the SVID it waited for arrives). Same-node pairs need no handshake.
   */
  private want(pair: PairKey, options: { svidArrived?: boolean } = {}): void {
    if (this.options.proactive?.() === false) return;
    // The SVID a pair was waiting for just arrived here: the peer's attempt, if it leads, most
    // likely failed on this very SVID (unknown_identity) and is backing off, so this node starts
    // the handshake at once instead of waiting out the grace period.
    if (pair.remoteNode === this.options.localNode || this.initiatesProactively(pair)) this.ensure(pair, 'proactive');
    // Shortly, not at once: if the leader had not tried yet, its handshake usually lands first.
    else if (options.svidArrived) this.scheduleFor(pairKeyString(pair), this.now() + SVID_ARRIVAL_DELAY_MS, 'proactive');
    else this.scheduleFor(pairKeyString(pair), this.now() + this.options.timing.proactiveGraceMs, 'proactive');
  }

  private ensure(pair: PairKey, trigger: AuthTrigger, options: { removeOnFailure?: boolean } = {}): void {
    const key = pairKeyString(pair);
    if (this.stopped || this.inFlight.has(key)) return;
    const run = this.authenticateNow(pair, trigger, options).finally(() => this.inFlight.delete(key));
    this.inFlight.set(key, run);
  }

  private async authenticateNow(pair: PairKey, trigger: AuthTrigger, options: { removeOnFailure?: boolean }): Promise<void> {
    const key = pairKeyString(pair);
    const progress = this.progress.get(key) ?? { state: 'pending', trigger };
    progress.trigger = trigger;
    if (!this.options.cache.get(pair)) this.progress.set(key, progress);
    // Pairs ride on an authenticated node link; onNodeLinkChanged brings them back when it is up.
    if (pair.remoteNode !== this.options.localNode && !this.options.nodeLink(pair.remoteNode)) {
      // A pair that had to be re-validated now (a changed trust bundle) cannot be without a link:
      // it goes, rather than pass traffic on a chain the new bundle may not anchor. Pairs restored
      // after a restart are in this state until their node link comes up.
      if (options.removeOnFailure && this.options.cache.delete(pair)) {
        this.options.logger.info({ pair: describe(pair), trigger }, 'pair could not be re-validated (no node link): removed');
      }
      return;
    }
    if (trigger === 'reauth' || trigger === 'rotation' || trigger === 'bundle-change') this.options.onReauth?.(trigger);
    try {
      const result = pair.remoteNode === this.options.localNode ? this.options.authenticateLocal(pair) : await this.options.authenticate(pair);
      // A same-node pair whose SVIDs are not issued yet: no failure, onLocalSvid brings it back.
      if (!result) return;
      if (this.stopped) return;
      this.record(result, trigger);
    } catch (err) {
      if (this.stopped || !this.desired.has(key)) return;
      const failureClass = (err as { failureClass?: string }).failureClass ?? 'protocol';
      if (options.removeOnFailure) this.options.cache.delete(pair);
      const backoff = progress.backoff ?? new Backoff(this.options.timing.failureBackoff);
      const delay = backoff.next();
      Object.assign(progress, { state: 'failed', lastError: failureClass, backoff, retryAt: this.now() + delay });
      this.progress.set(key, progress);
      this.options.logger.warn({ pair: describe(pair), trigger, failureClass, err: (err as Error).message, retryInMs: delay }, 'pair authentication failed');
      // Keep retrying while the pair is wanted and has no valid entry; a cached pair keeps its
      // scheduled re-authentication, which comes before its expiry.
      if (!this.options.cache.get(pair)) this.scheduleFor(key, this.now() + delay, trigger === 'on-demand' ? 'on-demand' : 'proactive');
    }
  }

  private onDue(key: string): void {
    const pair = this.desired.get(key);
    if (!pair) return;
    const trigger = this.dueTrigger.get(key) ?? (this.options.cache.get(pair) ? 'reauth' : 'proactive');
    this.dueTrigger.delete(key);
    this.ensure(pair, trigger);
  }

  private scheduleFor(key: string, dueAt: number, trigger: AuthTrigger): void {
    if (trigger === 'reauth' || trigger === 'proactive') this.dueTrigger.delete(key);
    else this.dueTrigger.set(key, trigger);
    this.scheduler.schedule(key, dueAt);
  }


  private scheduleReauth(pair: CachedPair, key = pairKeyString(pair)): void {
    // Both nodes hold the pair; the proactive initiator re-authenticates first and refreshes the
    // other side through its responder. The other node re-authenticates only if that never came.
    const { fraction, jitter } = this.options.timing;
    const leads = pair.remoteNode === this.options.localNode || this.initiatesProactively(pair);
    const timing = leads ? { fraction, jitter } : followerTiming({ fraction, jitter });
    this.scheduleFor(key, this.scheduler.dueTime(pair.authenticatedAt, pair.expiresAt, timing), 'reauth');
  }

  private reauthWhere(predicate: (pair: CachedPair) => boolean, trigger: AuthTrigger, options: { removeOnFailure?: boolean } = {}): void {
    for (const pair of this.options.cache.values()) {
      if (predicate(pair) && this.desired.has(pairKeyString(pair))) this.ensure(pair, trigger, options);
    }
  }

  /** Of the two nodes that both want a pair, the one with the lower name initiates proactively;
   *  the other waits a grace period first, so one handshake (not two) serves both directions. */
  private initiatesProactively(pair: PairKey): boolean {
    return this.options.localNode < pair.remoteNode;
  }
}

// How long a non-leading node waits after the SVID of a pair arrived before initiating itself:
// below the initiator's first retry (200 ms), above a handshake on an idle pair of nodes.
const SVID_ARRIVAL_DELAY_MS = 50;
// A signal for a cached pair this close to its expiry means the gate already sees it expired.
const SIGNAL_EXPIRY_MARGIN_MS = 1_000;
// A rotation re-authenticates the identity's pairs within at most this long.
const ROTATION_SPREAD_MS = 30_000;

function keyedMap(pairs: readonly PairKey[]): Map<string, KeyedPair> {
  const map = new Map<string, KeyedPair>();
  for (const pair of pairs) {
    const entry = keyed(pair);
    map.set(entry.key, entry);
  }
  return map;
}

function trustDomainOf(spiffeId: string): string {
  return spiffeId.slice('spiffe://'.length).split('/')[0] ?? '';
}

function describe(pair: PairKey): string {
  return `${pair.localId} -> ${pair.remoteId} @ ${pair.remoteNode}`;
}
