// reauth_peak_to_mean: REAUTH_PAIRS pairs recorded at one instant; the most re-authentications due
// in any 1 s window over the mean per second, read back from the manager's own scheduler.
import { NumericIds } from '../../src/auth/numeric-ids.js';
import type { ReauthScheduler } from '../../src/auth/scheduler.js';
import { pairKeyString } from '../../src/auth/types.js';
import { Datapath } from '../../src/datapath/gate/datapath.js';
import { LIFETIME_MS, REAUTH_PAIRS, TIMING, benchManager, benchPairs, recordAll } from './pairs.js';

/** The most values in any half-open window [t, t + width) of the sorted values. */
function peakInWindow(sorted: readonly number[], width: number): number {
  let peak = 0;
  let start = 0;
  for (let end = 0; end < sorted.length; end++) {
    while (sorted[end]! - sorted[start]! >= width) start++;
    peak = Math.max(peak, end - start + 1);
  }
  return peak;
}

export interface ReauthFigures {
  peakToMean: number;
  peak: number;
  mean: number;
  firstS: number;
  lastS: number;
}

export async function reauthSpread(pinDir: string): Promise<ReauthFigures> {
  const datapath = await Datapath.open({ pinDir });
  try {
    const { manager } = benchManager(datapath, await NumericIds.load());
    const pairs = benchPairs(REAUTH_PAIRS);
    const at = Date.now();
    recordAll(manager, pairs, at);
    // The manager keeps its scheduler private; its dueAt reads back what record() scheduled.
    const scheduler = (manager as unknown as { scheduler: ReauthScheduler<string> }).scheduler;
    const due = pairs
      .map((pair) => {
        const dueAt = scheduler.dueAt(pairKeyString(pair));
        if (dueAt === undefined) throw new Error(`no re-authentication scheduled for ${pairKeyString(pair)}`);
        return dueAt - at;
      })
      .sort((a, b) => a - b);
    manager.stop();
    const peak = peakInWindow(due, 1000);
    const mean = REAUTH_PAIRS / ((TIMING.jitter * LIFETIME_MS) / 1000);
    return { peakToMean: peak / mean, peak, mean, firstS: due[0]! / 1000, lastS: due.at(-1)! / 1000 };
  } finally {
    datapath.close();
  }
}
