// IP prefixes ("10.0.0.0/8", "fd00::1", "fd00::/64") as the bytes the ipcache LPM trie keys on.
import { isIPv4, isIPv6 } from 'node:net';

export interface IpPrefix {
  family: 4 | 6;
  /** 4 or 16 bytes, network order, host bits cleared. */
  address: Buffer;
  /** Prefix length in bits. */
  length: number;
}

export class IpPrefixError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'IpPrefixError';
  }
}

/** Parses an address or CIDR prefix; a bare address is a host prefix (/32 or /128). */
export function parseIpPrefix(text: string): IpPrefix {
  const slash = text.indexOf('/');
  const ip = slash === -1 ? text : text.slice(0, slash);
  let family: 4 | 6;
  let address: Buffer;
  if (isIPv4(ip)) {
    family = 4;
    address = Buffer.from(ip.split('.').map(Number));
  } else if (isIPv6(ip)) {
    family = 6;
    address = ipv6Bytes(ip);
  } else {
    throw new IpPrefixError(`not an IP address or prefix: ${JSON.stringify(text)}`);
  }
  const maxLength = address.length * 8;
  let length = maxLength;
  if (slash !== -1) {
    const lengthText = text.slice(slash + 1);
    if (!/^\d{1,3}$/.test(lengthText) || Number(lengthText) > maxLength) {
      throw new IpPrefixError(`bad prefix length in ${JSON.stringify(text)} (0-${maxLength})`);
    }
    length = Number(lengthText);
  }
  clearHostBits(address, length);
  return { family, address, length };
}

function clearHostBits(address: Buffer, length: number): void {
  for (let i = 0; i < address.length; i++) {
    const keep = Math.max(0, Math.min(8, length - i * 8));
    address[i] = address[i]! & ((0xff00 >> keep) & 0xff);
  }
}

// Only called on strings node:net accepted as IPv6, so the shape is known to be valid.
function ipv6Bytes(ip: string): Buffer {
  const zone = ip.indexOf('%');
  const bare = zone === -1 ? ip : ip.slice(0, zone);
  const [head = '', tail] = bare.split('::');
  const groups = (part: string): number[] => {
    if (part === '') return [];
    return part.split(':').flatMap((group) => {
      if (group.includes('.')) {
        const [a, b, c, d] = group.split('.').map(Number) as [number, number, number, number];
        return [(a << 8) | b, (c << 8) | d];
      }
      return [parseInt(group, 16)];
    });
  };
  const first = groups(head);
  const last = tail === undefined ? [] : groups(tail);
  const all = [...first, ...new Array<number>(8 - first.length - last.length).fill(0), ...last];
  const bytes = Buffer.alloc(16);
  all.forEach((group, i) => bytes.writeUInt16BE(group, i * 2));
  return bytes;
}
