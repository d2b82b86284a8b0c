// Trust bundles as the gRPC identity APIs send them: a map from trust domain to the
// concatenated DER of its CA certificates. The Workload API keys the map by the trust domain's
// SPIFFE ID ("spiffe://example.org", as SPIRE sends it); SPIRE's Delegated Identity API
// documents the bare name but SPIRE sends the SPIFFE ID there too. Both forms are accepted
// and normalised to the bare name, which is what RawBundles and the trust bundle set use.
import { splitConcatenatedDer } from '../bundle-set.js';
import { SpiffeId } from '../spiffe-id.js';
import type { RawBundles } from '../types.js';

/** "spiffe://example.org" or "example.org" → "example.org"; throws on anything else. */
export function trustDomainFromBundleKey(key: string): string {
  if (key.startsWith('spiffe://')) {
    const id = SpiffeId.parse(key);
    if (!id.isTrustDomainId) throw new Error(`bundle key ${key} is a SPIFFE ID with a path, not a trust domain`);
    return id.trustDomain;
  }
  SpiffeId.checkTrustDomain(key);
  return key;
}

/** Adds each entry of a trust domain → concatenated DER map to `into`; throws naming the bad entry. */
export function addDerBundles(into: RawBundles, map: Record<string, Buffer>): RawBundles {
  for (const [key, der] of Object.entries(map)) {
    let trustDomain: string;
    try {
      trustDomain = trustDomainFromBundleKey(key);
    } catch (err) {
      throw new Error(`bundle key "${key}" is not a trust domain: ${(err as Error).message}`);
    }
    into.set(trustDomain, splitBundle(trustDomain, der));
  }
  return into;
}

/** Splits one trust domain's concatenated DER bundle; throws when it is empty or cut short. */
export function splitBundle(trustDomain: string, der: Buffer): Buffer[] {
  if (der.length === 0) throw new Error(`the bundle of ${trustDomain} is empty`);
  try {
    return splitConcatenatedDer(der);
  } catch (err) {
    throw new Error(`the bundle of ${trustDomain} is not concatenated DER: ${(err as Error).message}`);
  }
}

/** The union of bundle states: a CA is trusted when any of the states holds it. */
export function mergeBundles(states: readonly RawBundles[]): RawBundles {
  const merged: RawBundles = new Map();
  for (const state of states) {
    for (const [trustDomain, certs] of state) {
      const known = merged.get(trustDomain) ?? [];
      for (const cert of certs) if (!known.some((existing) => existing.equals(cert))) known.push(cert);
      merged.set(trustDomain, known);
    }
  }
  return merged;
}
