import { createHash } from 'node:crypto';
import type { SpiffeId } from '../identity/spiffe-id.js';

// The ClientHello travels in cleartext, so the SNI names the target identity by a hash rather
// than by its SPIFFE ID. The hash hides names from passive observers but is not a secret:
// anyone who can guess an ID can compute its SNI (only Encrypted ClientHello would fix that).
// Format: 52 lowercase base32 characters (the whole SHA-256, one DNS label) under the reserved
// ".invalid" TLD so that it can never resolve or collide with a real host name.
export const SNI_SUFFIX = '.meshauth.invalid';
const DOMAIN_SEPARATOR = 'meshauth-sni/1\0';
const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

export function sniForIdentity(id: SpiffeId | string): string {
  const digest = createHash('sha256').update(DOMAIN_SEPARATOR + id.toString()).digest();
  return base32(digest) + SNI_SUFFIX;
}

function base32(bytes: Buffer): string {
  let out = '';
  let buffer = 0;
  let bits = 0;
  for (const byte of bytes) {
    buffer = (buffer << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(buffer >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += BASE32[(buffer << (5 - bits)) & 31];
  return out;
}
