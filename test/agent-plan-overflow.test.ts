// Privileged: a plan larger than a pinned map's capacity (#14). The real kernel refuses the entries
// that do not fit (E2BIG); the agent's PlanWriter counts and logs that, keeps the rest of the delta,
// and writes what was refused once deletions have made room — it never throws.
import { rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { RawMap } from 'bpf';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { PlanMetrics } from '../src/agent/plan-metrics.js';
import { PlanWriter } from '../src/agent/plan-writer.js';
import { Datapath } from '../src/datapath/gate/datapath.js';
import { openPinnedMap } from '../src/datapath/gate/bpf-maps.js';
import { encodeIpcacheHostKey, encodePolicyKey, MAP_SPECS, type IpcacheEntry } from '../src/datapath/gate/layout.js';
import { PinLayout } from '../src/datapath/gate/pin-layout.js';
import { parseIpPrefix } from '../src/datapath/ip-prefix.js';
import { TEST_CAPACITIES } from './helpers/datapath-fixture.js';
import { privilegedConcurrent } from './helpers/privileged.js';

const CAPACITY = 4;

privilegedConcurrent('entries a full map refuses are counted and logged, not fatal, and written once there is room', async (t) => {
  const pinDir = `/sys/fs/bpf/meshauth-test-${randomBytes(4).toString('hex')}`;
  t.teardown(() => rm(pinDir, { recursive: true, force: true }));
  const datapath = await Datapath.open({ pinDir, capacities: { ...TEST_CAPACITIES, ipcache_hosts4: CAPACITY } });
  t.teardown(() => datapath.close());
  const registry = new Registry();
  const metrics = new PlanMetrics(registry);
  const logs: { level: number; msg: string }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logs.push(JSON.parse(chunk.toString()) as { level: number; msg: string });
      done();
    },
  });
  const writer = new PlanWriter(datapath, metrics, pino(sink));
  const layout = new PinLayout(pinDir);
  const hosts = new RawMap(openPinnedMap(layout.mapPath('ipcache_hosts4'), MAP_SPECS.ipcache_hosts4));
  const policy = new RawMap(openPinnedMap(layout.mapPath('policy'), MAP_SPECS.policy));
  t.teardown(() => {
    hosts.ref.close();
    policy.ref.close();
  });
  const inMap = (n: number) => hosts.get(encodeIpcacheHostKey(parseIpPrefix(`10.0.0.${n}`))) !== undefined;
  const entry = (n: number): [string, IpcacheEntry] => [`10.0.0.${n}/32`, { identity: n, node: 1 }];
  const failures = async () => (await registry.getSingleMetricAsString('meshauth_datapath_write_failures_total')).match(/map="ipcache"} (\d+)/)?.[1];

  // Six addresses, room for four: the delta is applied as far as it fits, the policy part too.
  t.notThrows(() =>
    writer.write({
      ipcache: { set: [1, 2, 3, 4, 5, 6].map(entry), deleted: [] },
      policy: { set: [{ key: { localIdentity: 1, remoteIdentity: 2, direction: 'egress' }, authType: 1 }], deleted: [] },
    }),
  );
  t.deepEqual([1, 2, 3, 4, 5, 6].filter(inMap), [1, 2, 3, 4]);
  t.not(policy.get(encodePolicyKey({ localIdentity: 1, remoteIdentity: 2, direction: 'egress' })), undefined, 'the rest of the delta is applied');
  t.is(writer.pending, 2);
  t.is(await failures(), '1', 'counted (the rest waits for room rather than failing one by one)');
  const logged = logs.filter((line) => line.level === 50 && /refused plan entries/.test(line.msg));
  t.is(logged.length, 1, 'logged once for the delta');

  // Two addresses leave: the refused ones are written with the next delta.
  writer.write({ ipcache: { set: [], deleted: ['10.0.0.1/32', '10.0.0.2/32'] }, policy: { set: [], deleted: [] } });
  t.deepEqual([1, 2, 3, 4, 5, 6].filter(inMap), [3, 4, 5, 6]);
  t.is(writer.pending, 0);
  // A refused entry that is no longer wanted is dropped, not written later.
  writer.write({ ipcache: { set: [entry(7)], deleted: [] }, policy: { set: [], deleted: [] } });
  t.is(writer.pending, 1);
  writer.write({ ipcache: { set: [], deleted: ['10.0.0.7/32'] }, policy: { set: [], deleted: [] } });
  t.is(writer.pending, 0);
  t.false(inMap(7));
});
