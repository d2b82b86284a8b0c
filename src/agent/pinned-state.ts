// After a restart: the pinned maps still hold what the previous run wrote, and the agent applies
// plans as differences from the plan before, of which a new process has none. Whatever left the
// cluster while the agent was down (a policy exemption, an endpoint whose address may since have
// been reused, ...) would stay pinned and keep deciding. The first complete plan after the
// cluster source's sync is therefore also applied as a sweep: every pinned entry it does not name
// goes. Kept apart from the planning, so that however plans are computed and applied, this step
// only needs the complete desired state once.
import type { PolicyKey } from '../datapath/gate/layout.js';

/** The pinned maps the sweep writes (the gate's Datapath). */
export interface PinnedGateMaps {
  retainIpcache(keep: Iterable<string>): number;
  retainPolicy(keep: Iterable<PolicyKey>): number;
}

/** The complete desired contents of those maps. */
export interface DesiredGateState {
  /** Every prefix the ipcache must hold. */
  ipcache: Iterable<string>;
  /** Every policy key the policy map must hold. */
  policy: Iterable<PolicyKey>;
}

export interface StaleEntries {
  ipcache: number;
  policy: number;
}

/** Deletes every pinned ipcache and policy entry the desired state does not name; returns how many. */
export function removeStaleGateEntries(maps: PinnedGateMaps, desired: DesiredGateState): StaleEntries {
  return { ipcache: maps.retainIpcache(desired.ipcache), policy: maps.retainPolicy(desired.policy) };
}
