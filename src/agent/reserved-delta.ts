// The reserved peers' part of the node plan (reserved-plan.ts), kept beside the incremental
// NodePlanner's part rather than inside it: it is small (the reserved ranges and node addresses,
// and local endpoints × reserved peers × rules), so it is computed whole at every plan and only
// its differences from the previous one are written.
import type { IpcacheEntry } from '../datapath/gate/layout.js';
import type { NodePlan, PlanDelta, PolicyEntry } from './plan.js';

/** The reserved peers' ipcache and policy entries. */
export type ReservedPart = Pick<NodePlan, 'ipcache' | 'policy'>;

export function emptyPlan(): NodePlan {
  return { ipcache: new Map(), policy: new Map(), pairs: new Map(), localIdentities: [], interfaces: new Map() };
}

/**
 * Keeps the reserved part as last written. A prefix an endpoint holds is the planner's (an
 * endpoint's own address wins): left out here while it does, written again once it is gone.
 */
export class ReservedEntries {
  private written: ReservedPart = { ipcache: new Map(), policy: new Map() };

  /** The writes that turn the previous part into `next`; `planned` tells the prefixes endpoints hold now. */
  delta(next: ReservedPart, planned: (prefix: string) => boolean): Pick<PlanDelta, 'ipcache' | 'policy'> {
    const ipcache = new Map([...next.ipcache].filter(([prefix]) => !planned(prefix)));
    const delta: Pick<PlanDelta, 'ipcache' | 'policy'> = { ipcache: { set: [], deleted: [] }, policy: { set: [], deleted: [] } };
    // A prefix an endpoint now holds was just written by the planner: not deleted here.
    for (const prefix of this.written.ipcache.keys()) if (!ipcache.has(prefix) && !planned(prefix)) delta.ipcache.deleted.push(prefix);
    for (const [prefix, entry] of ipcache) if (!sameEntry(this.written.ipcache.get(prefix), entry)) delta.ipcache.set.push([prefix, entry]);
    for (const [id, entry] of this.written.policy) if (!next.policy.has(id)) delta.policy.deleted.push(entry.key);
    for (const [id, entry] of next.policy) if (!samePolicy(this.written.policy.get(id), entry)) delta.policy.set.push(entry);
    this.written = { ipcache, policy: next.policy };
    return delta;
  }
}

function sameEntry(a: IpcacheEntry | undefined, b: IpcacheEntry): boolean {
  return a?.identity === b.identity && a.node === b.node;
}

function samePolicy(a: PolicyEntry | undefined, b: PolicyEntry): boolean {
  return a?.authType === b.authType;
}
