import type { TLSSocket } from 'node:tls';
import type { ValidatedSvid } from '../identity/svid-validator.js';
import type { NodeFrame } from './frames.js';
import { deriveBindingKey, deriveTransportKeys, type SecretBytes, type TransportKeys } from './key-material.js';
import type { LocalIdentity } from './local-identities.js';
import type { HandshakeKind, HandshakeRole } from './protocol.js';
import type { AuthResult } from './types.js';

/** The exporter values of one handshake. */
export interface HandshakeSecrets {
  keyMaterial: SecretBytes;
  transportKeys?: TransportKeys;
}

/** Exports the key material as soon as the TLS handshake is done: once the peer closes, the
 *  session (and with it the exporter secret) is gone. */
export function exportSecrets(socket: TLSSocket, kind: HandshakeKind, role: HandshakeRole): HandshakeSecrets {
  return {
    keyMaterial: deriveBindingKey(socket),
    ...(kind === 'node' && { transportKeys: deriveTransportKeys(socket, role) }),
  };
}

export interface ResultInputs {
  kind: HandshakeKind;
  role: HandshakeRole;
  local: LocalIdentity;
  peer: ValidatedSvid;
  remoteNode: string;
  secrets: HandshakeSecrets;
  /** The peer's node frame (node kind only). */
  peerFrame?: NodeFrame;
  /** The frame this side sent (node kind only). */
  ownFrame?: NodeFrame;
  now: Date;
  maxTtlMs: number;
}

/**
 * One side's AuthResult. Both sides apply the same expiry rule to the same two chains, so their
 * results expire together (up to the moment each computed it, when maxTtl is the smallest bound).
 */
export function buildAuthResult(inputs: ResultInputs): AuthResult {
  const { kind, role, local, peer, remoteNode, secrets, now } = inputs;
  const localNotAfter = local.chainNotAfter;
  const remoteNotAfter = peer.earliestNotAfter;
  const base = {
    role,
    localId: local.id,
    remoteId: peer.id,
    remoteNode,
    localSerial: local.serial,
    remoteSerial: peer.chain[0]!.serialNumber.toLowerCase(),
    authenticatedAt: now,
    localNotAfter,
    remoteNotAfter,
    expiresAt: new Date(Math.min(localNotAfter.getTime(), remoteNotAfter.getTime(), now.getTime() + inputs.maxTtlMs)),
    keyMaterial: secrets.keyMaterial,
  };
  if (kind === 'pair') return { ...base, kind };
  if (!inputs.peerFrame || !inputs.ownFrame || !secrets.transportKeys) throw new Error('a node result needs both frames and the transport keys');
  return { ...base, kind, peerFrame: inputs.peerFrame, ownFrame: inputs.ownFrame, transportKeys: secrets.transportKeys };
}
