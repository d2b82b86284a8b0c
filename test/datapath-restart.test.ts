// Privileged: the gate fails closed across the agent's life: killed with SIGKILL it keeps
// enforcing (expiry included); re-installed over itself it swaps programs with no window in which
// traffic flows ungated, and auth entries survive; uninstalled (CLI) it is gone.
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { Datapath, monotonicNowNs } from '../src/datapath/gate/datapath.js';
import { attachedPrograms, tcxUsable, tcxHelperPath, type AttachMode } from '../src/datapath/gate/hooks.js';
import { PinLayout } from '../src/datapath/gate/pin-layout.js';
import { sleep } from '../src/util/backoff.js';
import { inNetns } from '../src/netns/exec.js';
import { builtCli } from './helpers/cli.js';
import { Cluster, IDENTITY } from './helpers/datapath-fixture.js';
import type { AgentPlan } from './helpers/datapath-agent.js';
import type { Workload } from './helpers/netns.js';
import { privileged } from './helpers/privileged.js';

const AGENT = fileURLToPath(new URL('./helpers/datapath-agent.ts', import.meta.url));

function workloads(cluster: Cluster): [Workload, Workload, Workload, Workload] {
  return ['w1a', 'w1b', 'w2a', 'w2b'].map((name) => cluster.w(name)) as [Workload, Workload, Workload, Workload];
}

/** Pids of processes whose command line mentions `text` (e.g. a doorbell reader of a pin dir). */
async function processesMentioning(text: string): Promise<number[]> {
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(text)) pids.push(Number(entry));
  }
  return pids;
}

/**
 * How each gate program on the hooks of a workload's interface is attached, through either
 * mechanism: a switch from one to the other must leave exactly one per hook.
 */
async function gateHooks(w: Workload): Promise<AttachMode[]> {
  const { netns, name } = w.hostInterface;
  const found: AttachMode[] = [];
  for (const hook of ['ingress', 'egress']) {
    const filters = JSON.parse((await inNetns(netns, 'tc', ['-j', 'filter', 'show', 'dev', name, hook])).stdout) as { options?: { prog?: unknown } }[];
    found.push(...filters.filter((filter) => filter.options?.prog).map(() => 'tc' as const));
  }
  if (await tcxUsable()) {
    const listed = JSON.parse((await inNetns(netns, tcxHelperPath(), ['list', name])).stdout) as Record<'ingress' | 'egress', string[]>;
    found.push(...[...listed.ingress, ...listed.egress].map(() => 'tcx' as const));
  }
  return found;
}

async function programIds(cluster: Cluster): Promise<(number | undefined)[]> {
  const ids: (number | undefined)[] = [];
  for (const w of cluster.topology.workloads) {
    const layout = new PinLayout(cluster.topology.node(w.node).pinDir);
    const { ingress, egress } = await attachedPrograms(layout, w.hostInterface);
    ids.push(ingress?.id, egress?.id);
  }
  return ids;
}

