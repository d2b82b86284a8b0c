// Privileged: where the kernel has TCX, the gate goes first among an interface's programs (a CNI
// program that redirects would otherwise skip it), hands the traffic it passes on to the programs
// after it, and keeps (or takes back) its place across a restart; without CAP_SYS_ADMIN TCX is
// not used.
import test from 'ava';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { machine, tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { Datapath } from '../src/datapath/datapath.js';
import { tcxUsable, tcxHelperPath } from '../src/datapath/hooks.js';
import { Cluster, IDENTITY, isRoot } from './helpers/datapath-fixture.js';
import { inNetns, type Workload } from './helpers/netns.js';

const privileged = isRoot() ? test.serial : test.skip;

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

async function ingressPrograms(w: Workload): Promise<string[]> {
  const { stdout } = await inNetns(w.hostInterface.netns, tcxHelperPath(), ['show', w.hostInterface.name]);
  return (JSON.parse(stdout) as { ingress: { name: string }[] }).ingress.map((program) => program.name);
}

privileged('without CAP_SYS_ADMIN the probe reports TCX unusable (exit 3, on which `auto` chooses tc)', async (t) => {
  const probe = await execa('setpriv', ['--bounding-set', '-sys_admin', tcxHelperPath(), 'probe'], { reject: false });
  t.is(probe.exitCode, 3, probe.stderr);
  t.regex(probe.stderr, /CAP_SYS_ADMIN/);
});

privileged('TCX: the gate runs first, passes traffic on to the programs after it, and keeps its place on restart', async (t) => {
  if (!(await tcxUsable())) {
    t.log('this kernel has no TCX: the gate attaches through tc (covered by datapath-restart)');
    t.pass();
    return;
  }
  const cluster = await Cluster.start(t);
  const [w1a, w2a] = [cluster.w('w1a'), cluster.w('w2a')];
  const agent1 = cluster.agent(1);
  const { netns, name } = w1a.hostInterface;
  const dropAll = await loadDropAll(join(cluster.topology.nodes[0].pinDir, 'cni'));

  // The CNI's program was there first; the gate still goes before it.
  await agent1.detach([w1a.hostInterface]);
  await inNetns(netns, tcxHelperPath(), ['attach', name, `ingress=${dropAll}`]);
  await agent1.install({ interfaces: [w1a.hostInterface] });
  t.true(agent1.bindInterface(w1a.hostInterface, { identity: IDENTITY.w1a!, node: 1 }));
  t.deepEqual(await ingressPrograms(w1a), ['from_workload', 'cni_drop']);

  cluster.authorize(w1a, w2a);
  const allowed = agent1.counters().allowed;
  t.false(await cluster.topology.reaches(w1a, w2a, 'udp', 4), 'the program after the gate ran (and dropped IPv4)');
  t.true(agent1.counters().allowed > allowed, 'the gate passed the packet on');

  const restarted = await Datapath.open({ pinDir: cluster.topology.nodes[0].pinDir });
  await restarted.install({ interfaces: [] });
  restarted.close();
  t.deepEqual(await ingressPrograms(w1a), ['from_workload', 'cni_drop'], 'replaced in place');

  // A CNI that later puts its program first: the next restart moves the gate back ahead of it.
  await inNetns(netns, tcxHelperPath(), ['detach', name, 'cni_drop']);
  await inNetns(netns, tcxHelperPath(), ['attach', name, `ingress=${dropAll}`]);
  t.deepEqual(await ingressPrograms(w1a), ['cni_drop', 'from_workload']);
  const again = await Datapath.open({ pinDir: cluster.topology.nodes[0].pinDir });
  await again.install({ interfaces: [] });
  again.close();
  t.deepEqual(await ingressPrograms(w1a), ['from_workload', 'cni_drop'], 'first again, and only once');

  await inNetns(netns, tcxHelperPath(), ['detach', name, 'cni_drop']);
  t.true(await cluster.topology.reaches(w1a, w2a, 'udp', 4));
  cluster.revoke(w1a, w2a);
  t.false(await cluster.topology.reaches(w1a, w2a, 'udp', 4), 'and the gate still gates');
});
