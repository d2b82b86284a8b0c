// The reserved peers' part of the plan, written as differences beside the incremental planner's (#14, #16 item 4).
import test from 'ava';
import { ReservedEntries, type ReservedPart } from '../src/agent/reserved-delta.js';

const WORLD = { identity: 2, node: 0 };
const HOST = { identity: 1, node: 1 };
const policyEntry = { key: { localIdentity: 300, remoteIdentity: 2, direction: 'egress' as const }, authType: 1 };

function part(ipcache: [string, { identity: number; node: number }][], policy = new Map<string, typeof policyEntry>()): ReservedPart {
  return { ipcache: new Map(ipcache), policy };
}

test('only differences are written; a prefix an endpoint holds is left to the planner and written again once it is gone', (t) => {
  const entries = new ReservedEntries();
  const none = () => false;
  const first = entries.delta(part([['0.0.0.0/0', WORLD], ['10.1.0.1/32', HOST]], new Map([['300:2:egress', policyEntry]])), none);
  t.deepEqual(first.ipcache, { set: [['0.0.0.0/0', WORLD], ['10.1.0.1/32', HOST]], deleted: [] });
  t.deepEqual(first.policy, { set: [policyEntry], deleted: [] });

  const same = entries.delta(part([['0.0.0.0/0', WORLD], ['10.1.0.1/32', HOST]], new Map([['300:2:egress', policyEntry]])), none);
  t.deepEqual(same, { ipcache: { set: [], deleted: [] }, policy: { set: [], deleted: [] } }, 'nothing changed, nothing written');

  // An endpoint takes the host's address: the planner wrote it, so it is neither set nor deleted here.
  const endpointThere = (prefix: string) => prefix === '10.1.0.1/32';
  t.deepEqual(entries.delta(part([['0.0.0.0/0', WORLD], ['10.1.0.1/32', HOST]]), endpointThere), {
    ipcache: { set: [], deleted: [] },
    policy: { set: [], deleted: [policyEntry.key] },
  });
  // The endpoint left (the planner deleted its entry): the reserved entry is written again.
  t.deepEqual(entries.delta(part([['0.0.0.0/0', WORLD], ['10.1.0.1/32', HOST]]), none).ipcache, { set: [['10.1.0.1/32', HOST]], deleted: [] });
  // A reserved address that leaves the config is deleted.
  t.deepEqual(entries.delta(part([['0.0.0.0/0', WORLD]]), none).ipcache, { set: [], deleted: ['10.1.0.1/32'] });
});
