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
  on(event: 'svid', listener: (svid: Svid) => void): unknown;
  on(event: 'svidRemoved', listener: (id: SpiffeId) => void): unknown;
  off(event: 'svid', listener: (svid: Svid) => void): unknown;
  off(event: 'svidRemoved', listener: (id: SpiffeId) => void): unknown;
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

/**
 * The SecureContexts of this node's identities, built once per SVID and rebuilt when the store
 * rotates one, so the next handshake presents the new SVID without a restart. Looked up by ID
 * (initiator), by SNI (responder) and by the leaf a finished handshake presented.
 */
export class LocalIdentities {
  private readonly byId = new Map<string, LocalIdentity>();
  private readonly bySni = new Map<string, LocalIdentity>();
  private readonly byFingerprint = new LRUCache<string, LocalIdentity>({ max: RECENTLY_REPLACED });
  private readonly onSvid = (svid: Svid): void => this.add(svid);
  private readonly onRemoved = (id: SpiffeId): void => this.remove(id);

  constructor(
    private readonly store: SvidSource,
    private readonly now: () => Date = () => new Date(),
  ) {
    for (const svid of store.list()) this.add(svid);
    store.on('svid', this.onSvid);
    store.on('svidRemoved', this.onRemoved);
  }

  close(): void {
    this.store.off('svid', this.onSvid);
    this.store.off('svidRemoved', this.onRemoved);
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
  }

  private remove(id: SpiffeId): void {
    const identity = this.byId.get(id.toString());
    if (!identity) return;
    this.byId.delete(id.toString());
    this.bySni.delete(identity.sni);
  }
}
