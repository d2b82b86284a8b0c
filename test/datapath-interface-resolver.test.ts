// Privileged: finding a workload's host-side interface from sources a workload cannot forge, in a
// namespace standing in for the host: a routed veth's route; a bridged veth only through the
// pod's namespace (its veth peer), never through the neighbour table a pod can poison; and
// addresses that are no workload's (behind a gateway, local).
import { podPeerInterface, resolveHostInterface, stillBound } from '../src/datapath/gate/interface-resolver.js';
import { ipBatch } from '../src/netns/exec.js';
import { NetnsTopology } from '../src/netns/topology.js';
import { privileged } from './helpers/privileged.js';

privileged('routed workloads resolve through their route, bridged ones only through their namespace, never a forged neighbour entry', async (t) => {
  const topology = await NetnsTopology.create(
    {
      prefix: 'mr',
      namespaces: [
        // The route to 10.99.3.0/24 goes through w1: a gateway, not a local workload.
        { name: 'h', bridges: [{ name: 'br0', addresses: ['10.99.2.1/24'] }], routes: [{ to: '10.99.3.0/24', via: '10.99.1.2' }] },
        { name: 'w1' },
        { name: 'w2' },
        { name: 'w3' },
      ],
      veths: [
        // Routed, as Calico or ptp: the pod's veth carries its address's route.
        { ends: [{ netns: 'h', name: 'rt1', addresses: ['10.99.1.1/24'] }, { netns: 'w1', name: 'eth0', addresses: ['10.99.1.2/24'] }] },
        // Bridged, as the bridge plugin or flannel: the route names the bridge.
        { ends: [{ netns: 'h', name: 'bp2', master: 'br0' }, { netns: 'w2', name: 'eth0', addresses: ['10.99.2.2/24'] }] },
        { ends: [{ netns: 'h', name: 'bp3', master: 'br0' }, { netns: 'w3', name: 'eth0', addresses: ['10.99.2.3/24'] }] },
      ],
    },
    { teardown: (destroy) => t.teardown(destroy) },
  );
  const host = topology.netns('h');
  const [w1, w2, w3] = [topology.netns('w1'), topology.netns('w2'), topology.netns('w3')];
  // The host learns w2's MAC once they have talked (pods talk to their gateway early).
  await topology.run('w2', 'ping', ['-c', '1', '-W', '2', '10.99.2.1']);

  t.is(await resolveHostInterface('10.99.1.2', host), 'rt1', 'routed: the route names the pod veth');
  t.is(await resolveHostInterface('10.99.2.2', host), undefined, 'bridged: the neighbour table is not asked');
  // w3 forges w2's address: the host's neighbour table and the bridge now point at w3's port.
  await ipBatch(w3, ['addr add 10.99.2.2/24 dev eth0']);
  await topology.run('w3', 'ping', ['-c', '1', '-W', '2', '-I', '10.99.2.2', '10.99.2.1']);
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
