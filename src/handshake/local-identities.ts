import { constants } from 'node:crypto';
import { createSecureContext, type SecureContext, type TLSSocket } from 'node:tls';
import { LRUCache } from 'lru-cache';
import type { SpiffeId } from '../identity/spiffe-id.js';
import type { Svid } from '../identity/types.js';
import { sniForIdentity } from './sni.js';

/** Where local SVIDs come from: the identity store (anything with its events and accessors). */
export interface SvidSource {
  readonly nodeId: SpiffeId;
  list(): Svid[];
  /** IDs this node wants SVIDs for, held or still being issued. */
  wantedList(): string[];
  on(event: 'svid', listener: (svid: Svid) => void): unknown;
  on(event: 'svidRemoved', listener: (id: SpiffeId) => void): unknown;
  on(event: 'wanted', listener: (ids: string[]) => void): unknown;
  off(event: 'svid', listener: (svid: Svid) => void): unknown;
  off(event: 'svidRemoved', listener: (id: SpiffeId) => void): unknown;
  off(event: 'wanted', listener: (ids: string[]) => void): unknown;
}

/** A local identity ready for handshakes: its SVID and the TLS context that presents it. */
export interface LocalIdentity {
  readonly id: SpiffeId;
  readonly svid: Svid;
  readonly context: SecureContext;
  readonly sni: string;
  readonly isNode: boolean;
  readonly serial: string;
  /** Earliest notAfter over the chain presented. */
  readonly chainNotAfter: Date;
  /** performance.now() when this SVID became the one presented for its ID. */
  readonly installedAt: number;
}

/**
 * TLS settings every meshauth context carries, for both roles. TLS 1.3 only. No session tickets
 * (TLS 1.3 then falls back to stateful tickets, which nothing stores, so nothing resumes). An
 * empty trust store (`ca: []`): certificate checks are ours (validateX509Svid against the
 * trust bundles), and with no anchor OpenSSL's own verification always fails early, so the peer
 * chain Node reports is exactly the one the peer sent — never completed from a local store.
 */
export const TLS_BASE_OPTIONS = {
  minVersion: 'TLSv1.3',
  maxVersion: 'TLSv1.3',
  secureOptions: constants.SSL_OP_NO_TICKET,
  ca: [] as string[],
} as const;

// Contexts of SVIDs replaced by a rotation stay findable for handshakes already in flight.
const RECENTLY_REPLACED = 64;
// Handshakes held at once waiting for an identity being issued; beyond that, refused at once.
const MAX_WAITING = 256;

/**
 * The SecureContexts of this node's identities, built once per SVID and rebuilt when the store
 * rotates one, so the next handshake presents the new SVID without a restart. Looked up by ID
 * (initiator), by SNI (responder) and by the leaf a finished handshake presented.
 */
export class LocalIdentities {
  private readonly byId = new Map<string, LocalIdentity>();
  private readonly bySni = new Map<string, LocalIdentity>();
  private readonly byFingerprint = new LRUCache<string, LocalIdentity>({ max: RECENTLY_REPLACED });
  /** SNI → ID of the identities this node wants: a handshake for one not issued yet may wait. */
  private wantedBySni = new Map<string, string>();
  private readonly waiting = new Map<string, Set<(context: SecureContext | undefined) => void>>();
  private waitingCount = 0;
  private readonly onSvid = (svid: Svid): void => this.add(svid);
  private readonly onRemoved = (id: SpiffeId): void => this.remove(id);
  private readonly onWanted = (ids: string[]): void => this.setWanted(ids);

  constructor(
    private readonly store: SvidSource,
    private readonly now: () => Date = () => new Date(),
  ) {
    for (const svid of store.list()) this.add(svid);
    this.setWanted(store.wantedList());
    store.on('svid', this.onSvid);
    store.on('svidRemoved', this.onRemoved);
    store.on('wanted', this.onWanted);
  }

  close(): void {
    this.store.off('svid', this.onSvid);
    this.store.off('svidRemoved', this.onRemoved);
    this.store.off('wanted', this.onWanted);
    for (const sni of [...this.waiting.keys()]) this.settleWaiting(sni, undefined);
  }

  /** This agent's node identity (node handshakes). */
  get nodeId(): SpiffeId {
    return this.store.nodeId;
  }

  /** The current, unexpired identity for an ID. */
  get(id: SpiffeId | string): LocalIdentity | undefined {
    return this.live(this.byId.get(id.toString()));
  }

