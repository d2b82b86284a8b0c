/** What started the authentication of a pair: its policy (proactive), a gate signal (on-demand),
 *  its coming expiry (reauth), an SVID rotation, a trust-bundle change, the pinned map read at
 *  start (restored), or a handshake the peer initiated (responder). */
export type AuthTrigger = 'proactive' | 'on-demand' | 'reauth' | 'rotation' | 'bundle-change' | 'restored' | 'responder';

export type PairState = 'authenticated' | 'pending' | 'failed';

/** What became of an "authentication required" signal from the gate, once the agent read it:
 *  handled (an authentication was started), deduplicated (one was already running or the pair is
 *  authenticated), unresolved (a numeric identity or node the agent does not know) or dropped (the
 *  agent was over its limit of pending authentications). */
export type SignalStatus = 'handled' | 'deduplicated' | 'unresolved' | 'dropped';

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

/** A pair as the agent's status reports it (JSON: times as ISO strings). */
export interface PairStatus {
  localId: string;
  remoteId: string;
  remoteNode: string;
  state: PairState;
  /** When the pair stops passing traffic (absent while pending). */
  expiresAt?: string;
  lastAuthenticatedAt?: string;
  trigger?: AuthTrigger;
  /** Failure class of the last attempt, when it failed. */
  lastError?: string;
}
