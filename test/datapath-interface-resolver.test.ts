// Privileged: finding a workload address's host-side interface the way a CNI wired it, in a
// namespace standing in for the host: a routed veth, a veth behind a bridge, and addresses that
// are no workload's (behind a gateway, local, unknown to the bridge yet).
import { resolveHostInterface } from '../src/datapath/gate/interface-resolver.js';
import { NetnsTopology } from '../src/netns/topology.js';
import { privileged } from './helpers/privileged.js';

privileged('routed and bridged workloads resolve to their own host-side interface; others to none', async (t) => {
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
  // The host learns w2's MAC once they have talked (pods talk to their gateway early).
  await topology.run('w2', 'ping', ['-c', '1', '-W', '2', '10.99.2.1']);

  t.is(await resolveHostInterface('10.99.1.2', host), 'rt1', 'routed: the route names the pod veth');
  t.is(await resolveHostInterface('10.99.2.2', host), 'bp2', 'bridged: the bridge port behind the MAC');
  t.is(await resolveHostInterface('10.99.2.3', host), undefined, 'bridged, not heard from yet: ask again later');
  t.is(await resolveHostInterface('10.99.3.5', host), undefined, 'behind a gateway: not a local workload');
  t.is(await resolveHostInterface('10.99.1.1', host), undefined, 'a local address');
  await t.throwsAsync(resolveHostInterface('not-an-ip', host), { instanceOf: TypeError });
});
