// Privileged: a restarted agent leaves nothing of what went while it was down in the pinned
// maps (#16, item 5). The agent applies plans as differences from its previous plan, and a new
// process has none: before the fix, a policy exemption removed while the agent was down kept
// passing unauthenticated traffic, an address whose endpoint went kept its old identity, and an
// interface whose workload went kept its binding. The first complete plan now sweeps them.
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { RawArrayMap, RawMap } from 'bpf';
import { openPinnedMap } from '../src/datapath/gate/bpf-maps.js';
import { Datapath } from '../src/datapath/gate/datapath.js';
import { MAP_SPECS, type MapName } from '../src/datapath/gate/layout.js';
import { PinLayout } from '../src/datapath/gate/pin-layout.js';
import type { ConfigInput } from '../src/config/config.js';
import { agentConfig, startAgent, tempDir } from './helpers/agents.js';
import { assertGateBuilt } from './helpers/datapath-fixture.js';
import { privileged } from './helpers/privileged.js';

const WEB = 'spiffe://example.org/ns/shop/sa/web';
const DB = 'spiffe://example.org/ns/shop/sa/db';

/** The keys of a pinned map, and the non-empty slots of the interfaces array, read directly. */
function pinned(pinDir: string) {
  const layout = new PinLayout(pinDir);
  const open = (name: MapName) => openPinnedMap(layout.mapPath(name), MAP_SPECS[name]);
  const count = (name: MapName) => {
    const ref = open(name);
    try {
      return [...new RawMap(ref).keys()].length;
    } finally {
      ref.close();
    }
  };
  const boundSlots = () => {
    const ref = open('interfaces');
    try {
      let bound = 0;
      for (const batch of new RawArrayMap(ref).getBatch(4096)) for (const value of batch) if (value.some((byte) => byte !== 0)) bound++;
      return bound;
    } finally {
      ref.close();
    }
  };
  return { policy: count('policy'), hosts4: count('ipcache_hosts4'), bound: boundSlots() };
}

privileged('a restarted agent removes the pinned policy, ipcache entries and bindings of what went while it was down', async (t) => {
  assertGateBuilt();
  const tag = randomBytes(3).toString('hex');
  const host = `mr-${tag}-h`;
  const pinDir = `/sys/fs/bpf/meshauth-test-${tag}-rs`;
  t.teardown(async () => {
    await Datapath.uninstall({ pinDir });
    await execa('ip', ['netns', 'del', host], { reject: false });
  });
  await execa('ip', ['netns', 'add', host]);
  for (const [name, peer] of [['rs0', 'rp0'], ['rs1', 'rp1']]) {
    await execa('ip', ['-n', host, 'link', 'add', name!, 'type', 'veth', 'peer', 'name', peer!]);
    await execa('ip', ['-n', host, 'link', 'set', name!, 'up']);
  }
  const dir = await tempDir(t);
  const node = { name: 'node-a', address: '127.0.0.1', podCidrs: ['10.97.0.0/24'] };
  const web = { ip: '10.97.0.2', spiffeId: WEB, node: 'node-a', interface: 'rs0' };
  const db = { ip: '10.97.0.3', spiffeId: DB, node: 'node-a', interface: 'rs1' };
  const exemption = { name: 'web-db-exempt', source: { spiffeId: WEB }, destination: { spiffeId: DB }, mode: 'disabled' as const };
  const config = (cluster: ConfigInput['cluster']): ConfigInput => ({
    ...agentConfig(dir, { name: 'node-a', address: '127.0.0.1' }, cluster, 0),
    datapath: { enabled: true, pinDir, netns: host },
    auth: { cacheSize: 4096 },
  });

  const first = await startAgent(t, config({ nodes: [node], endpoints: [web, db], policy: { default: 'required', rules: [exemption] } }));
  await first.settled();
  t.deepEqual(pinned(pinDir), { policy: 2, hosts4: 2, bound: 2 }, 'the first run pinned the exemption (web egress, db ingress), both addresses and both bindings');
  await first.stop();

  // While the agent is down, the db workload and the exemption go. rs1 stays (its veth is
  // deleted with the pod in a real cluster only later, and the gate stays on it: fail closed).
  const second = await startAgent(t, config({ nodes: [node], endpoints: [web], policy: { default: 'required', rules: [] } }));
  await second.settled();
  t.deepEqual(pinned(pinDir), { policy: 0, hosts4: 1, bound: 1 }, 'the restarted agent holds only what its first plan names');
  await second.stop();
});
