// The auth cache against the real pinned BPF auth map (privileged: needs bpffs and CAP_BPF).
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { AuthCache, type Clocks } from '../src/auth/cache.js';
import { NumericIds } from '../src/auth/numeric-ids.js';
import type { CachedPair } from '../src/auth/types.js';
import { Datapath } from '../src/datapath/gate/datapath.js';
import { silentLogger } from '../src/util/logger.js';

const HOUR = 3_600_000;

async function openMap(t: ExecutionContext): Promise<Datapath> {
  const pinDir = `/sys/fs/bpf/meshauth-test-cache-${randomBytes(4).toString('hex')}`;
  const datapath = await Datapath.open({ pinDir, capacities: { auth: 1024 } });
  t.teardown(async () => {
    datapath.close();
    await Datapath.uninstall({ pinDir });
  });
  return datapath;
}

function pair(local: string, remote: string, node: string, expiresAt: number, authenticatedAt = Date.now()): CachedPair {
  return {
    localId: `spiffe://td/ns/a/sa/${local}`,
    remoteId: `spiffe://td/ns/a/sa/${remote}`,
    remoteNode: node,
    expiresAt,
    authenticatedAt,
    localNotAfter: expiresAt,
    remoteNotAfter: expiresAt,
    trigger: 'proactive',
    epoch: 1,
  };
}

test('every upsert and delete is written through to the BPF map, with the expiry on the monotonic clock', async (t) => {
  const map = await openMap(t);
  const ids = await NumericIds.load();
  const cache = new AuthCache({ map, ids, capacity: 100, logger: silentLogger() });
  const expiresAt = Date.now() + HOUR;
  cache.upsert(pair('web', 'db', 'node-b', expiresAt));
  const [entry] = map.dumpAuth();
  t.like(entry?.key, { localIdentity: ids.identity('spiffe://td/ns/a/sa/web'), remoteIdentity: ids.identity('spiffe://td/ns/a/sa/db'), remoteNode: ids.node('node-b') });
  const remainingMs = Number((entry!.expiryNs - process.hrtime.bigint()) / 1_000_000n);
  t.true(Math.abs(remainingMs - HOUR) < 2_000, `remaining ${remainingMs} ms`);
  t.true(cache.delete(pair('web', 'db', 'node-b', 0)));
  t.deepEqual(map.dumpAuth(), []);
});

test('a full cache evicts the least recently authenticated pair from the map too', async (t) => {
  const map = await openMap(t);
  const removed: string[] = [];
  const cache = new AuthCache({ map, ids: await NumericIds.load(), capacity: 2, logger: silentLogger(), onRemoved: (p, reason) => removed.push(`${p.remoteId}:${reason}`) });
  cache.upsert(pair('web', 'a', 'n', Date.now() + HOUR));
  cache.upsert(pair('web', 'b', 'n', Date.now() + HOUR));
  cache.upsert(pair('web', 'a', 'n', Date.now() + HOUR)); // re-authenticated: most recent again
  cache.upsert(pair('web', 'c', 'n', Date.now() + HOUR));
  t.deepEqual(removed, ['spiffe://td/ns/a/sa/b:evicted']);
  t.is(map.dumpAuth().length, 2);
});

test('restore rebuilds the cache from the pinned map; unnamed and expired entries are deleted', async (t) => {
  const map = await openMap(t);
  const ids = await NumericIds.load();
  const before = new AuthCache({ map, ids, capacity: 100, logger: silentLogger() });
  const expiresAt = Date.now() + HOUR;
  before.upsert(pair('web', 'db', 'node-b', expiresAt));
  // Entries the agent cannot name (numbering lost) and entries already expired.
  map.setAuth({ localIdentity: 9999, remoteIdentity: 9998, remoteNode: 77 }, process.hrtime.bigint() + 10_000_000_000n);
  map.setAuth({ localIdentity: ids.identity('spiffe://td/ns/a/sa/api'), remoteIdentity: ids.identity('spiffe://td/ns/a/sa/db'), remoteNode: ids.node('node-b') }, process.hrtime.bigint() - 1n);

  const after = new AuthCache({ map, ids, capacity: 100, logger: silentLogger() });
  const restored = after.restore();
  t.is(restored.length, 1);
  t.like(restored[0], { localId: 'spiffe://td/ns/a/sa/web', remoteId: 'spiffe://td/ns/a/sa/db', remoteNode: 'node-b', trigger: 'restored' });
  t.true(Math.abs(restored[0]!.expiresAt - expiresAt) < 1_000);
  t.is(map.dumpAuth().length, 1, 'the unnamed and the expired entries are gone');
});

test('reconcile repairs drift: stray entries, missing entries and wrong expiries', async (t) => {
  const map = await openMap(t);
  const ids = await NumericIds.load();
  const cache = new AuthCache({ map, ids, capacity: 100, logger: silentLogger() });
  cache.upsert(pair('web', 'db', 'node-b', Date.now() + HOUR));
  cache.upsert(pair('web', 'api', 'node-b', Date.now() + HOUR));
  t.is(cache.reconcile(), 0, 'no drift right after writing');
  const dbKey = { localIdentity: ids.identity('spiffe://td/ns/a/sa/web'), remoteIdentity: ids.identity('spiffe://td/ns/a/sa/db'), remoteNode: ids.node('node-b') };
  const apiKey = { ...dbKey, remoteIdentity: ids.identity('spiffe://td/ns/a/sa/api') };
  map.setAuth({ localIdentity: 4242, remoteIdentity: 4343, remoteNode: 9 }, process.hrtime.bigint() + 60_000_000_000n); // stray
  map.deleteAuth(apiKey); // missing
  map.setAuth(dbKey, process.hrtime.bigint() + 24n * 3_600_000_000_000n); // wrong expiry (a day instead of an hour)
  t.is(cache.reconcile(), 3);
  t.is(map.dumpAuth().length, 2);
  const db = map.getAuth(dbKey)!;
  t.true(db - process.hrtime.bigint() < 2n * 3_600_000_000_000n);
  t.is(cache.reconcile(), 0);
});

test('wall-clock expiries become monotonic ones relative to the clocks given', async (t) => {
  const map = await openMap(t);
  const clocks: Clocks = { wallMs: () => 1_000_000, monotonicNs: () => 5_000_000_000n };
  const cache = new AuthCache({ map, ids: await NumericIds.load(), capacity: 10, logger: silentLogger(), clocks });
  cache.upsert(pair('web', 'db', 'n', 1_000_000 + 2_500));
  t.is(map.dumpAuth()[0]?.expiryNs, 5_000_000_000n + 2_500_000_000n);
  cache.upsert(pair('web', 'db', 'n', 1_000_000 - 10));
  t.is(map.dumpAuth()[0]?.expiryNs, 5_000_000_000n, 'an expiry in the past is "now": the gate drops at once');
});
