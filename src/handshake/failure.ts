import { SvidError } from '../identity/svid-errors.js';
import type { FailureClass } from './protocol.js';

/** A classified handshake failure. `detail` is for logs (never key material); `peerReported` is
 *  set when the class came from the peer's reject frame rather than from a local check. */
export class HandshakeFailure extends Error {
  readonly peerReported: boolean;

  constructor(
    readonly failureClass: FailureClass,
    readonly detail: string,
    options?: { cause?: unknown; peerReported?: boolean },
  ) {
    super(`${failureClass}: ${detail}`, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'HandshakeFailure';
    this.peerReported = options?.peerReported ?? false;
  }
}

/** A validator rejection as a handshake failure of the validator's class. */
export function fromSvidError(err: unknown, whose: string): HandshakeFailure {
  if (err instanceof SvidError) return new HandshakeFailure(err.failureClass, `${whose} certificate rejected (${err.reason}): ${err.message}`, { cause: err });
  return new HandshakeFailure('bad_certificate', `${whose} certificate rejected: ${(err as Error).message}`, { cause: err });
}

const REFUSED_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EHOSTDOWN', 'ECONNABORTED', 'EADDRNOTAVAIL']);

/**
 * Classifies an error from a TLS socket. `secured` tells whether the TLS handshake had completed:
 * a reset before that is a refusal (rate limit, capacity, a restarting agent), after it a broken
 * exchange. A handshake_failure alert is what a meshauth responder sends when it holds no
 * certificate for the requested SNI (see docs/protocol.md), so it means unknown_identity.
 */
export function classifySocketError(err: unknown, secured: boolean): HandshakeFailure {
  if (err instanceof HandshakeFailure) return err;
  const code = (err as NodeJS.ErrnoException | undefined)?.code ?? '';
  const message = (err as Error | undefined)?.message ?? String(err);
  if (code === 'ETIMEDOUT' || code === 'ERR_TLS_HANDSHAKE_TIMEOUT') return new HandshakeFailure('timeout', message, { cause: err });
  if (/ALERT_HANDSHAKE_FAILURE$/.test(code)) {
    return new HandshakeFailure('unknown_identity', 'the responder has no certificate for the requested identity (handshake_failure alert)', { cause: err });
  }
  if (code.startsWith('ERR_SSL_') || code.startsWith('ERR_TLS_')) return new HandshakeFailure('protocol', message, { cause: err });
  if (!secured && (REFUSED_CODES.has(code) || /disconnected before secure TLS connection/.test(message))) {
    return new HandshakeFailure('refused', message, { cause: err });
  }
  return new HandshakeFailure('protocol', message, { cause: err });
}
