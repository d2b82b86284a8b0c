// A remote node of the IPsec transport: what the caller hands in (IpsecPeer), its checked form
// holding private copies of the keys (PeerSpec), and the XFRM policies it needs.
import { isIP } from 'node:net';
import { DatapathError } from '../errors.js';
import { parseCidr, parseCidrs, type Cidr } from './cidrs.js';
import { copyKey, type KeyInput } from './keys.js';
import type { PolicySpec, SaId } from './xfrm.js';

/** rfc4106(gcm(aes)) key material: a 128-bit AES key followed by the 4-byte salt. */
export const ESP_KEY_BYTES = 20;
/** RFC 4303: SPIs 1-255 are reserved, 0 means none. */
export const MIN_SPI = 256;

export interface IpsecPeer {
  /** The remote node, as the authenticated node handshake named it. */
  nodeName: string;
  /** This node's and the remote node's addresses: the tunnel endpoints. */
  localAddress: string;
  remoteAddress: string;
  /** Pod CIDRs of this node and of the remote node: the traffic the policies select. */
  localCidrs: string[];
  remoteCidrs: string[];
  /** The SPI this node allocated (allocateSpis) and sent in its frame: the peer sends on it. */
  inSpi: number;
  /** The SPI the peer allocated and sent in its frame: this node sends on it. */
  outSpi: number;
  /** 20 bytes each from the handshake's TLS exporter: the peer's outKey is this node's inKey. */
  inKey: KeyInput;
  outKey: KeyInput;
}

export interface PeerSpec {
  nodeName: string;
  local: string;
  remote: string;
  localCidrs: Cidr[];
  remoteCidrs: Cidr[];
  inSa: SaId;
  outSa: SaId;
  inKey: Buffer;
  outKey: Buffer;
}

const NODE_NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;

function checkSpi(spi: number, what: string): number {
  if (!Number.isInteger(spi) || spi < MIN_SPI || spi > 0xffff_ffff) throw new DatapathError(`${what}: SPI must be an integer in ${MIN_SPI}-4294967295, got ${spi}`);
  return spi;
}

/** Validates a peer and takes private copies of its keys. */
export function peerSpec(peer: IpsecPeer): PeerSpec {
  if (typeof peer !== 'object' || peer === null) throw new DatapathError('IPsec peer: expected an object');
  const { nodeName } = peer;
  if (typeof nodeName !== 'string' || !NODE_NAME.test(nodeName)) throw new DatapathError(`IPsec peer: bad node name ${JSON.stringify(nodeName)}`);
  const what = `IPsec peer ${nodeName}`;
  const family = isIP(peer.localAddress);
  if (family === 0) throw new DatapathError(`${what}: local address ${JSON.stringify(peer.localAddress)} is not an IP address`);
  if (isIP(peer.remoteAddress) !== family) throw new DatapathError(`${what}: remote address ${JSON.stringify(peer.remoteAddress)} is not an IPv${family} address like the local one`);
  const local = parseCidr(peer.localAddress, `${what} local address`).text.split('/')[0]!;
  const remote = parseCidr(peer.remoteAddress, `${what} remote address`).text.split('/')[0]!;
  if (local === remote) throw new DatapathError(`${what}: local and remote address are the same`);
  return {
    nodeName,
    local,
    remote,
    localCidrs: parseCidrs(peer.localCidrs, `${what} local CIDRs`),
    remoteCidrs: parseCidrs(peer.remoteCidrs, `${what} remote CIDRs`),
    inSa: { src: remote, dst: local, spi: checkSpi(peer.inSpi, `${what} inSpi`) },
    outSa: { src: local, dst: remote, spi: checkSpi(peer.outSpi, `${what} outSpi`) },
    inKey: copyKey(peer.inKey, ESP_KEY_BYTES, `${what} inKey`),
    outKey: copyKey(peer.outKey, ESP_KEY_BYTES, `${what} outKey`),
  };
}

/** The out, in and fwd policies of every same-family pair of (local CIDR, remote CIDR). */
export function policiesOf(spec: PeerSpec, reqid: number): PolicySpec[] {
  const policies: PolicySpec[] = [];
  for (const local of spec.localCidrs) {
    for (const remote of spec.remoteCidrs) {
      if (local.family !== remote.family) continue;
      policies.push({ src: local.text, dst: remote.text, dir: 'out', tmplSrc: spec.local, tmplDst: spec.remote, reqid });
      for (const dir of ['in', 'fwd'] as const) policies.push({ src: remote.text, dst: local.text, dir, tmplSrc: spec.remote, tmplDst: spec.local, reqid });
    }
  }
  return policies;
}

export const sameSa = (a: SaId, b: SaId) => a.src === b.src && a.dst === b.dst && a.spi === b.spi;

/** Zeroes the peer's private copies of its keys once it no longer needs them. */
export function wipe(peer: PeerSpec): void {
  peer.inKey.fill(0);
  peer.outKey.fill(0);
}
