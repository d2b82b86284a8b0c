// meshauth's own states and policies in a namespace's XFRM tables (those whose reqid lies in its
// range; nothing else is ever listed, changed or removed): listing them, grouping what a previous
// run left by peer (reqid), and removing them all.
import { DatapathError } from '../errors.js';
import { parseCidr } from './cidrs.js';
import type { NetnsExec } from './exec.js';
import { isMeshauthReqid, parsePolicies, parseStates, policyDeleteLine, stateDeleteLine, type ListedPolicy, type ListedState } from './xfrm.js';

/** A previous run's states and policies of one peer (one reqid). */
export interface Leftover {
  reqid: number;
  states: ListedState[];
  policies: ListedPolicy[];
}

/** meshauth's states and policies (reqid in its range) in a namespace. */
export async function listOwn(exec: NetnsExec): Promise<{ states: ListedState[]; policies: ListedPolicy[] }> {
  const [stateText, policyText] = await Promise.all([exec.run('ip', ['xfrm', 'state', 'list', 'nokeys']), exec.run('ip', ['xfrm', 'policy', 'list'])]);
  return {
    states: parseStates(stateText).filter((s) => isMeshauthReqid(s.reqid)),
    policies: parsePolicies(policyText).filter((p) => !p.qualified && p.reqids.length > 0 && p.reqids.every(isMeshauthReqid)),
  };
}

/** What a previous run left, one Leftover per reqid. */
export function leftoversByReqid(states: readonly ListedState[], policies: readonly ListedPolicy[]): Leftover[] {
  const byReqid = new Map<number, Leftover>();
  const leftover = (reqid: number) => byReqid.get(reqid) ?? byReqid.set(reqid, { reqid, states: [], policies: [] }).get(reqid)!;
  for (const state of states) leftover(state.reqid).states.push(state);
  for (const policy of policies) for (const reqid of policy.reqids.filter(isMeshauthReqid)) leftover(reqid).policies.push(policy);
  return [...byReqid.values()];
}

/** A listed policy with its selector in canonical form, comparable with a PolicySpec. */
export function canonicalPolicy(policy: ListedPolicy): ListedPolicy {
  return { ...policy, src: parseCidr(policy.src, 'listed policy').text, dst: parseCidr(policy.dst, 'listed policy').text };
}

/** Removes every state and policy meshauth owns in the namespace; returns how many there were. */
export async function removeOwn(exec: NetnsExec): Promise<{ states: number; policies: number }> {
  const { states, policies } = await listOwn(exec);
  // Policies first: no moment where a policy demands a state that is already gone.
  await exec.ipBatch(policies.map((p) => policyDeleteLine(p)), { force: true });
  await exec.ipBatch(states.map((s) => stateDeleteLine(s)), { force: true });
  const left = await listOwn(exec);
  if (left.states.length > 0 || left.policies.length > 0) {
    throw new DatapathError(`IPsec uninstall left ${left.states.length} states and ${left.policies.length} policies behind`);
  }
  return { states: states.length, policies: policies.length };
}