privileged('an agent killed with SIGKILL leaves the gate enforcing, expiry included', async (t) => {
  const cluster = await Cluster.start(t);
  for (const agent of cluster.agents) agent.close(); // from here on the child process is the agent
  const [w1a, w1b, w2a, w2b] = workloads(cluster);
  // Both pairs are written by the child with an hour to go; the expiry under test is set only
  // once the child is dead, relative to that moment, so no machine is too slow for the check.
  const hourAhead = String(monotonicNowNs() + 3_600_000_000_000n);
  const pairs: [Workload, Workload][] = [
    [w1a, w2a],
    [w1b, w2b],
  ];
  const plan: AgentPlan = {
    nodes: cluster.topology.nodes.map((node) => ({
      pinDir: node.pinDir,
      interfaces: cluster.topology.workloads.filter((w) => w.node === node.id).map((w) => w.hostInterface),
      ipcache: [],
      auth: pairs.flatMap(([a, b]) => [
        ...(a.node === node.id ? [[cluster.key(a, b), hourAhead] as const] : []),
        ...(b.node === node.id ? [[cluster.key(b, a), hourAhead] as const] : []),
      ]) as AgentPlan['nodes'][number]['auth'],
    })),
  };
  const child = execa(process.execPath, ['--import', 'tsx', AGENT, JSON.stringify(plan)], { reject: false, buffer: false });
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (chunk: Buffer) => chunk.toString().includes('ready') && resolve());
    void child.then((result) => reject(new Error(`agent exited: ${result.exitCode}`)));
  });
  const programs = await programIds(cluster);
  const doorbell = `${cluster.topology.nodes[0].pinDir}/maps/doorbell`;
  t.is((await processesMentioning(doorbell)).length, 1, "the agent's signal reader runs");
  child.kill('SIGKILL');
  t.is((await child).signal, 'SIGKILL');
  await sleep(50);
  t.deepEqual(await processesMentioning(doorbell), [], 'the reader died with the agent');

  t.deepEqual(await programIds(cluster), programs, 'still attached');
  t.true(programs.every((id) => id !== undefined));
  for (const node of cluster.topology.nodes) t.true(existsSync(`${node.pinDir}/maps/auth`), 'still pinned');
  t.true(await cluster.topology.reaches(w1b, w2b, 'udp', 4), 'authenticated pair passes');
  t.true(await cluster.topology.reaches(w1a, w2a, 'icmp', 6), 'authenticated pair passes (the one about to expire)');
  t.false(await cluster.topology.reaches(w1a, w2b, 'udp', 4), 'unauthenticated pair dropped');
  t.false(await cluster.topology.reaches(w2a, w1b, 'tcp', 6), 'unauthenticated pair dropped');

  // The kernel alone enforces the expiry: the entries of w1a <-> w2a now expire 200 ms from now,
  // written to the pinned maps the dead agent left, and nothing runs to remove them.
  const shortExpiry = monotonicNowNs() + 200_000_000n;
  for (const node of cluster.topology.nodes) {
    const pinned = await Datapath.open({ pinDir: node.pinDir });
    if (w1a.node === node.id) pinned.setAuth(cluster.key(w1a, w2a), shortExpiry);
    if (w2a.node === node.id) pinned.setAuth(cluster.key(w2a, w1a), shortExpiry);
    pinned.close();
  }
  while (monotonicNowNs() <= shortExpiry) await sleep(Number((shortExpiry - monotonicNowNs()) / 1_000_000n) + 5);
  t.false(await cluster.topology.reaches(w1a, w2a, 'icmp', 6), 'expired with no agent alive: dropped');
  t.false(await cluster.topology.reaches(w1a, w2a, 'udp', 4));
  t.true(await cluster.topology.reaches(w1b, w2b, 'udp', 6));
});

privileged('re-installing over a running gate swaps programs with no ungated window and keeps auth entries', async (t) => {
  const cluster = await Cluster.start(t);
  // Restarts alternate between the two hooks where the kernel has both: a replace within each and
  // a switch each way (an upgrade to a TCX kernel, datapath.attach changed) must leave no window.
  const modes: AttachMode[] = (await tcxUsable()) ? ['tcx', 'tc', 'tc', 'tcx'] : ['tc'];
  const [w1a, w1b, w2a, w2b] = workloads(cluster);
  const agent1 = cluster.agent(1);
  cluster.authorize(w1b, w2b);
  const programsBefore = await programIds(cluster);
  const dropsBefore = agent1.counters().droppedNoEntry;

  // An unauthenticated sender at ~1 kHz for the whole time the agents restart, again and again:
  // a fixed number of restarts, however long they take on this machine, with the flood stopped
  // only after the last (its 60 s bound is a backstop, never reached).
  const token = `flood-${process.pid}`;
  const flood = w1a.probe.request<{ sent: number }>({ op: 'flood', dst: w2a.ipv4, token, rate: 1000, duration_ms: 60_000 });
  const RESTARTS = 2 * modes.length;
  await sleep(100);
  for (let restarts = 0; restarts < RESTARTS; restarts++) {
    for (const node of cluster.topology.nodes) {
      const restarted = await Datapath.open({ pinDir: node.pinDir, attach: modes[restarts % modes.length] });
      await restarted.install({ interfaces: [] }); // re-attaches every registered interface
      restarted.close();
    }
  }
  await sleep(100);
  await w1a.probe.request({ op: 'stop', token });
  const { sent } = await flood;
  await sleep(50);

  t.true(sent > 0, 'the flood ran');
  t.log(`${sent} packets sent during ${RESTARTS} restarts`);
  const { count } = await w2a.probe.request<{ count: number }>({ op: 'count', prefix: token });
  t.is(count, 0, 'no packet of the unauthenticated flow got through');
  t.is(agent1.counters().droppedNoEntry - dropsBefore, BigInt(sent), 'every packet was gated (and dropped)');

  const programsAfter = await programIds(cluster);
  t.true(programsAfter.every((id, i) => id !== undefined && id !== programsBefore[i]), 'new programs attached');
  for (const mode of modes) {
    const restarted = await Datapath.open({ pinDir: cluster.topology.nodes[0].pinDir, attach: mode });
    await restarted.install({ interfaces: [] });
    restarted.close();
    t.deepEqual(await gateHooks(cluster.w('w1a')), [mode, mode], `attached through ${mode} only`);
    t.true(await cluster.topology.reaches(w1b, w2b, 'udp', 4), `passes through ${mode}`);
    t.false(await cluster.topology.reaches(w1a, w2a, 'udp', 4), `gated through ${mode}`);
  }
  t.true(await cluster.topology.reaches(w1b, w2b, 'udp', 4), 'auth entries survived the restarts');
  t.true(await cluster.topology.reaches(w2b, w1b, 'tcp', 6));
  t.false(await cluster.topology.reaches(w1b, w2a, 'udp', 4));
  t.truthy(agent1.getAuth({ localIdentity: IDENTITY.w1b!, remoteIdentity: IDENTITY.w2b!, remoteNode: 2 }));
});

