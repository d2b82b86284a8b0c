// restore_ms_100k: AuthCache.restore() in a fresh child (a restarting agent: cold JIT) over a
// pinned map filled with batchSetAuth, whose numbers a persisted NumericIds names.
import { NumericIds } from '../../src/auth/numeric-ids.js';
import { Datapath, monotonicNowNs, type AuthEntry } from '../../src/datapath/gate/datapath.js';
import { checkpoint } from './interrupt.js';
import { runChild, type RestoreResult } from './children.js';
import { HELD_PAIRS, LIFETIME_MS, authKeyOf, benchPairs } from './pairs.js';

export const RESTORE_RUNS = 3;

export async function restore(pinDir: string, idsPath: string): Promise<RestoreResult[]> {
  const datapath = await Datapath.open({ pinDir });
  try {
    const ids = await NumericIds.load(idsPath);
    const expiryNs = monotonicNowNs() + BigInt(LIFETIME_MS) * 1_000_000n;
    const entries: AuthEntry[] = benchPairs(HELD_PAIRS).map((pair) => ({ key: authKeyOf(ids, pair), expiryNs }));
    await ids.save();
    datapath.batchSetAuth(entries);
  } finally {
    datapath.close();
  }
  const runs: RestoreResult[] = [];
  for (let run = 0; run < RESTORE_RUNS; run++) {
    checkpoint();
    const result = await runChild<RestoreResult>({ kind: 'restore', pinDir, idsPath });
    if (result.restored !== HELD_PAIRS) throw new Error(`restore rebuilt ${result.restored} entries, not ${HELD_PAIRS}`);
    runs.push(result);
  }
  return runs;
}
