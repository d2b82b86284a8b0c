import test from 'ava';
import { AuthCache, type AuthMap } from '../src/auth/cache.js';
import { AuthManager, type PairAuthentication } from '../src/auth/manager.js';
import { MemoryAuthMap } from '../src/auth/memory-map.js';
import { NumericIds } from '../src/auth/numeric-ids.js';
import { keyed, type PairKey } from '../src/auth/types.js';
import { silentLogger } from '../src/util/logger.js';

// setDesired removes what left the desired set without scanning the whole cache; these pin down
// that nothing undesired survives in the map, including pairs restored after a restart.

const TIMING = { fraction: 2 / 3, jitter: 0.2, failureBackoff: { initialMs: 1000, maxMs: 60_000 }, proactiveGraceMs: 2000 };
const id = (name: string) => `spiffe://example.org/ns/shop/sa/${name}`;
const WEB_DB: PairKey = { localId: id('web'), remoteId: id('db'), remoteNode: 'node-b' };
const WEB_CACHE: PairKey = { localId: id('web'), remoteId: id('cache'), remoteNode: 'node-b' };
const API_DB: PairKey = { localId: id('api'), remoteId: id('db'), remoteNode: 'node-c' };

function manager(cache: AuthCache): AuthManager {
  return new AuthManager({
    cache,
    localNode: 'node-a',
    timing: TIMING,
    logger: silentLogger(),
    proactive: () => false,
    authenticate: () => Promise.reject(new Error('no handshakes in this test')),
    authenticateLocal: () => undefined,
    nodeLink: () => ({ expiresAt: Number.POSITIVE_INFINITY, epoch: 1 }),
  });
}

function authenticated(pair: PairKey, at = Date.now()): PairAuthentication {
  return { ...pair, authenticatedAt: at, expiresAt: at + 3_600_000, localNotAfter: at + 3_600_000, remoteNotAfter: at + 3_600_000 };
}

function mapHolds(map: AuthMap, ids: NumericIds, pair: PairKey): boolean {
  return map.dumpAuth().some(
    (entry) =>
      entry.key.localIdentity === ids.identity(pair.localId) &&
      entry.key.remoteIdentity === ids.identity(pair.remoteId) &&
      entry.key.remoteNode === ids.node(pair.remoteNode),
  );
}

test('a pair dropped from the desired set loses its map entry at once; the others keep theirs', async (t) => {
  const map = new MemoryAuthMap();
  const ids = await NumericIds.load();
  const cache = new AuthCache({ map, ids, capacity: 64, logger: silentLogger() });
  const auth = manager(cache);
  auth.setDesired([WEB_DB, WEB_CACHE, API_DB]);
  for (const pair of [WEB_DB, WEB_CACHE, API_DB]) t.true(auth.record(authenticated(pair), 'proactive'));
  t.is(map.dumpAuth().length, 3);

  auth.setDesired([WEB_DB, API_DB]);
  t.false(mapHolds(map, ids, WEB_CACHE));
  t.true(mapHolds(map, ids, WEB_DB));
  t.true(mapHolds(map, ids, API_DB));
  t.is(cache.size, 2);
  // Gone for good: a late handshake result for it is not recorded.
  t.false(auth.record(authenticated(WEB_CACHE), 'responder'));
  t.false(mapHolds(map, ids, WEB_CACHE));

  auth.setDesired([]);
  t.is(map.dumpAuth().length, 0);
  t.is(cache.size, 0);
  auth.stop();
});

test('pairs restored from the pinned map that nobody desires any more are removed by the first setDesired', async (t) => {
  // What the previous agent left in the pinned map, with the numbering it persisted.
  const map = new MemoryAuthMap();
  const ids = await NumericIds.load();
  const expiryNs = process.hrtime.bigint() + 3_600_000_000_000n;
  for (const pair of [WEB_DB, WEB_CACHE, API_DB]) {
    map.setAuth({ localIdentity: ids.identity(pair.localId), remoteIdentity: ids.identity(pair.remoteId), remoteNode: ids.node(pair.remoteNode) }, expiryNs);
  }
  // The agent's start: restore, then the manager adopts the restored pairs, then the first plan.
  const cache = new AuthCache({ map, ids, capacity: 64, logger: silentLogger() });
  const restored = cache.restore();
  t.is(restored.length, 3);
  const auth = manager(cache);
  auth.adoptRestored(restored);
  auth.setDesired([WEB_DB]);
  t.true(mapHolds(map, ids, WEB_DB));
  t.false(mapHolds(map, ids, WEB_CACHE));
  t.false(mapHolds(map, ids, API_DB));
  t.is(cache.size, 1);
  auth.stop();
});

test('changeDesired (the incremental plan) adds and revokes like setDesired, restored pairs included', async (t) => {
  const map = new MemoryAuthMap();
  const ids = await NumericIds.load();
  const expiryNs = process.hrtime.bigint() + 3_600_000_000_000n;
  map.setAuth({ localIdentity: ids.identity(API_DB.localId), remoteIdentity: ids.identity(API_DB.remoteId), remoteNode: ids.node(API_DB.remoteNode) }, expiryNs);
  const cache = new AuthCache({ map, ids, capacity: 64, logger: silentLogger() });
  const auth = manager(cache);
  auth.adoptRestored(cache.restore());
  auth.setDesired([]);
  t.false(mapHolds(map, ids, API_DB), 'the restored pair nobody desires is swept');
  auth.changeDesired([keyed(WEB_DB), keyed(WEB_CACHE)], []);
  for (const pair of [WEB_DB, WEB_CACHE]) t.true(auth.record(authenticated(pair), 'proactive'));
  t.true(auth.isDesired(WEB_CACHE));
  auth.changeDesired([], [keyed(WEB_CACHE)]);
  t.false(mapHolds(map, ids, WEB_CACHE), 'revoked at once');
  t.false(auth.isDesired(WEB_CACHE));
  t.false(auth.record(authenticated(WEB_CACHE), 'responder'), 'a late result is not recorded');
  t.true(mapHolds(map, ids, WEB_DB));
  auth.stop();
});

test('the first changeDesired sweeps restored pairs nobody desires, as the first setDesired does', async (t) => {
  const map = new MemoryAuthMap();
  const ids = await NumericIds.load();
  const expiryNs = process.hrtime.bigint() + 3_600_000_000_000n;
  for (const pair of [WEB_DB, API_DB]) {
    map.setAuth({ localIdentity: ids.identity(pair.localId), remoteIdentity: ids.identity(pair.remoteId), remoteNode: ids.node(pair.remoteNode) }, expiryNs);
  }
  const cache = new AuthCache({ map, ids, capacity: 64, logger: silentLogger() });
  const auth = manager(cache);
  auth.adoptRestored(cache.restore());
  auth.changeDesired([keyed(WEB_DB)], []);
  t.true(mapHolds(map, ids, WEB_DB));
  t.false(mapHolds(map, ids, API_DB));
  auth.stop();
});
