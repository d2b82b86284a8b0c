import type { KeyObject, X509Certificate } from 'node:crypto';
import type { SpiffeId } from './spiffe-id.js';

/** Identity material exactly as a provider received it. Nothing in it is trusted yet: the
 *  identity store validates it before anything else sees it. */
export interface RawSvid {
  /** DER certificates, leaf first, then intermediates. */
  chain: Buffer[];
  /** PKCS#8 DER private key of the leaf. */
  key: Buffer;
  /** The SPIFFE ID the source says this SVID carries (Workload API `spiffe_id`); must match the leaf. */
  claimedId?: string;
  /** Workload API / SPIRE hint, informational. */
  hint?: string;
}

/** Trust domain name → its CA certificates (DER). A full state: absent domains are unloaded. */
export type RawBundles = Map<string, Buffer[]>;

/** Why a provider could not deliver; each kind is a label value of
 *  meshauth_identity_provider_errors_total{provider,kind}. */
export type ProviderErrorKind =
  | 'unavailable'
  | 'permission_denied'
  | 'invalid_argument'
  | 'unimplemented'
  | 'malformed'
  | 'http'
  | 'auth'
  | 'io'
  | 'issue';

export class ProviderError extends Error {
  constructor(
    readonly kind: ProviderErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ProviderError';
  }
}

/** Where a provider reports to. Implemented by the identity store. */
export interface ProviderSink {
  /** The full set of SVIDs the provider holds now; an ID absent here is withdrawn. */
  svids(svids: RawSvid[]): void;
  /** The full set of trust bundles; a domain absent here is unloaded. */
  bundles(bundles: RawBundles): void;
  /** A failure the provider will recover from on its own (it retries); counted and logged. */
  error(err: ProviderError): void;
}

export type ProviderName = 'dev' | 'file' | 'spiffe' | 'spire-delegated' | 'vault';

/** A source of SVIDs and bundles. Providers push full states to the sink whenever anything
 *  changes, retry on their own with backoff, and never throw out of their background work. */
export interface IdentityProvider {
  readonly name: ProviderName;
  /** Starts delivering. Resolves once started (not necessarily once the first SVID arrived). */
  start(sink: ProviderSink): Promise<void>;
  /** The SPIFFE IDs this node needs SVIDs for (its node identity and its local workloads).
   *  Issuing providers (dev, vault) issue exactly these; streaming providers deliver what their
   *  server grants and may ignore this. */
  setWanted(ids: readonly SpiffeId[]): void;
  /** Stops all background work and closes connections. */
  stop(): Promise<void>;
}

/** A validated SVID held by the identity store. */
export interface Svid {
  readonly id: SpiffeId;
  /** Leaf first. */
  readonly chain: readonly X509Certificate[];
  readonly key: KeyObject;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly hint?: string;
}
