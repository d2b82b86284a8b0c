import { parseIpPrefix, type IpPrefix } from '../datapath/ip-prefix.js';

/**
 * A node's pod CIDRs, parsed once, answering whether an address lies in one of them: how the
 * cluster state checks that a node vouches only for its own pods' addresses.
 */
export class PodCidrs {
  private readonly prefixes: IpPrefix[];

  constructor(cidrs: readonly string[]) {
    // A CIDR the schema let through but that does not parse contains nothing (fail closed).
    this.prefixes = cidrs.flatMap((cidr) => {
      try {
        return [parseIpPrefix(cidr)];
      } catch {
        return [];
      }
    });
  }

  contains(address: string): boolean {
    let ip: IpPrefix;
    try {
      ip = parseIpPrefix(address);
    } catch {
      return false;
    }
    return this.prefixes.some((prefix) => prefix.family === ip.family && samePrefix(prefix, ip.address));
  }
}

function samePrefix(prefix: IpPrefix, address: Buffer): boolean {
  const whole = Math.floor(prefix.length / 8);
  for (let i = 0; i < whole; i++) if (prefix.address[i] !== address[i]) return false;
  const rest = prefix.length % 8;
  if (rest === 0) return true;
  const mask = (0xff00 >> rest) & 0xff;
  return (prefix.address[whole]! & mask) === (address[whole]! & mask);
}
