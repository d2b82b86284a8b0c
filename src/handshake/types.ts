import type { SpiffeId } from '../identity/spiffe-id.js';
import type { NodeFrame } from './frames.js';
import type { SecretBytes, TransportKeys } from './key-material.js';
import type { HandshakeKind, HandshakeRole } from './protocol.js';

interface AuthResultBase {
  kind: HandshakeKind;
  role: HandshakeRole;
  localId: SpiffeId;
  remoteId: SpiffeId;
  /** The peer's node: resolved from the source address (responder) or the caller's target (initiator). */
  remoteNode: string;
  /** Hex serial numbers of the two leaves that authenticated. */
  localSerial: string;
  remoteSerial: string;
  authenticatedAt: Date;
  /** Earliest notAfter of the local chain presented. */
  localNotAfter: Date;
  /** Earliest notAfter of the peer's validated chain. */
  remoteNotAfter: Date;
  /** min(localNotAfter, remoteNotAfter, authenticatedAt + maxTtl): both sides compute the same rule. */
  expiresAt: Date;
  /** TLS exporter value (EXPORTER-meshauth-binding) both sides of this handshake share. */
  keyMaterial: SecretBytes;
}

export interface PairAuthResult extends AuthResultBase {
  kind: 'pair';
}

export interface NodeAuthResult extends AuthResultBase {
  kind: 'node';
  /** What the peer node said about itself (validated against its certificate and address). */
  peerFrame: NodeFrame;
  /** What this side said about itself in the same handshake (its SPIs belong with these keys). */
  ownFrame: NodeFrame;
  transportKeys: TransportKeys;
}

/** One handshake authenticates both directions: the initiator and the responder each produce
 *  one of these, with local and remote mirrored. */
export type AuthResult = PairAuthResult | NodeAuthResult;

/** Receives every successful authentication (the auth cache records them). Must not throw. */
export type AuthSink = (result: AuthResult) => void;

export interface AuthorizeRequest {
  kind: HandshakeKind;
  remoteId: SpiffeId;
  localId: SpiffeId;
  remoteNode: string;
}

/** Where to reach a peer agent. */
export interface PeerAddress {
  host: string;
  /** Default 4250. */
  port?: number;
}
