import { EventEmitter } from 'node:events';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { TrustBundleSet, type BundleChange } from './bundle-set.js';
import { SpiffeId } from './spiffe-id.js';
import { SvidError } from './svid-errors.js';
import { validateX509Svid } from './svid-validator.js';
import type { IdentityProvider, ProviderError, ProviderSink, RawBundles, RawSvid, Svid } from './types.js';
import type { IdentityMetrics } from './identity-metrics.js';
import type { Logger } from '../util/logger.js';

export interface IdentityStoreOptions {
  provider: IdentityProvider;
  /** This agent's own identity (node ↔ node handshakes); always wanted. */
  nodeId: SpiffeId;
  clockSkewMs: number;
  maxChainDepth: number;
  logger: Logger;
  metrics?: IdentityMetrics;
  now?: () => Date;
}

export interface IdentityHealth {
  provider: string;
  /** True once the node SVID and its trust domain's bundle are held. */
  ready: boolean;
  lastUpdateAt?: Date;
  lastError?: { kind: string; message: string; at: Date };
}

interface IdentityStoreEvents {
  /** A new or rotated SVID is in use for its ID. */
  svid: [Svid];
  /** An ID has no usable SVID any more (withdrawn by the provider, or expired). */
  svidRemoved: [SpiffeId];
  bundles: [BundleChange];
  /** The wanted IDs changed (setWanted): all of them, the node's own included. */
  wanted: [string[]];
}

/**
 * The one place that holds this node's identities: the SVIDs (chain + key) per local SPIFFE ID,
 * the node identity and the trust bundles. It sits in front of whichever provider is configured,
 * validates everything the provider delivers with the same validator the handshake uses, and
 * keeps the last good SVID of an ID while updates for it are malformed or invalid, until it
 * expires. Private keys stay in memory as KeyObjects and are never logged.
 */
export class IdentityStore extends EventEmitter<IdentityStoreEvents> implements ProviderSink {
  readonly trustBundles = new TrustBundleSet();
  private held = new Map<string, Svid>();
  /** The provider's last SVID state, re-validated when bundles change (SVIDs may arrive first). */
  private lastRawSvids: RawSvid[] = [];
  private wanted = new Set<string>();
  private lastUpdateAt?: Date;
  private lastError?: IdentityHealth['lastError'];
  private expiryTimer?: NodeJS.Timeout;
  private readonly now: () => Date;

  constructor(private readonly options: IdentityStoreOptions) {
    super();
    this.now = options.now ?? (() => new Date());
    this.wanted.add(options.nodeId.toString());
    this.trustBundles.on('change', (change) => {
      options.metrics?.trustDomains.set(this.trustBundles.trustDomains().length);
      this.emit('bundles', change);
    });
  }

  async start(): Promise<void> {
    this.options.provider.setWanted(this.wantedIds());
    await this.options.provider.start(this);
  }

  async stop(): Promise<void> {
    clearTimeout(this.expiryTimer);
    await this.options.provider.stop();
  }

  /** The workload identities with endpoints on this node; the node identity is always added. */
  setWanted(ids: readonly SpiffeId[]): void {
    this.wanted = new Set([this.options.nodeId.toString(), ...ids.map((id) => id.toString())]);
    this.options.provider.setWanted(this.wantedIds());
    this.emit('wanted', [...this.wanted]);
  }

  /** The IDs of the identities this node wants SVIDs for (held or not yet). */
  wantedList(): string[] {
    return [...this.wanted];
  }

  /** The unexpired SVID for an ID, if held. */
  get(id: SpiffeId | string): Svid | undefined {
    const svid = this.held.get(id.toString());
    return svid && svid.notAfter > this.now() ? svid : undefined;
  }

  nodeSvid(): Svid | undefined {
    return this.get(this.options.nodeId);
  }

  get nodeId(): SpiffeId {
    return this.options.nodeId;
  }

  list(): Svid[] {
    const now = this.now();
    return [...this.held.values()].filter((svid) => svid.notAfter > now);
  }

  health(): IdentityHealth {
    const node = this.nodeSvid();
    return {
      provider: this.options.provider.name,
      ready: node !== undefined && this.trustBundles.get(node.id.trustDomain) !== undefined,
      ...(this.lastUpdateAt && { lastUpdateAt: this.lastUpdateAt }),
      ...(this.lastError && { lastError: this.lastError }),
    };
  }

  // ProviderSink: called by the provider with full states.

  svids(raw: RawSvid[]): void {
    this.lastRawSvids = raw;
    this.lastUpdateAt = this.now();
    this.applySvids(raw);
  }

  bundles(update: RawBundles): void {
    this.lastUpdateAt = this.now();
    for (const rejection of this.trustBundles.replace(update)) {
      this.options.metrics?.bundleRejected.inc({ provider: this.options.provider.name });
      this.options.logger.warn({ trustDomain: rejection.trustDomain, reason: rejection.reason }, 'trust bundle rejected; keeping the last good one');
    }
    // A bundle may arrive after the SVIDs it anchors, or replace the CA that signed them.
    this.applySvids(this.lastRawSvids);
  }

