// Privileged: finding a workload address's host-side interface the way a CNI wired it, in a
// namespace standing in for the host: a routed veth, a veth behind a bridge, and addresses that
// are no workload's (behind a gateway, local, unknown to the bridge yet).
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { resolveHostInterface } from '../src/datapath/gate/interface-resolver.js';
import { inNetns } from '../src/netns/exec.js';
import { privileged } from './helpers/privileged.js';

async function ipBatch(netns: string, lines: string[]): Promise<void> {
  await execa('ip', ['-n', netns, '-batch', '-'], { input: `${lines.join('\n')}\n` });
}

privileged('routed and bridged workloads resolve to their own host-side interface; others to none', async (t) => {
  const tag = randomBytes(3).toString('hex');
  const host = `mr-${tag}-h`;
  const workloads = ['w1', 'w2', 'w3'].map((w) => `mr-${tag}-${w}`);
  t.teardown(async () => {
    for (const ns of [host, ...workloads]) await execa('ip', ['netns', 'del', ns], { reject: false });
  });
  for (const ns of [host, ...workloads]) await execa('ip', ['netns', 'add', ns]);
  const [w1, w2, w3] = workloads as [string, string, string];
  await ipBatch(host, [
    'link set lo up',
    // Routed, as Calico or ptp: the pod's veth carries its address's route.
    `link add name rt1 type veth peer name eth0 netns ${w1}`,
    'addr add 10.99.1.1/24 dev rt1',
    'link set rt1 up',
    // Bridged, as the bridge plugin or flannel: the route names the bridge.
    'link add name br0 type bridge',
    'addr add 10.99.2.1/24 dev br0',
    'link set br0 up',
    `link add name bp2 type veth peer name eth0 netns ${w2}`,
    `link add name bp3 type veth peer name eth0 netns ${w3}`,
    'link set bp2 master br0',
    'link set bp3 master br0',
    'link set bp2 up',
    'link set bp3 up',
  ]);
  for (const [ns, address] of [[w1, '10.99.1.2/24'], [w2, '10.99.2.2/24'], [w3, '10.99.2.3/24']] as const) {
    await ipBatch(ns, ['link set lo up', `addr add ${address} dev eth0`, 'link set eth0 up']);
  }
  await ipBatch(host, ['route add 10.99.3.0/24 via 10.99.1.2']);
  // The host learns w2's MAC once they have talked (pods talk to their gateway early).
  await inNetns(w2, 'ping', ['-c', '1', '-W', '2', '10.99.2.1']);

  t.is(await resolveHostInterface('10.99.1.2', host), 'rt1', 'routed: the route names the pod veth');
  t.is(await resolveHostInterface('10.99.2.2', host), 'bp2', 'bridged: the bridge port behind the MAC');
  t.is(await resolveHostInterface('10.99.2.3', host), undefined, 'bridged, not heard from yet: ask again later');
  t.is(await resolveHostInterface('10.99.3.5', host), undefined, 'behind a gateway: not a local workload');
  t.is(await resolveHostInterface('10.99.1.1', host), undefined, 'a local address');
  await t.throwsAsync(resolveHostInterface('not-an-ip', host), { instanceOf: TypeError });
});
