import { EventEmitter } from 'node:events';
import { X509Certificate } from 'node:crypto';
import { SpiffeId } from './spiffe-id.js';
import type { RawBundles } from './types.js';

/** What a bundle update changed, by trust domain name. */
export interface BundleChange {
  added: string[];
  removed: string[];
  changed: string[];
}

/** Looks up the CA certificates of one trust domain: what the SVID validator needs. */
export interface BundleLookup {
  get(trustDomain: string): readonly X509Certificate[] | undefined;
}

export interface BundleRejection {
  trustDomain: string;
  reason: string;
}

interface BundleSetEvents {
  change: [BundleChange];
}

/**
 * The trust bundles of every trust domain this node trusts (its own and federated ones).
 * Updates are full states, as in the Workload API: a domain absent from an update is unloaded.
 * A domain whose new certificates do not parse keeps its last good bundle and is reported.
 */
export class TrustBundleSet extends EventEmitter<BundleSetEvents> implements BundleLookup {
  private bundles = new Map<string, { certs: X509Certificate[]; fingerprint: string }>();

  get(trustDomain: string): readonly X509Certificate[] | undefined {
    return this.bundles.get(trustDomain)?.certs;
  }

  trustDomains(): string[] {
    return [...this.bundles.keys()].sort();
  }

  /** Replaces the whole set. Returns the domains whose update was rejected (they keep their old bundle). */
  replace(update: RawBundles): BundleRejection[] {
    const rejected: BundleRejection[] = [];
    const next = new Map<string, { certs: X509Certificate[]; fingerprint: string }>();
    for (const [trustDomain, ders] of update) {
      const parsed = parseBundle(trustDomain, ders);
      if ('reason' in parsed) {
        rejected.push({ trustDomain, reason: parsed.reason });
        const previous = this.bundles.get(trustDomain);
        if (previous) next.set(trustDomain, previous);
        continue;
      }
      next.set(trustDomain, parsed);
    }
    const change: BundleChange = { added: [], removed: [], changed: [] };
    for (const [trustDomain, bundle] of next) {
      const previous = this.bundles.get(trustDomain);
      if (!previous) change.added.push(trustDomain);
      else if (previous.fingerprint !== bundle.fingerprint) change.changed.push(trustDomain);
    }
    for (const trustDomain of this.bundles.keys()) if (!next.has(trustDomain)) change.removed.push(trustDomain);
    this.bundles = next;
    if (change.added.length + change.removed.length + change.changed.length > 0) this.emit('change', change);
    return rejected;
  }
}

function parseBundle(
  trustDomain: string,
  ders: Buffer[],
): { certs: X509Certificate[]; fingerprint: string } | { reason: string } {
  try {
    SpiffeId.checkTrustDomain(trustDomain);
  } catch (err) {
    return { reason: (err as Error).message };
  }
  if (ders.length === 0) return { reason: 'bundle holds no certificates' };
  const certs: X509Certificate[] = [];
  for (const [index, der] of ders.entries()) {
    try {
      certs.push(new X509Certificate(der));
    } catch (err) {
      return { reason: `certificate ${index} does not parse: ${(err as Error).message}` };
    }
  }
  // Order-insensitive identity of the bundle, so a reordered but equal bundle is no change.
  const fingerprint = certs.map((cert) => cert.fingerprint256).sort().join(',');
  return { certs, fingerprint };
}

/** Splits concatenated DER certificates (Workload API `bundle` and `federated_bundles` fields). */
export function splitConcatenatedDer(data: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let offset = 0;
  while (offset < data.length) {
    const length = derElementLength(data, offset);
    out.push(data.subarray(offset, offset + length));
    offset += length;
  }
  return out;
}

/** Length in bytes of the DER element (tag + length + content) starting at offset. */
function derElementLength(data: Buffer, offset: number): number {
  if (data[offset] !== 0x30) throw new Error(`expected a DER SEQUENCE at byte ${offset}`);
  const first = data[offset + 1];
  if (first === undefined) throw new Error('truncated DER length');
  if (first < 0x80) return 2 + first;
  const octets = first & 0x7f;
  if (octets === 0 || octets > 4 || offset + 2 + octets > data.length) throw new Error('unsupported or truncated DER length');
  let length = 0;
  for (let i = 0; i < octets; i++) length = length * 256 + (data[offset + 2 + i] ?? 0);
  const total = 2 + octets + length;
  if (offset + total > data.length) throw new Error('truncated DER certificate');
  return total;
}

/** Splits a PEM text into DER certificates; throws when it holds none. */
export function pemCertificatesToDer(pem: string): Buffer[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new Error('no PEM certificate found');
  return blocks.map((block) =>
    Buffer.from(block.replace(/-----(BEGIN|END) CERTIFICATE-----/g, '').replace(/\s+/g, ''), 'base64'),
  );
}
