import { timingSafeEqual } from 'node:crypto';
import { inspect } from 'node:util';
import type { TLSSocket } from 'node:tls';
import { ESP_KEY_WITH_SALT_BYTES, EXPORTERS, type HandshakeRole } from './protocol.js';

/**
 * Key bytes that must never reach a log line, a metric or a JSON document: serialising or
 * inspecting one prints a placeholder. Only the code that programs the transport calls reveal().
 */
export class SecretBytes {
  readonly #bytes: Buffer;

  constructor(bytes: Buffer) {
    this.#bytes = Buffer.from(bytes);
  }

  get length(): number {
    return this.#bytes.length;
  }

  reveal(): Buffer {
    return this.#bytes;
  }

  /** Constant-time comparison. */
  equals(other: SecretBytes): boolean {
    const theirs = other.reveal();
    return theirs.length === this.#bytes.length && timingSafeEqual(theirs, this.#bytes);
  }

  toJSON(): string {
    return '[redacted]';
  }

  toString(): string {
    return '[redacted]';
  }

  [inspect.custom](): string {
    return `SecretBytes(${this.#bytes.length} bytes, redacted)`;
  }
}

/** Transport keys of a node pair, from the role's point of view. */
export interface TransportKeys {
  /** The WireGuard preshared key for this peer (32 bytes). */
  wireguardPsk: SecretBytes;
  /** rfc4106(gcm(aes)) key + salt (20 bytes) for the SA this node sends on. */
  espOutbound: SecretBytes;
  /** rfc4106(gcm(aes)) key + salt (20 bytes) for the SA this node receives on. */
  espInbound: SecretBytes;
}

const EMPTY_CONTEXT = Buffer.alloc(0);

function exportKey(socket: TLSSocket, exporter: { label: string; length: number }): Buffer {
  // TLS 1.3 exporter (RFC 8446 §7.5) with an empty context (in TLS 1.3 the same as none): both
  // ends derive the same bytes from this handshake's exporter secret, and nobody else can.
  return socket.exportKeyingMaterial(exporter.length, exporter.label, EMPTY_CONTEXT);
}

/** The handshake binding value recorded with every authenticated pair (AuthResult.keyMaterial). */
export function deriveBindingKey(socket: TLSSocket): SecretBytes {
  return takeSecret(exportKey(socket, EXPORTERS.binding));
}

/** Copies bytes into a SecretBytes and wipes the source buffer. */
function takeSecret(bytes: Buffer): SecretBytes {
  const secret = new SecretBytes(bytes);
  bytes.fill(0);
  return secret;
}

/** The node pair's transport keys; the first ESP half protects initiator → responder traffic. */
export function deriveTransportKeys(socket: TLSSocket, role: HandshakeRole): TransportKeys {
  const esp = exportKey(socket, EXPORTERS.esp);
  const initiatorToResponder = new SecretBytes(esp.subarray(0, ESP_KEY_WITH_SALT_BYTES));
  const responderToInitiator = new SecretBytes(esp.subarray(ESP_KEY_WITH_SALT_BYTES, 2 * ESP_KEY_WITH_SALT_BYTES));
  esp.fill(0);
  return {
    wireguardPsk: takeSecret(exportKey(socket, EXPORTERS.wireguardPsk)),
    espOutbound: role === 'initiator' ? initiatorToResponder : responderToInitiator,
    espInbound: role === 'initiator' ? responderToInitiator : initiatorToResponder,
  };
}
