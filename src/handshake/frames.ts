// The one frame each side sends after the TLS handshake: its verdict on the peer, and for the
// node kind its node description. Frames are a 2-byte big-endian length and UTF-8 JSON, checked
// against a strict schema; anything else, bigger or trailing is a protocol failure.
import { isIPv4, isIPv6 } from 'node:net';
import type { Duplex } from 'node:stream';
import { z } from 'zod';
import { HandshakeFailure, classifySocketError } from './failure.js';
import { FAILURE_CLASSES, FRAME_HEADER_BYTES, MAX_FRAME_BYTES, type FailureClass, type HandshakeKind } from './protocol.js';

const MAX_LIST = 16;

/** Kubernetes node names are RFC 1123 DNS subdomains; they also fit a SPIFFE path segment. */
const nodeName = z
  .string()
  .min(1)
  .max(253)
  .regex(/^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$/, 'not an RFC 1123 node name');

const wireguardPublicKey = z
  .base64()
  .refine((text) => Buffer.from(text, 'base64').length === 32, 'a WireGuard public key is 32 bytes');

/**
 * IPv4:port or [IPv6]:port, never a DNS name: `wg set` would resolve a name, with retries, on the
 * one queue that programs every peer, so one peer could stall every other peer's re-key.
 */
const endpoint = z
  .string()
  .max(64)
  .refine((text) => {
    const match = /^(?:\[([0-9a-fA-F:.]+)\]|([0-9.]+)):(\d{1,5})$/.exec(text);
    if (!match) return false;
    const addressOk = match[1] !== undefined ? isIPv6(match[1]) : isIPv4(match[2]!);
    return addressOk && Number(match[3]) <= 65535;
  }, 'expected an IP literal endpoint: IPv4:port or [IPv6]:port');

export const nodeFrameSchema = z.strictObject({
  nodeName,
  wireguard: z.strictObject({ publicKey: wireguardPublicKey, endpoint: endpoint.optional() }).optional(),
  podCidrs: z.array(z.union([z.cidrv4(), z.cidrv6()])).max(MAX_LIST),
  /** Inbound ESP SPIs the sender allocated for this peer; 1-255 are reserved (RFC 4303). */
  ipsecSpis: z.array(z.number().int().min(256).max(0xffff_ffff)).max(MAX_LIST).optional(),
});

/** What a node tells its peer about itself in a node handshake. */
export type NodeFrame = z.infer<typeof nodeFrameSchema>;

const verdictSchema = z.discriminatedUnion('verdict', [
  z.strictObject({ v: z.literal(1), verdict: z.literal('accept'), node: nodeFrameSchema.optional() }),
  z.strictObject({ v: z.literal(1), verdict: z.literal('reject'), reason: z.enum(FAILURE_CLASSES) }),
]);

export type Verdict = { verdict: 'accept'; node?: NodeFrame } | { verdict: 'reject'; reason: FailureClass };

export function encodeVerdict(verdict: Verdict): Buffer {
  const payload = Buffer.from(JSON.stringify({ v: 1, ...verdict }), 'utf8');
  if (payload.length > MAX_FRAME_BYTES) throw new HandshakeFailure('protocol', `frame of ${payload.length} bytes exceeds ${MAX_FRAME_BYTES}`);
  const header = Buffer.alloc(FRAME_HEADER_BYTES);
  header.writeUInt16BE(payload.length);
  return Buffer.concat([header, payload]);
}

export function decodeVerdict(payload: Buffer): Verdict {
  let json: unknown;
  try {
    json = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new HandshakeFailure('protocol', 'frame is not JSON');
  }
  const parsed = verdictSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new HandshakeFailure('protocol', `malformed frame: ${issue ? `${issue.path.join('.') || '(top level)'}: ${issue.message}` : 'invalid'}`);
  }
  const { v: _version, ...verdict } = parsed.data;
  return verdict;
}

/**
 * The peer's verdict as a success or a failure: a reject carries the peer's failure class; an
 * accept must carry a node description exactly for the node kind, naming the node expected.
 */
export function acceptedPeerFrame(kind: HandshakeKind, verdict: Verdict, expectedNode: string, peer: string): NodeFrame | undefined {
  if (verdict.verdict === 'reject') throw new HandshakeFailure(verdict.reason, `the ${peer} rejected this side`, { peerReported: true });
  if (kind === 'pair') {
    if (verdict.node) throw new HandshakeFailure('protocol', 'pair handshake accept frame with a node description');
    return undefined;
  }
  if (!verdict.node) throw new HandshakeFailure('protocol', 'node handshake accept frame without a node description');
  if (verdict.node.nodeName !== expectedNode) {
    throw new HandshakeFailure('unauthorized', `the ${peer} says it is node ${verdict.node.nodeName}, its certificate says ${expectedNode}`);
  }
  return verdict.node;
}

/** This node's own frame, checked against the schema and its own node name before it is sent:
 *  a frame the peer would refuse is a local fault, and must not leave one side recorded. */
export function checkedOwnFrame(produce: () => NodeFrame, ownNodeName: string | undefined): NodeFrame {
  let frame: NodeFrame;
  try {
    frame = nodeFrameSchema.parse(produce());
  } catch (err) {
    throw new HandshakeFailure('protocol', `no valid local node frame to send: ${(err as Error).message}`, { cause: err });
  }
  if (frame.nodeName !== ownNodeName) {
    throw new HandshakeFailure('protocol', `the local node frame names ${frame.nodeName}, the node identity says ${ownNodeName ?? 'no node name'}`);
  }
  return frame;
}

/**
 * Reads exactly one frame from a secured socket. The peer sends one frame and then closes, so
 * bytes after the frame, a frame over the size cap, or a close before the frame is complete are
 * protocol failures. The caller's deadline bounds the wait (it destroys the socket).
 */
export function readFrame(socket: Duplex, maxBytes = MAX_FRAME_BYTES): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let buffered: Buffer = Buffer.alloc(0);
    const finish = (outcome: Buffer | HandshakeFailure): void => {
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onEnd);
      socket.off('error', onError);
      if (outcome instanceof HandshakeFailure) reject(outcome);
      else resolve(outcome);
    };
    const onData = (chunk: Buffer): void => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      if (buffered.length < FRAME_HEADER_BYTES) return;
      const length = buffered.readUInt16BE(0);
      if (length === 0 || length > maxBytes) return finish(new HandshakeFailure('protocol', `peer frame length ${length} is outside 1..${maxBytes}`));
      const total = FRAME_HEADER_BYTES + length;
      if (buffered.length < total) return;
      if (buffered.length > total) return finish(new HandshakeFailure('protocol', 'peer sent data after its frame'));
      socket.pause();
      finish(buffered.subarray(FRAME_HEADER_BYTES));
    };
    const onEnd = (): void => finish(new HandshakeFailure('protocol', 'connection closed before the peer frame was complete'));
    const onError = (err: unknown): void => finish(classifySocketError(err, true));
    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onEnd);
    socket.on('error', onError);
  });
}