  /** The context to present for an SNI; undefined when no local identity has that name. */
  contextForSni(servername: string): SecureContext | undefined {
    return this.live(this.bySni.get(servername))?.context;
  }

  /**
   * As contextForSni, but for an identity this node wants and has not been issued yet (a new
   * workload: the peer's proactive handshake often arrives before its SVID), waits up to
   * `timeoutMs` for it rather than refusing: the handshake then completes the moment the SVID
   * arrives, instead of the peer backing off and this node trying again later.
   */
  async awaitContextForSni(servername: string, timeoutMs: number): Promise<SecureContext | undefined> {
    const held = this.contextForSni(servername);
    if (held || !this.wantedBySni.has(servername) || this.waitingCount >= MAX_WAITING) return held;
    return new Promise((resolve) => {
      const waiters = this.waiting.get(servername) ?? new Set();
      this.waiting.set(servername, waiters);
      this.waitingCount++;
      const timer = setTimeout(() => done(undefined), timeoutMs);
      const done = (context: SecureContext | undefined): void => {
        clearTimeout(timer);
        if (!waiters.delete(done)) return;
        this.waitingCount--;
        if (waiters.size === 0 && this.waiting.get(servername) === waiters) this.waiting.delete(servername);
        resolve(context);
      };
      waiters.add(done);
    });
  }

  /**
   * The identity a finished responder handshake presented. The SNI names it; only if that
   * identity was rotated after the connection was accepted (so the handshake may have presented
   * its predecessor) is the presented certificate itself looked up, which costs more.
   */
  presentedFor(socket: TLSSocket, acceptedAt: number): LocalIdentity | undefined {
    const bySni = this.live(this.bySni.get(socket.servername || ''));
    if (bySni && bySni.installedAt <= acceptedAt) return bySni;
    const presented = socket.getX509Certificate();
    return presented && this.byPresentedLeaf(presented.fingerprint256);
  }

  /** The identity whose leaf a finished handshake presented (current or just rotated out). */
  byPresentedLeaf(fingerprint256: string): LocalIdentity | undefined {
    const identity = this.live(this.byFingerprint.get(fingerprint256));
    // A withdrawn identity stops authenticating at once, even for handshakes in flight.
    return identity && this.byId.has(identity.id.toString()) ? identity : undefined;
  }

  private live(identity: LocalIdentity | undefined): LocalIdentity | undefined {
    return identity && identity.chainNotAfter > this.now() ? identity : undefined;
  }

  private add(svid: Svid): void {
    const leaf = svid.chain[0]!;
    const identity: LocalIdentity = {
      id: svid.id,
      svid,
      context: createSecureContext({
        ...TLS_BASE_OPTIONS,
        ca: [],
        cert: svid.chain.map((cert) => cert.toString()).join(''),
        key: svid.key.export({ type: 'pkcs8', format: 'pem' }),
      }),
      sni: sniForIdentity(svid.id),
      isNode: svid.id.equals(this.store.nodeId),
      serial: leaf.serialNumber.toLowerCase(),
      chainNotAfter: new Date(Math.min(...svid.chain.map((cert) => Date.parse(cert.validTo)))),
      installedAt: performance.now(),
    };
    this.byId.set(svid.id.toString(), identity);
    this.bySni.set(identity.sni, identity);
    this.byFingerprint.set(leaf.fingerprint256, identity);
    this.settleWaiting(identity.sni, this.live(identity)?.context);
  }

  private setWanted(ids: readonly string[]): void {
    // The agent sets its wanted list on every cluster change: hash only the IDs that are new.
    const sniOf = new Map([...this.wantedBySni].map(([sni, id]) => [id, sni]));
    this.wantedBySni = new Map(ids.map((id) => [sniOf.get(id) ?? sniForIdentity(id), id]));
    // No longer wanted: nothing is coming for them.
    for (const sni of [...this.waiting.keys()]) if (!this.wantedBySni.has(sni)) this.settleWaiting(sni, undefined);
  }

  private settleWaiting(sni: string, context: SecureContext | undefined): void {
    for (const done of [...(this.waiting.get(sni) ?? [])]) done(context);
  }

  private remove(id: SpiffeId): void {
    const identity = this.byId.get(id.toString());
    if (!identity) return;
    this.byId.delete(id.toString());
    this.bySni.delete(identity.sni);
  }
}
