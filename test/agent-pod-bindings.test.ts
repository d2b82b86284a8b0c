// Privileged: the agent's record of CNI-registered pods, on real namespaces: the binding read from
// the pod's veth peer, the spool an agent reads at start (bad records refused and counted), an
// address handed to a new container superseding its old holder, and the re-check that drops a
// binding whose interface was deleted or replaced.
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { PodBindings } from '../src/agent/pod-bindings.js';
import { silentLogger } from '../src/util/logger.js';
import { tempDir } from './helpers/agents.js';
import { privileged } from './helpers/privileged.js';

privileged('pod bindings come from the pod namespace, load from the spool, supersede, and are re-checked', async (t) => {
  const tag = randomBytes(3).toString('hex');
  const [host, p1, p2] = ['h', 'p1', 'p2'].map((name) => `mb-${tag}-${name}`) as [string, string, string];
  t.teardown(async () => {
    for (const ns of [host, p1, p2]) await execa('ip', ['netns', 'del', ns], { reject: false });
  });
  for (const ns of [host, p1, p2]) await execa('ip', ['netns', 'add', ns]);
  await execa('ip', ['-n', host, 'link', 'add', 'hv1', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', p1]);
  await execa('ip', ['-n', host, 'link', 'add', 'hv2', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', p2]);
  const spoolDir = join(await tempDir(t, 'meshauth-spool-'), 'spool');
  await mkdir(spoolDir);
  const request = (containerId: string, netns: string, ips: string[]) => ({ containerId, netns: `/run/netns/${netns}`, ifName: 'eth0', ips, waitMs: 0, pod: { namespace: 'shop', name: containerId } });
  await writeFile(join(spoolDir, 'c1.json'), JSON.stringify(request('c1', p1, ['10.5.0.2'])));
  await writeFile(join(spoolDir, 'c9.json'), JSON.stringify(request('c9', `mb-${tag}-gone`, ['10.5.0.9'])));
  await writeFile(join(spoolDir, 'c8.json'), '{"containerId":');
  await writeFile(join(spoolDir, 'c7.json'), JSON.stringify(request('c6', p1, ['10.5.0.7'])));

  const pods = new PodBindings({ spoolDir, hostNetns: host, logger: silentLogger() });
  const { loaded, rejected } = await pods.loadSpool();
  t.deepEqual(loaded.map((binding) => [binding.containerId, binding.bound.name]), [['c1', 'hv1']]);
  t.is(rejected, 3, 'a gone namespace, a torn record and a record under another name are refused');
  t.is(pods.interfaceOf('10.5.0.2'), 'hv1');

  // The address given to another container: the old holder is superseded.
  const { binding, superseded } = await pods.register(request('c2', p2, ['10.5.0.2', '10.5.0.3']));
  t.is(binding.bound.name, 'hv2');
  t.deepEqual(superseded.map((old) => old.containerId), ['c1']);
  t.is(pods.get('c1'), undefined);
  t.is(pods.interfaceOf('10.5.0.2'), 'hv2');

  t.deepEqual(await pods.recheck(), []);
  // hv2 deleted and its name reused by a new interface: the binding no longer holds.
  await execa('ip', ['-n', host, 'link', 'del', 'hv2']);
  await execa('ip', ['-n', host, 'link', 'add', 'hv2', 'type', 'veth', 'peer', 'name', 'hv2x']);
  t.deepEqual((await pods.recheck()).map((stale) => stale.containerId), ['c2']);
  t.is(pods.interfaceOf('10.5.0.3'), undefined);
  t.deepEqual(pods.interfaceNames(), []);
});
