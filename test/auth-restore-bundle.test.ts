// A pair restored from the pinned map after a restart rides on a node link this process has not
// brought up yet. When the trust bundle of its peer's domain changes, the pair must be
// re-validated by a fresh handshake, and one that cannot be (no link to carry it) must not stay
// in the datapath on the strength of a chain the new bundle may no longer anchor (#16, item 5).
import test from 'ava';
import { AuthCache } from '../src/auth/cache.js';
import { AuthManager } from '../src/auth/manager.js';
import { MemoryAuthMap } from '../src/auth/memory-map.js';
import { NumericIds } from '../src/auth/numeric-ids.js';
import type { PairKey } from '../src/auth/types.js';
import { silentLogger } from '../src/util/logger.js';

const WEB = 'spiffe://example.org/ns/shop/sa/web';
const DB = 'spiffe://partner.example/ns/shop/sa/db';
const PAIR: PairKey = { localId: WEB, remoteId: DB, remoteNode: 'node-b' };

test('a restored pair whose node link is not up yet is removed when its peer\'s trust bundle changes', async (t) => {
  const map = new MemoryAuthMap();
  const ids = await NumericIds.load();
  const authKey = { localIdentity: ids.identity(WEB), remoteIdentity: ids.identity(DB), remoteNode: ids.node('node-b') };
  map.setAuth(authKey, process.hrtime.bigint() + 3_600_000_000_000n);
  const cache = new AuthCache({ map, ids, capacity: 100, logger: silentLogger() });
  let handshakes = 0;
  const manager = new AuthManager({
    cache,
    localNode: 'node-a',
    authenticate: () => {
      handshakes++;
      return Promise.reject(new Error('no handshake is expected without a node link'));
    },
    authenticateLocal: () => undefined,
    nodeLink: () => undefined, // just restarted: the node handshake has not completed yet
    timing: { fraction: 2 / 3, jitter: 0.1, failureBackoff: { initialMs: 200, maxMs: 1000 }, proactiveGraceMs: 150 },
    logger: silentLogger(),
  });
  t.teardown(() => manager.stop());
  manager.adoptRestored(cache.restore());
  manager.setDesired([PAIR]);
  t.truthy(cache.get(PAIR), 'restored and desired: kept while nothing says otherwise');

  manager.onBundleChange({ removed: [], changed: ['partner.example'] });
  await manager.settled();
  t.is(cache.get(PAIR), undefined, 'cannot be re-validated: removed from the cache');
  t.false(map.dumpAuth().some((entry) => entry.key.remoteIdentity === authKey.remoteIdentity), 'and from the map');
  t.is(handshakes, 0);
});
