// Privileged: the agent's handling of gated interfaces on a real kernel, in a namespace standing
// in for the host: attach and bind, unbind when the workload leaves (the gate stays: fail closed),
// attach again when an interface of the same name comes back (CNIs such as Calico derive veth
// names from the pod's name), and find the interface of an endpoint that names none.
import { execa } from 'execa';
import { GateInterfaces } from '../src/agent/gate-interfaces.js';
import { Datapath } from '../src/datapath/gate/datapath.js';
import { attachedPrograms } from '../src/datapath/gate/hooks.js';
import { NetnsTopology } from '../src/netns/topology.js';
import { sleep } from '../src/util/backoff.js';
import { silentLogger } from '../src/util/logger.js';
import { assertGateBuilt, TEST_CAPACITIES } from './helpers/datapath-fixture.js';
import { privileged } from './helpers/privileged.js';

privileged('interfaces are attached and bound, unbound when their workload leaves, re-attached when recreated, found when unnamed', async (t) => {
  assertGateBuilt();
  const topology = await NetnsTopology.create({ prefix: 'mg', namespaces: [{ name: 'h' }, { name: 'w' }] }, { teardown: (destroy) => t.teardown(destroy) });
  const [host, workload] = [topology.netns('h'), topology.netns('w')];
  const pinDir = `/sys/fs/bpf/meshauth-test-${topology.tag}-gi`;
  t.teardown(() => Datapath.uninstall({ pinDir }));
  const ip = (args: string[]) => execa('ip', ['-n', host, ...args]);
  await ip(['link', 'add', 'gi0', 'type', 'veth', 'peer', 'name', 'gp0']);
  await ip(['link', 'set', 'gi0', 'up']);

  const datapath = await Datapath.open({ pinDir, capacities: TEST_CAPACITIES });
  t.teardown(() => datapath.close());
  let resolved = 0;
  const gates = new GateInterfaces({ datapath, netns: host, logger: silentLogger(), onResolved: () => resolved++ });
  t.teardown(() => gates.stop());
  const gi0 = { name: 'gi0', netns: host };
  const attached = async () => Object.values(await attachedPrograms(datapath.layout, gi0)).every(Boolean);

  gates.apply(new Map([['gi0', { identity: 7, node: 1 }]]));
  await gates.settled();
  t.true(await attached());
  t.deepEqual(datapath.interfaceBinding(gi0), { identity: 7, node: 1 });

  gates.apply(new Map());
  t.is(datapath.interfaceBinding(gi0), undefined, 'its workload gone: unbound');
  t.true(await attached(), 'and still gated');

  await ip(['link', 'del', 'gi0']);
  await ip(['link', 'add', 'gi0', 'type', 'veth', 'peer', 'name', 'gp0']);
  await ip(['link', 'set', 'gi0', 'up']);
  gates.apply(new Map([['gi0', { identity: 8, node: 1 }]]));
  await gates.settled();
  t.true(await attached(), 'the new interface of that name is gated');
  t.deepEqual(datapath.interfaceBinding(gi0), { identity: 8, node: 1 });

  // An endpoint that names no interface: found through the kernel (a routed veth here).
  await ip(['link', 'add', 'rv0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', workload]);
  await ip(['addr', 'add', '10.98.0.1/24', 'dev', 'rv0']);
  await ip(['link', 'set', 'rv0', 'up']);
  const endpoint = { ip: '10.98.0.2', spiffeId: 'spiffe://td/ns/a/sa/b', node: 'n1' };
  t.deepEqual(gates.interfacesOf([endpoint]), new Map(), 'not known at first');
  // Waited for, not timed: the bound only ends a broken run (a loaded machine takes its time).
  for (const deadline = Date.now() + 10_000; resolved === 0 && Date.now() < deadline; ) await sleep(10);
  t.is(resolved, 1, 'the agent is told to plan again');
  t.deepEqual(gates.interfacesOf([endpoint]), new Map([['10.98.0.2', 'rv0']]));
  t.deepEqual(gates.interfacesOf([{ ...endpoint, interface: 'named0' }]), new Map([['10.98.0.2', 'named0']]), 'a named interface wins');
});
