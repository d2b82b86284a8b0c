// Pairs as a node sees them, and the agent's own cache and manager holding them over a real
// pinned map: what every figure of the agent benchmark measures. No handshake runs: pairs are
// recorded as a successful handshake would report them.
import { authOptionsSchema } from '../../src/auth/options.js';
import { AuthCache } from '../../src/auth/cache.js';
import { AuthManager, type AuthManagerOptions, type PairAuthentication } from '../../src/auth/manager.js';
import type { NumericIds } from '../../src/auth/numeric-ids.js';
import { pairKeyString, type PairKey } from '../../src/auth/types.js';
import type { Datapath } from '../../src/datapath/gate/datapath.js';
import type { AuthKey } from '../../src/datapath/gate/layout.js';
import { silentLogger } from '../../src/util/logger.js';

/** Pairs a node holds for the memory, restore and revocation figures. */
export const HELD_PAIRS = 100_000;
/** Pairs authenticated at one instant for the re-authentication spread (and the small revocation run). */
export const REAUTH_PAIRS = 10_000;

export const TD = 'bench.test';
export const LOCAL_NODE = 'node-000';
/** SVID lifetime (the dev provider's default): a pair expires with its certificates. */
export const LIFETIME_MS = 3_600_000;
const AUTH = authOptionsSchema.parse({});
/** The agent's default timing, as the config schema sets it. */
export const TIMING: AuthManagerOptions['timing'] = {
  fraction: AUTH.reauthFraction,
  jitter: AUTH.reauthJitter,
  failureBackoff: { initialMs: AUTH.failureBackoff.initial, maxMs: AUTH.failureBackoff.max },
  proactiveGraceMs: AUTH.proactiveGrace,
};

// ---- pairs as a node sees them ----

const LOCAL_IDENTITIES = 100;
const REMOTE_NODES = 100;

/**
 * `count` pairs between 100 local identities and count/100 remote identities spread over 100
 * nodes, with one string per identity shared by all its pairs, as the agent's plan builds them.
 */
export function benchPairs(count: number): PairKey[] {
  const locals = Array.from({ length: LOCAL_IDENTITIES }, (_, i) => `spiffe://${TD}/ns/team-${i % 10}/sa/frontend-${i}`);
  const remotes = Array.from({ length: Math.ceil(count / LOCAL_IDENTITIES) }, (_, j) => ({
    id: `spiffe://${TD}/ns/team-${j % 50}/sa/backend-${j}`,
    node: `node-${String(1 + (j % REMOTE_NODES)).padStart(3, '0')}`,
  }));
  return Array.from({ length: count }, (_, i) => {
    const remote = remotes[Math.floor(i / LOCAL_IDENTITIES)]!;
    return { localId: locals[i % LOCAL_IDENTITIES]!, remoteId: remote.id, remoteNode: remote.node };
  });
}

/** What a successful handshake at `at` reports: valid for the certificates' lifetime. */
export function authenticated(pair: PairKey, at: number): PairAuthentication {
  const notAfter = at + LIFETIME_MS;
  return { ...pair, authenticatedAt: at, expiresAt: notAfter, localNotAfter: notAfter, remoteNotAfter: notAfter };
}

/** The agent's cache and manager over a real map; pairs are recorded directly, no handshake runs. */
export function benchManager(datapath: Datapath, ids: NumericIds): { cache: AuthCache; manager: AuthManager } {
  const logger = silentLogger();
  const cache = new AuthCache({ map: datapath, ids, capacity: AUTH.cacheSize, logger });
  const link = { expiresAt: Number.POSITIVE_INFINITY, epoch: 1 };
  const manager = new AuthManager({
    cache,
    localNode: LOCAL_NODE,
    timing: TIMING,
    logger,
    proactive: () => false,
    authenticate: () => Promise.reject(new Error('this bench runs no handshakes')),
    authenticateLocal: () => undefined,
    nodeLink: () => link,
  });
  return { cache, manager };
}

export function recordAll(manager: AuthManager, pairs: readonly PairKey[], at: number): void {
  manager.setDesired(pairs);
  for (const pair of pairs) {
    if (!manager.record(authenticated(pair, at), 'proactive')) throw new Error(`pair not recorded: ${pairKeyString(pair)}`);
  }
}

export function authKeyOf(ids: NumericIds, pair: PairKey): AuthKey {
  return { localIdentity: ids.identity(pair.localId), remoteIdentity: ids.identity(pair.remoteId), remoteNode: ids.node(pair.remoteNode) };
}
