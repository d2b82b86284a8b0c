// Privileged: the sweeps a restarted agent runs over the pinned gate maps (#16, item 5) keep
// exactly what they are given, across the ipcache's LPM trie and both host hashes, the policy
// map, and the interface bindings. No traffic, no interfaces: only this test's own pinned maps.
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { Datapath } from '../src/datapath/gate/datapath.js';
import { TEST_CAPACITIES } from './helpers/datapath-fixture.js';
import { privilegedConcurrent } from './helpers/privileged.js';

privilegedConcurrent('retainIpcache and retainPolicy delete every entry they are not given, and only those', async (t) => {
  const pinDir = `/sys/fs/bpf/meshauth-test-${randomBytes(4).toString('hex')}-rt`;
  t.teardown(() => rm(pinDir, { recursive: true, force: true }));
  const datapath = await Datapath.open({ pinDir, capacities: TEST_CAPACITIES });
  t.teardown(() => datapath.close());
  const entry = { identity: 7, node: 1 };
  const prefixes = ['10.0.0.0/8', '10.1.2.3/32', '10.1.2.4/32', 'fd00::/64', 'fd00::1/128', 'fd00::2/128'];
  for (const prefix of prefixes) datapath.setIpcache(prefix, entry);
  // Kept: one of each kind, written in other spellings (a bare address, a prefix with host bits).
  t.is(datapath.retainIpcache(['10.255.0.0/8', '10.1.2.3', 'fd00::1']), 3);
  t.false(datapath.deleteIpcache('10.1.2.4/32'), 'a host entry not kept is gone');
  t.false(datapath.deleteIpcache('fd00::/64'), 'a prefix not kept is gone');
  t.false(datapath.deleteIpcache('fd00::2'));
  for (const kept of ['10.0.0.0/8', '10.1.2.3/32', 'fd00::1/128']) t.true(datapath.deleteIpcache(kept), `${kept} kept`);
  t.is(datapath.retainIpcache([]), 0, 'nothing left to delete');

  const policy = (remoteIdentity: number, direction: 'egress' | 'ingress') => ({ localIdentity: 1, remoteIdentity, direction });
  for (const key of [policy(2, 'egress'), policy(2, 'ingress'), policy(3, 'egress')]) datapath.setPolicy(key, 0);
  t.is(datapath.retainPolicy([policy(2, 'ingress')]), 2);
  t.true(datapath.deletePolicy(policy(2, 'ingress')));
  t.false(datapath.deletePolicy(policy(2, 'egress')));
});
