import type { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { LRUCache } from 'lru-cache';
import type { TrustBundleSet } from '../identity/bundle-set.js';
import type { SpiffeId } from '../identity/spiffe-id.js';
import { validateX509Svid, type ValidatedSvid } from '../identity/svid-validator.js';
import { HandshakeFailure, fromSvidError } from './failure.js';

export interface PeerValidatorOptions {
  bundles: TrustBundleSet;
  clockSkewMs: number;
  maxChainDepth: number;
  /** Successful validations remembered; 0 turns the cache off. */
  cacheSize?: number;
  now?: () => Date;
}

// A peer chain longer than this is refused before any parsing (the validator would refuse it too).
const MAX_PEER_CHAIN = 16;

/**
 * Validates the certificate chain a TLS peer sent as an X509-SVID against the trust bundle of
 * the trust domain it claims. Peers present the same chains again and again, so successful
 * validations are cached by the fingerprints of the exact chain: an entry is used only until the
 * chain's earliest notAfter and the whole cache is dropped whenever any trust bundle changes.
 * The expected ID is compared on every use. Failures are never cached.
 */
export class PeerValidator {
  private readonly cache?: LRUCache<string, ValidatedSvid>;
  private readonly now: () => Date;
  private readonly onBundles = (): void => this.cache?.clear();

  constructor(private readonly options: PeerValidatorOptions) {
    const size = options.cacheSize ?? 1024;
    if (size > 0) this.cache = new LRUCache({ max: size });
    this.now = options.now ?? (() => new Date());
    options.bundles.on('change', this.onBundles);
  }

  close(): void {
    this.options.bundles.off('change', this.onBundles);
  }

  /** Validates the socket peer's chain; throws HandshakeFailure with the validator's class. */
  validatePeer(socket: TLSSocket, whose: string, expectedId?: SpiffeId): ValidatedSvid {
    return this.validate(peerChain(socket), whose, expectedId);
  }

  validate(chain: X509Certificate[], whose: string, expectedId?: SpiffeId): ValidatedSvid {
    if (chain.length === 0) throw new HandshakeFailure('bad_certificate', `${whose} presented no certificate`);
    const now = this.now();
    const key = this.cache && chain.map((cert) => cert.fingerprint256).join('/');
    const cached = key === undefined ? undefined : this.cache?.get(key);
    if (cached && cached.earliestNotAfter > now && (!expectedId || cached.id.equals(expectedId))) return cached;
    let validated: ValidatedSvid;
    try {
      validated = validateX509Svid(chain, this.options.bundles, {
        now,
        clockSkewMs: this.options.clockSkewMs,
        maxChainDepth: this.options.maxChainDepth,
        ...(expectedId && { expectedId }),
      });
    } catch (err) {
      throw fromSvidError(err, whose);
    }
    if (key !== undefined) this.cache?.set(key, validated);
    return validated;
  }
}

/** The chain exactly as the peer sent it, leaf first (see TLS_BASE_OPTIONS for why this is the
 *  sent chain and not one completed from a local store). */
export function peerChain(socket: TLSSocket): X509Certificate[] {
  const chain: X509Certificate[] = [];
  let cert: X509Certificate | undefined = socket.getPeerX509Certificate();
  while (cert && chain.length <= MAX_PEER_CHAIN) {
    chain.push(cert);
    cert = cert.issuerCertificate;
  }
  return chain;
}
