// What a stream of numbered datagrams (probe.ts) says about when traffic was cut.

export interface TrafficCut {
  sent: number;
  received: number;
  /** Send time, in ms after the reference time, of the last datagram that arrived. */
  lastPassedMs?: number;
  /** Send time, in ms after the reference time, of the first datagram of the final unbroken run
   *  of lost ones: when the cut took effect. Undefined when the last datagram arrived. */
  cutMs?: number;
}

/** Where the datagrams stopped arriving, relative to `referenceNs` (all CLOCK_MONOTONIC). */
export function trafficCut(sent: readonly (readonly [number, bigint])[], arrived: ReadonlySet<number> | ReadonlyMap<number, unknown>, referenceNs: bigint): TrafficCut {
  const ordered = [...sent].sort((a, b) => a[0] - b[0]);
  const ms = (ns: bigint) => Number(ns - referenceNs) / 1e6;
  let firstLostOfTail: number | undefined;
  for (let i = ordered.length - 1; i >= 0 && !arrived.has(ordered[i]![0]); i--) firstLostOfTail = i;
  const lastPassed = [...ordered].reverse().find(([seq]) => arrived.has(seq));
  return {
    sent: ordered.length,
    received: ordered.filter(([seq]) => arrived.has(seq)).length,
    ...(lastPassed && { lastPassedMs: ms(lastPassed[1]) }),
    ...(firstLostOfTail !== undefined && { cutMs: ms(ordered[firstLostOfTail]![1]) }),
  };
}

/** How many of the datagrams sent in [fromNs, toNs) did not arrive, of how many. */
export function lostBetween(sent: readonly (readonly [number, bigint])[], arrived: ReadonlySet<number> | ReadonlyMap<number, unknown>, fromNs: bigint, toNs: bigint): { sent: number; lost: number } {
  const window = sent.filter(([, at]) => at >= fromNs && at < toNs);
  return { sent: window.length, lost: window.filter(([seq]) => !arrived.has(seq)).length };
}
