// Privileged: where the kernel has TCX, the gate goes first among an interface's programs (a CNI
// program that redirects would otherwise skip it), hands the traffic it passes on to the programs
// after it, and keeps (or takes back) its place across a restart, all with the DaemonSet's
// capabilities (no CAP_SYS_ADMIN).
import type { ExecutionContext } from 'ava';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { machine, tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { Datapath } from '../src/datapath/gate/datapath.js';
import { attachedPrograms, tcxHelperPath, tcxUsable } from '../src/datapath/gate/hooks.js';
import { defaultObjectPath, loadPrograms } from '../src/datapath/gate/loader.js';
import { inNetns } from '../src/netns/exec.js';
import { Cluster, IDENTITY } from './helpers/datapath-fixture.js';
import type { Workload } from './helpers/netns.js';
import { privileged } from './helpers/privileged.js';

/**
 * A CNI's program that drops all IPv4 (ARP passes: the probe's sender must still find its
 * gateway), loaded and pinned at `pin` (a bpffs directory).
 */
async function loadDropAll(pin: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-hooks-'));
  try {
    await writeFile(
      join(dir, 'drop.c'),
      [
        '#include <linux/bpf.h>',
        '#include <bpf/bpf_helpers.h>',
        '#include <bpf/bpf_endian.h>',
        'SEC("tc") int cni_drop(struct __sk_buff *skb) { return skb->protocol == bpf_htons(0x0800) ? 2 : -1; }',
        'char LICENSE[] SEC("license") = "GPL";',
      ].join('\n'),
    );
    await execa('clang', ['-O2', '-g', '-target', 'bpf', `-I/usr/include/${machine()}-linux-gnu`, '-c', join(dir, 'drop.c'), '-o', join(dir, 'drop.o')]);
    await execa('bpftool', ['prog', 'loadall', join(dir, 'drop.o'), pin]);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return join(pin, 'cni_drop');
}

/** The two-node cluster, on a kernel with TCX; on one without, the test fails saying so (the tc
 *  path is covered by datapath-restart, but these properties are TCX's own). */
async function clusterWithTcx(t: ExecutionContext): Promise<Cluster | undefined> {
  if (await tcxUsable()) return Cluster.start(t);
  t.fail('this kernel has no usable TCX (Linux >= 6.6 with BPF links on tcx hooks): the TCX tests cannot run here');
  return undefined;
}

/** Every program on a hook of the workload's host-side interface, by name, first to last. */
async function programsOn(w: Workload, hook: 'ingress' | 'egress' = 'ingress'): Promise<string[]> {
  const { stdout } = await inNetns(w.hostInterface.netns, tcxHelperPath(), ['list', w.hostInterface.name]);
  return (JSON.parse(stdout) as Record<'ingress' | 'egress', string[]>)[hook];
}

privileged('TCX: the gate runs first, passes traffic on to the programs after it, and keeps (or takes back) its place on restart', async (t) => {
  const cluster = await clusterWithTcx(t);
  if (!cluster) return;
  const [w1a, w2a] = [cluster.w('w1a'), cluster.w('w2a')];
  const agent1 = cluster.agent(1);
  const { netns, name } = w1a.hostInterface;
  const pinDir = cluster.topology.nodes[0].pinDir;
  const dropAll = await loadDropAll(join(pinDir, 'cni'));
  const cniLinks = join(pinDir, 'cni-links');
  await mkdir(cniLinks);
  const cni = (verb: 'attach' | 'detach') =>
    verb === 'attach' ? inNetns(netns, tcxHelperPath(), ['attach', name, cniLinks, `ingress=${dropAll}`]) : execa(tcxHelperPath(), ['detach', cniLinks]);
  const restart = async () => {
    const restarted = await Datapath.open({ pinDir });
    await restarted.install({ interfaces: [] });
    restarted.close();
  };

  // The CNI's program was there first; the gate still goes before it.
  await agent1.detach([w1a.hostInterface]);
  await cni('attach');
  await agent1.install({ interfaces: [w1a.hostInterface] });
  t.true(agent1.bindInterface(w1a.hostInterface, { identity: IDENTITY.w1a!, node: 1 }));
  t.deepEqual(await programsOn(w1a), ['from_workload', 'cni_drop']);

  cluster.authorize(w1a, w2a);
  const allowed = agent1.counters().allowed;
  t.false(await cluster.topology.reaches(w1a, w2a, 'udp', 4), 'the program after the gate ran (and dropped IPv4)');
  t.true(agent1.counters().allowed > allowed, 'the gate passed the packet on');

  const before = (await attachedPrograms(agent1.layout, w1a.hostInterface)).ingress;
  await restart();
  const after = (await attachedPrograms(agent1.layout, w1a.hostInterface)).ingress;
  t.deepEqual(await programsOn(w1a), ['from_workload', 'cni_drop'], 'replaced in place');
  t.true(after?.first === true && after.id !== before?.id, 'a new program, first');

  // A CNI that later puts its program first: the next restart moves the gate back ahead of it.
  await cni('detach');
  await cni('attach');
  t.deepEqual(await programsOn(w1a), ['cni_drop', 'from_workload']);
  t.like((await attachedPrograms(agent1.layout, w1a.hostInterface)).ingress, { first: false });
  await restart();
  t.deepEqual(await programsOn(w1a), ['from_workload', 'cni_drop'], 'first again, and only once');

  await cni('detach');
  t.true(await cluster.topology.reaches(w1a, w2a, 'udp', 4));
  cluster.revoke(w1a, w2a);
  t.false(await cluster.topology.reaches(w1a, w2a, 'udp', 4), 'and the gate still gates');
});

privileged('TCX needs no CAP_SYS_ADMIN: the DaemonSet (NET_ADMIN, BPF, PERFMON) attaches, replaces and detaches', async (t) => {
  const cluster = await clusterWithTcx(t);
  if (!cluster) return;
  const [w1a, w1b, w2a] = [cluster.w('w1a'), cluster.w('w1b'), cluster.w('w2a')];
  const agent1 = cluster.agent(1);
  const { netns, name } = w1a.hostInterface;
  const entry = agent1.layout.interfaceEntry(w1a.hostInterface);
  const generation = join(agent1.layout.progsDir, (await readdir(agent1.layout.progsDir))[0]!);
  // nsenter needs CAP_SYS_ADMIN itself; the agent under the DaemonSet runs in the host namespace.
  const withoutSysAdmin = (args: string[]) => inNetns(netns, 'setpriv', ['--bounding-set', '-sys_admin', tcxHelperPath(), ...args]);
  cluster.authorize(w1a, w2a);
  const before = (await attachedPrograms(agent1.layout, w1a.hostInterface)).ingress;

  // The same programs: nothing to do. Another program with the gate's name: swapped in place.
  await withoutSysAdmin(['attach', name, entry, `ingress=${join(generation, 'from_workload')}`]);
  t.deepEqual((await attachedPrograms(agent1.layout, w1a.hostInterface)).ingress, before);
  const other = await loadPrograms(agent1.layout, defaultObjectPath());
  await withoutSysAdmin(['attach', name, entry, `ingress=${join(other, 'from_workload')}`, `egress=${join(other, 'to_workload')}`]);
  const swapped = (await attachedPrograms(agent1.layout, w1a.hostInterface)).ingress;
  t.true(swapped?.id !== before?.id && swapped?.first === true);
  t.deepEqual(await programsOn(w1a), ['from_workload']);
  t.true(await cluster.topology.reaches(w1a, w2a, 'udp', 4), 'the new programs pass the pair');
  t.false(await cluster.topology.reaches(w1a, w1b, 'udp', 4), 'and gate the rest');

  await execa('setpriv', ['--bounding-set', '-sys_admin', tcxHelperPath(), 'detach', entry]);
  t.deepEqual(await programsOn(w1a), []);
  t.deepEqual(await programsOn(w1a, 'egress'), []);
  t.false(existsSync(join(entry, 'ingress')) || existsSync(join(entry, 'egress')), 'unpinned');
});
