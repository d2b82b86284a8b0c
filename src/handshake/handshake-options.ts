import { z } from 'zod';
import { durationMs } from '../util/zod-helpers.js';
import { DEFAULT_PORT } from './protocol.js';

/** The handshake section of the agent config: listener, timeouts, limits, retries. */
export const handshakeOptionsSchema = z.strictObject({
  /** Address the responder listens on. */
  listenAddress: z.union([z.ipv4(), z.ipv6()]).default('0.0.0.0'),
  port: z.number().int().min(0).max(65535).default(DEFAULT_PORT),
  /** Initiator: the local address handshakes are made from (the node address peers resolve); default chosen by routing. */
  sourceAddress: z.union([z.ipv4(), z.ipv6()]).optional(),
  /** Initiator: time to establish the TCP connection. */
  connectTimeout: durationMs.prefault('5s'),
  /** Both sides: time from TCP connect/accept to the end of the frame exchange. */
  handshakeTimeout: durationMs.prefault('5s'),
  /** Upper bound of a recorded pair's lifetime, below the certificates' own. */
  maxTtl: durationMs.prefault('1h'),
  /** Responder: open connections (handshakes in progress) of known peer nodes, all together. */
  maxConnections: z.number().int().min(1).default(1024),
  /** Responder: bytes a client may send before its TLS handshake completes (ClientHello + Certificate flight). */
  maxPreHandshakeBytes: z.number().int().min(4096).default(65_536),
  /** Responder, per known peer node: new connections per second, bucket size, and open connections. */
  rateLimit: z
    .strictObject({
      perSecond: z.number().positive().default(200),
      burst: z.number().int().min(1).default(400),
      maxOpenPerSource: z.number().int().min(1).default(128),
    })
    .prefault({}),
  /**
   * Responder, sources that are no known node's (they can only be refused: a node this agent does
   * not know yet, a scanner): the same limits per address, and open connections of them all
   * together, apart from the peers' maxConnections.
   */
  nonNodeSources: z
    .strictObject({
      perSecond: z.number().positive().default(2),
      burst: z.number().int().min(1).default(4),
      maxOpenPerSource: z.number().int().min(1).default(2),
      maxOpen: z.number().int().min(1).default(32),
    })
    .prefault({}),
  /**
   * Responder, per peer node: node handshakes accepted (each re-keys the transport to that peer).
   * Re-authentication needs one every few tens of minutes; the burst covers crossing handshakes,
   * a trust-bundle change and a peer's restarts. Beyond it a node handshake is refused (retried).
   */
  nodeHandshakes: z
    .strictObject({
      perMinute: z.number().positive().default(6),
      burst: z.number().int().min(1).default(4),
    })
    .prefault({}),
  /** Initiator: handshakes in progress at once; more wait for a slot. */
  maxConcurrentInitiations: z.number().int().min(1).default(64),
  /** Initiator: attempts per authentication for retryable failures, and the backoff between them. */
  retry: z
    .strictObject({
      attempts: z.number().int().min(1).max(10).default(3),
      initialBackoff: durationMs.prefault('200ms'),
      maxBackoff: durationMs.prefault('5s'),
    })
    .prefault({}),
  /** Successful peer-chain validations remembered (0 = off). */
  validationCacheSize: z.number().int().min(0).default(1024),
});

export type HandshakeOptionsInput = z.input<typeof handshakeOptionsSchema>;
export type HandshakeOptions = z.output<typeof handshakeOptionsSchema>;
