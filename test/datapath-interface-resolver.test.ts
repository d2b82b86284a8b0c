// Privileged: finding a workload's host-side interface from sources a workload cannot forge, in a
// namespace standing in for the host: a routed veth's route; a bridged veth only through the
// pod's namespace (its veth peer), never through the neighbour table a pod can poison; and
// addresses that are no workload's (behind a gateway, local).
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { podPeerInterface, resolveHostInterface, stillBound } from '../src/datapath/gate/interface-resolver.js';
import { inNetns } from './helpers/netns.js';
import { privileged } from './helpers/privileged.js';

async function ipBatch(netns: string, lines: string[]): Promise<void> {
  await execa('ip', ['-n', netns, '-batch', '-'], { input: `${lines.join('\n')}\n` });
}

privileged('routed workloads resolve through their route, bridged ones only through their namespace, never a forged neighbour entry', async (t) => {
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
  t.is(await resolveHostInterface('10.99.2.2', host), undefined, 'bridged: the neighbour table is not asked');
  // w3 forges w2's address: the host's neighbour table and the bridge now point at w3's port.
  await ipBatch(w3, ['addr add 10.99.2.2/24 dev eth0']);
  await inNetns(w3, 'ping', ['-c', '1', '-W', '2', '-I', '10.99.2.2', '10.99.2.1']);
  t.is(await resolveHostInterface('10.99.2.2', host), undefined, 'still nothing rather than the forger');
  // The pod's namespace names its own port, whatever the neighbour table says.
  const bp2 = await podPeerInterface(`/run/netns/${w2}`, 'eth0', host);
  t.is(bp2.name, 'bp2');
  t.is((await podPeerInterface(`/run/netns/${w1}`, 'eth0', host)).name, 'rt1');
  await t.throwsAsync(podPeerInterface(`/run/netns/${w1}`, 'lo', host), { message: /not one end of a veth/ });
  t.true(await stillBound(bp2, host));
  // The port deleted and its name taken by a new interface: the binding no longer holds.
  await ipBatch(host, ['link del bp2', 'link add name bp2 type veth peer name bp2x']);
  t.false(await stillBound(bp2, host));
  await ipBatch(host, ['link del bp2']);
  t.false(await stillBound(bp2, host));
  t.is(await resolveHostInterface('10.99.3.5', host), undefined, 'behind a gateway: not a local workload');
  t.is(await resolveHostInterface('10.99.1.1', host), undefined, 'a local address');
  await t.throwsAsync(resolveHostInterface('not-an-ip', host), { instanceOf: TypeError });
});
