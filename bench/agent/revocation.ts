// revoke_ms_p99: setDesired without one more pair until its entry is gone from the pinned map.
import { NumericIds } from '../../src/auth/numeric-ids.js';
import { keyed, type KeyedPair } from '../../src/auth/types.js';
import { Datapath } from '../../src/datapath/gate/datapath.js';
import { sleep } from '../../src/util/backoff.js';
import { checkpoint } from './interrupt.js';
import { authKeyOf, benchManager, benchPairs, recordAll } from './pairs.js';

export const REVOCATIONS = 200;
/** The agent applies one plan per burst of cluster events; back to back, 200 plans of 100,000
 *  pairs would time this harness's garbage collector. */
const MS_BETWEEN_REVOCATIONS = 50;

/**
 * Revocation latency with `held` pairs: each round drops one more pair from the desired set and
 * times setDesired until the pair's entry is gone from the pinned map, read back through it.
 */
export async function revocation(pinDir: string, held: number): Promise<number[]> {
  const datapath = await Datapath.open({ pinDir });
  try {
    const ids = await NumericIds.load();
    const { manager } = benchManager(datapath, ids);
    const pairs = benchPairs(held);
    recordAll(manager, pairs, Date.now());
    const keyedPairs = pairs.map(keyed);
    const revoked = new Set<number>();
    const latencies: number[] = [];
    for (let round = 0; round < REVOCATIONS; round++) {
      checkpoint();
      const index = Math.floor(((round + 0.5) / REVOCATIONS) * pairs.length);
      const key = authKeyOf(ids, pairs[index]!);
      if (datapath.getAuth(key) === undefined) throw new Error('the pair to revoke has no map entry');
      revoked.add(index);
      // The agent hands setDesired its plan: a map keyed by the pairs' key strings, built once per
      // plan (outside this timing, like the plan itself).
      const remaining = new Map<string, KeyedPair>();
      for (const [i, pair] of keyedPairs.entries()) if (!revoked.has(i)) remaining.set(pair.key, pair);
      await sleep(MS_BETWEEN_REVOCATIONS);
      const start = performance.now();
      manager.setDesired(remaining);
      while (datapath.getAuth(key) !== undefined) {
        if (performance.now() - start > 5000) throw new Error('a revoked pair is still in the map after 5 s');
        await sleep(1);
      }
      latencies.push(performance.now() - start);
    }
    manager.stop();
    return latencies;
  } finally {
    datapath.close();
  }
}
