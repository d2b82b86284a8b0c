import type { AuthTrigger } from '../agent/status.js';

export type { AuthTrigger };

/** An authenticated identity pair, by name. */
export interface PairKey {
  localId: string;
  remoteId: string;
  /** The node the remote identity's endpoint is on (the local node for same-node pairs). */
  remoteNode: string;
}

export interface CachedPair extends PairKey {
  /** Wall-clock ms: when the pair stops passing traffic. */
  expiresAt: number;
  /** Wall-clock ms of the handshake that authenticated it. */
  authenticatedAt: number;
  localNotAfter: number;
  remoteNotAfter: number;
  trigger: AuthTrigger;
  /** Transport epoch of the remote node's link when the pair was written (0: same node). */
  epoch: number;
}

/** A desired pair carrying its key string, so that the desired set, the cache and the scheduler
 *  share one string per pair instead of each building their own (it matters at 100,000 pairs). */
export interface KeyedPair extends PairKey {
  readonly key: string;
}

export function keyed(pair: PairKey): KeyedPair {
  return { localId: pair.localId, remoteId: pair.remoteId, remoteNode: pair.remoteNode, key: pairKeyString(pair) };
}

export function pairKeyString(key: PairKey): string {
  return `${key.localId}\n${key.remoteId}\n${key.remoteNode}`;
}