  error(err: ProviderError): void {
    this.lastError = { kind: err.kind, message: err.message, at: this.now() };
    this.options.metrics?.providerErrors.inc({ provider: this.options.provider.name, kind: err.kind });
    this.options.logger.warn({ provider: this.options.provider.name, kind: err.kind, err: err.message }, 'identity provider error');
  }

  private applySvids(raw: RawSvid[]): void {
    const next = new Map<string, Svid>();
    let unidentifiedRejects = 0;
    for (const candidate of raw) {
      const claimed = claimedIdOf(candidate);
      try {
        const svid = this.validate(candidate);
        if (next.has(svid.id.toString())) continue; // duplicates: the first one wins, as svids[0] is the default
        next.set(svid.id.toString(), svid);
      } catch (err) {
        const reason = err instanceof SvidError || err instanceof KeyRejection ? err.reason : 'malformed';
        this.options.metrics?.svidRejected.inc({ provider: this.options.provider.name, reason });
        this.options.logger.warn({ spiffeId: claimed ?? 'unknown', reason, err: (err as Error).message }, 'SVID update rejected; keeping the last good SVID');
        if (claimed === undefined) unidentifiedRejects++;
        const previous = claimed !== undefined ? this.get(claimed) : undefined;
        if (previous && !next.has(claimed!)) next.set(claimed!, previous);
      }
    }
    // An ID absent from a full state is withdrawn, unless some rejected SVID could not even be
    // identified: then it might be that ID's update, and the last good SVID stays.
    if (unidentifiedRejects > 0) {
      for (const [id, svid] of this.held) if (!next.has(id) && this.get(id)) next.set(id, svid);
    }
    this.replaceHeld(next);
  }

  private validate(candidate: RawSvid): Svid {
    const validated = validateX509Svid(candidate.chain, this.trustBundles, {
      now: this.now(),
      clockSkewMs: this.options.clockSkewMs,
      maxChainDepth: this.options.maxChainDepth,
      ...(candidate.claimedId !== undefined && { expectedId: candidate.claimedId }),
    });
    let key;
    try {
      key = createPrivateKey({ key: candidate.key, format: 'der', type: 'pkcs8' });
    } catch {
      throw new KeyRejection('bad_private_key', 'private key is not a PKCS#8 DER key');
    }
    const leaf = validated.chain[0]!;
    if (!leaf.checkPrivateKey(key)) throw new KeyRejection('key_mismatch', 'private key does not match the leaf certificate');
    return {
      id: validated.id,
      chain: validated.chain,
      key,
      notBefore: validated.notBefore,
      notAfter: validated.notAfter,
      ...(candidate.hint !== undefined && { hint: candidate.hint }),
    };
  }

  private replaceHeld(next: Map<string, Svid>): void {
    const previous = this.held;
    this.held = next;
    for (const [id, svid] of next) {
      if (previous.get(id) === svid) continue;
      const old = previous.get(id);
      if (old && old.chain[0]!.fingerprint256 === svid.chain[0]!.fingerprint256) continue;
      this.options.metrics?.svidExpiry.set({ spiffe_id: id }, svid.notAfter.getTime() / 1000);
      this.options.logger.info({ spiffeId: id, notAfter: svid.notAfter.toISOString(), rotated: old !== undefined }, 'SVID in use');
      this.emit('svid', svid);
    }
    for (const [id, svid] of previous) {
      if (next.has(id)) continue;
      this.options.metrics?.svidExpiry.remove({ spiffe_id: id });
      this.options.logger.info({ spiffeId: id }, 'SVID withdrawn');
      this.emit('svidRemoved', svid.id);
    }
    this.scheduleExpiry();
  }

  /** Drops SVIDs when they expire, so that nothing keeps presenting a dead certificate. */
  private scheduleExpiry(): void {
    clearTimeout(this.expiryTimer);
    const soonest = Math.min(...[...this.held.values()].map((svid) => svid.notAfter.getTime()));
    if (!Number.isFinite(soonest)) return;
    const delay = Math.max(0, soonest - this.now().getTime()) + 1;
    this.expiryTimer = setTimeout(() => this.dropExpired(), Math.min(delay, 2 ** 31 - 1));
    this.expiryTimer.unref();
  }

  private dropExpired(): void {
    const now = this.now();
    const next = new Map([...this.held].filter(([, svid]) => svid.notAfter > now));
    if (next.size !== this.held.size) this.replaceHeld(next);
    else this.scheduleExpiry();
  }

  private wantedIds(): SpiffeId[] {
    return [...this.wanted].map((id) => SpiffeId.parse(id));
  }
}

/** An SVID whose certificate chain is fine but whose private key is unusable. */
class KeyRejection extends Error {
  constructor(
    readonly reason: 'bad_private_key' | 'key_mismatch',
    message: string,
  ) {
    super(message);
  }
}

/** The SPIFFE ID an SVID claims: the provider's word, else the leaf's URI SAN if it parses. */
function claimedIdOf(candidate: RawSvid): string | undefined {
  if (candidate.claimedId) return candidate.claimedId;
  try {
    const leaf = candidate.chain[0];
    const uri = leaf && /URI:(spiffe:\/\/[^,\s]+)/.exec(new X509Certificate(leaf).subjectAltName ?? '')?.[1];
    return uri ? SpiffeId.tryParse(uri)?.toString() : undefined;
  } catch {
    return undefined;
  }
}
