// The wire constants of the meshauth handshake protocol. docs/protocol.md is the prose form of
// this file; change both together, and bump the ALPN version for anything a peer would notice.

export type HandshakeKind = 'pair' | 'node';
export type HandshakeRole = 'initiator' | 'responder';

/** ALPN protocol IDs: the kind of handshake is chosen in the ClientHello, never after it. */
export const ALPN: Readonly<Record<HandshakeKind, string>> = {
  pair: 'meshauth-pair/1',
  node: 'meshauth-node/1',
};

export function kindOfAlpn(alpn: string | false | null | undefined): HandshakeKind | undefined {
  if (alpn === ALPN.pair) return 'pair';
  if (alpn === ALPN.node) return 'node';
  return undefined;
}

export const DEFAULT_PORT = 4250;

/** RFC 8446 §7.5 exporter labels and output lengths. Every value comes from the handshake it
 *  authenticates, so material can never be reused across handshakes. */
export const EXPORTERS = {
  /** AuthResult.keyMaterial of both kinds: binds a recorded pair to the handshake that proved it. */
  binding: { label: 'EXPORTER-meshauth-binding', length: 32 },
  /** WireGuard preshared key of the node pair (Noise IKpsk2 mixes it into every WG handshake). */
  wireguardPsk: { label: 'EXPORTER-meshauth-wireguard-psk', length: 32 },
  /** ESP rfc4106(gcm(aes)) keys: bytes 0-19 protect initiator → responder, bytes 20-39
   *  responder → initiator; each 20 is a 128-bit AES key followed by the 4-byte salt. */
  esp: { label: 'EXPORTER-meshauth-esp', length: 40 },
} as const;

export const ESP_KEY_WITH_SALT_BYTES = 20;

/** Frames are a 2-byte big-endian length followed by that many bytes of UTF-8 JSON. */
export const FRAME_HEADER_BYTES = 2;
export const MAX_FRAME_BYTES = 8192;

/**
 * Why a handshake failed, as logs, metrics and the reject frame name it:
 * - timeout: connect, TLS handshake or frame exchange took longer than allowed;
 * - refused: no TCP connection, or the peer closed it before or during the TLS handshake;
 * - bad_certificate / untrusted / expired: the certificate chain failed X509-SVID validation
 *   (the validator's failure classes; a missing certificate or the wrong SPIFFE ID is bad_certificate);
 * - unknown_identity: the responder holds no SVID for the requested identity (unknown SNI), or
 *   the identity does not fit the kind (a workload for `node`, the node identity for `pair`);
 * - unauthorized: valid certificate, but the peer may not authenticate here: unknown source
 *   node, node name mismatch, or the authorization policy said no;
 * - protocol: anything else that breaks the protocol (TLS version, ALPN, resumption, a malformed
 *   or oversized frame, a connection closed mid-exchange).
 */
export const FAILURE_CLASSES = [
  'timeout',
  'refused',
  'bad_certificate',
  'untrusted',
  'expired',
  'unknown_identity',
  'unauthorized',
  'protocol',
] as const;
export type FailureClass = (typeof FAILURE_CLASSES)[number];

/** Failures the initiator retries with backoff: the peer may be restarting, overloaded, or not yet
 *  holding the target's SVID. Certificate, trust and policy failures stay failed until identity,
 *  bundle or policy state changes, and those changes trigger a new authentication by themselves. */
export const RETRYABLE_FAILURES: ReadonlySet<FailureClass> = new Set<FailureClass>(['timeout', 'refused', 'protocol', 'unknown_identity']);
