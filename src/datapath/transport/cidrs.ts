// Pod CIDRs as the transports use them: validated, in canonical text, and checked so that no
// two peers claim overlapping address space (WireGuard would silently move an allowed-ip to the
// last peer that names it, and XFRM policies would shadow each other: both are traffic theft).
import { DatapathError } from '../errors.js';
import { parseIpPrefix, IpPrefixError, type IpPrefix } from '../ip-prefix.js';

export interface Cidr {
  family: 4 | 6;
  /** Canonical text: host bits cleared, IPv6 in full (uncompressed) groups. */
  text: string;
  prefix: IpPrefix;
}

function formatAddress(prefix: IpPrefix): string {
  if (prefix.family === 4) return [...prefix.address].join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(prefix.address.readUInt16BE(i).toString(16));
  return groups.join(':');
}

/** Parses a CIDR ("10.2.0.0/16", "fd00:2::/32"; a bare address is a host prefix). */
export function parseCidr(text: string, what: string): Cidr {
  let prefix: IpPrefix;
  try {
    prefix = parseIpPrefix(text);
  } catch (err) {
    if (err instanceof IpPrefixError) throw new DatapathError(`${what}: ${err.message}`);
    throw err;
  }
  return { family: prefix.family, text: `${formatAddress(prefix)}/${prefix.length}`, prefix };
}

/** Parses a list, dropping duplicates. */
export function parseCidrs(texts: readonly string[], what: string): Cidr[] {
  if (!Array.isArray(texts)) throw new DatapathError(`${what}: expected a list of CIDRs`);
  const seen = new Map<string, Cidr>();
  for (const text of texts) {
    if (typeof text !== 'string') throw new DatapathError(`${what}: expected a list of CIDRs`);
    const cidr = parseCidr(text, what);
    seen.set(cidr.text, cidr);
  }
  return [...seen.values()];
}

function range(cidr: Cidr): { first: bigint; last: bigint } {
  const bits = BigInt(cidr.prefix.address.length * 8);
  const first = BigInt(`0x${cidr.prefix.address.toString('hex')}`);
  const hostBits = bits - BigInt(cidr.prefix.length);
  return { first, last: first + (1n << hostBits) - 1n };
}

/**
 * Throws when CIDRs of different owners overlap (one contains or equals the other).
 * O(n log n): sorted by first address, a CIDR overlaps an earlier one exactly when it starts
 * before the furthest end seen so far.
 */
export function checkDisjointOwners(entries: readonly { owner: string; cidrs: readonly Cidr[] }[], what: string): void {
  for (const family of [4, 6] as const) {
    const spans = entries
      .flatMap(({ owner, cidrs }) => cidrs.filter((c) => c.family === family).map((cidr) => ({ owner, cidr, ...range(cidr) })))
      .sort((a, b) => (a.first < b.first ? -1 : a.first > b.first ? 1 : 0));
    let widest: (typeof spans)[number] | undefined;
    for (const span of spans) {
      if (widest && span.first <= widest.last && span.owner !== widest.owner) {
        throw new DatapathError(`${what}: ${span.cidr.text} of ${span.owner} overlaps ${widest.cidr.text} of ${widest.owner}`);
      }
      if (!widest || span.last > widest.last) widest = span;
    }
  }
}