privileged('a later install on the same handle attaches only the new interface, with the programs already loaded', async (t) => {
  const cluster = await Cluster.start(t);
  const [w1a, w1b] = workloads(cluster);
  const agent1 = cluster.agent(1);
  await agent1.detach([w1b.hostInterface]);
  const before = await programIds(cluster);
  const generations = () => readdir(join(cluster.topology.nodes[0].pinDir, 'progs'));
  const generationsBefore = await generations();

  await agent1.install({ interfaces: [w1b.hostInterface] });
  const after = await programIds(cluster);
  t.deepEqual(await generations(), generationsBefore, 'no new program generation');
  t.is(before[2], undefined);
  t.is(after[0], before[0], "w1a's programs untouched");
  t.is(after[2], before[0], 'w1b gets the programs w1a runs');
  t.is(after[3], before[1]);
  t.truthy(agent1.bindInterface(w1b.hostInterface, { identity: IDENTITY.w1b!, node: 1 }));
  cluster.authorize(w1b, w1a);
  t.true(await cluster.topology.reaches(w1b, w1a, 'udp', 4));
  t.false(await cluster.topology.reaches(w1b, cluster.w('w2a'), 'udp', 4), 'and gates it');
});

privileged('`meshauth datapath uninstall` detaches everywhere and unpins', async (t) => {
  const cluster = await Cluster.start(t);
  const [w1a, , w2a] = workloads(cluster);
  for (const agent of cluster.agents) agent.close();
  t.false(await cluster.topology.reaches(w1a, w2a, 'udp', 4));

  const status = await execa(process.execPath, [builtCli(), 'datapath', 'status', '--pin-dir', cluster.topology.nodes[0].pinDir]);
  const attachedVia = (await tcxUsable()) ? 'tcx' : 'tc';
  t.like(JSON.parse(status.stdout), {
    interfaces: [
      { name: 'hw1a', netns: cluster.topology.nodes[0].netns, hooks: { ingress: attachedVia, egress: attachedVia } },
      { name: 'hw1b', netns: cluster.topology.nodes[0].netns, hooks: { ingress: attachedVia, egress: attachedVia } },
    ],
    authEntries: 0,
    config: { defaultMode: 'require' },
  });

  const [node1, node2] = cluster.topology.nodes;
  await execa(process.execPath, [builtCli(), 'datapath', 'install', '--attach', 'tc', '--pin-dir', node1.pinDir]);
  t.like((await attachedPrograms(new PinLayout(node1.pinDir), w1a.hostInterface)).ingress, { via: 'tc' }, '`datapath install --attach tc` re-attached through tc');
  const badAttach = await execa(process.execPath, [builtCli(), 'datapath', 'install', '--attach', 'xdp', '--pin-dir', node1.pinDir], { reject: false });
  t.is(badAttach.exitCode, 2);
  t.regex(badAttach.stderr, /--attach.*xdp/);
  await execa(process.execPath, [builtCli(), 'datapath', 'uninstall', '--pin-dir', node1.pinDir]);
  await Datapath.uninstall({ pinDir: node2.pinDir });
  t.false(existsSync(node1.pinDir));
  t.false(existsSync(node2.pinDir));
  t.deepEqual(await programIds(cluster), new Array(8).fill(undefined));
  t.true(await cluster.topology.reaches(w1a, w2a, 'udp', 4), 'no gate, no drop');

  const usage = await execa(process.execPath, [builtCli(), 'datapath', 'uninstall', '--pin-dir', 'relative'], {
    reject: false,
  });
  t.is(usage.exitCode, 2);
  t.regex(usage.stderr, /absolute path/);
});
