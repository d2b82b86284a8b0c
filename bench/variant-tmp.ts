import { execa } from 'execa';
import { writeFile } from 'node:fs/promises';
import { Datapath, monotonicNowNs } from '../src/datapath/datapath.js';
import { attachedProgram } from '../src/datapath/loader.js';
import { sleep } from '../src/util/backoff.js';
import { Topology } from '../test/helpers/netns.js';
import { IDENTITY } from '../test/helpers/datapath-fixture.js';
const cleanups: (() => unknown)[] = [];
await writeFile('/proc/sys/kernel/bpf_stats_enabled', '1');
try {
  const topo = await Topology.create({ teardown: (fn) => cleanups.push(fn) });
  const [c, s] = [topo.workload('w1a'), topo.workload('w2a')];
  const srv = execa('nsenter', [`--net=/run/netns/${s.netns}`, 'iperf3', '-s'], { reject: false });
  cleanups.unshift(() => srv.kill('SIGKILL'));
  await sleep(300);
  for (const obj of process.argv.slice(2)) {
    const dps: Datapath[] = [];
    for (const node of topo.nodes) {
      const dp = await Datapath.open({ pinDir: node.pinDir, objectPath: obj });
      for (const w of topo.workloads) { dp.setIpcache(w.ipv4, { identity: IDENTITY[w.name]!, node: w.node }); dp.setIpcache(w.ipv6, { identity: IDENTITY[w.name]!, node: w.node }); }
      await dp.install({ interfaces: topo.workloads.filter((w) => w.node === node.id).map((w) => w.hostInterface) });
      dps.push(dp);
    }
    dps[0]!.setAuth({ localIdentity: 101, remoteIdentity: 201, remoteNode: 2 }, monotonicNowNs() + 10n ** 12n);
    dps[1]!.setAuth({ localIdentity: 201, remoteIdentity: 101, remoteNode: 1 }, monotonicNowNs() + 10n ** 12n);
    const ids = new Set<number>();
    for (const w of topo.workloads) for (const h of ['ingress', 'egress'] as const) { const p = await attachedProgram(w.hostInterface, h); if (p) ids.add(p.id); }
    const stats = async () => { let t = 0, n = 0; for (const id of ids) { const j = JSON.parse((await execa('bpftool', ['prog', 'show', 'id', String(id), '-j'])).stdout); t += j.run_time_ns ?? 0; n += j.run_cnt ?? 0; } return [t, n]; };
    const res: string[] = [];
    for (let i = 0; i < 3; i++) {
      const [t0, n0] = await stats();
      await execa('nsenter', [`--net=/run/netns/${c.netns}`, 'iperf3', '-c', s.ipv4, '-t', '1', '-u', '-b', '0', '-l', '64']);
      const [t1, n1] = await stats();
      res.push(((t1! - t0!) / (n1! - n0!)).toFixed(1));
    }
    console.log(obj, res.join(' '));
    for (const dp of dps) await dp.uninstall();
  }
} finally {
  for (const f of cleanups) await f();
  await writeFile('/proc/sys/kernel/bpf_stats_enabled', '0');
}
