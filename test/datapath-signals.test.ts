// Privileged: "authentication required" signals and the per-CPU verdict counters, on a real kernel.
import { randomBytes } from 'node:crypto';
import { monotonicNowNs } from '../src/datapath/gate/datapath.js';
import { COUNTER_NAMES, type Counters, type Signal } from '../src/datapath/gate/layout.js';
import { sleep } from '../src/util/backoff.js';
import { Cluster, TEST_CAPACITIES } from './helpers/datapath-fixture.js';
import type { Workload } from './helpers/netns.js';
import { privileged } from './helpers/privileged.js';

/** Counter deltas; ARP and neighbour discovery ("exempt") depend on cache state, so they are left out. */
function delta(before: Counters, after: Counters): Partial<Counters> {
  const result: Partial<Counters> = {};
  for (const name of COUNTER_NAMES) if (name !== 'exempt' && after[name] !== before[name]) result[name] = after[name] - before[name];
  return result;
}

async function send(from: Workload, to: Workload, protocol: 'udp' | 'raw', family: 4 | 6, count = 1): Promise<void> {
  for (let i = 0; i < count; i++) {
    const token = randomBytes(6).toString('hex');
    await from.probe.request({ op: 'send', proto: protocol, dst: family === 4 ? to.ipv4 : to.ipv6, token });
  }
}

// Waits for what must happen; the bound only stops a broken run, so it is generous (a loaded CI
// machine, not the code, decides how long the kernel and the event loop take).
async function until(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('timed out');
    await sleep(2);
  }
}

function withoutTime(signal: Signal): Omit<Signal, 'ktimeNs'> {
  const { ktimeNs: _ktimeNs, ...rest } = signal;
  return rest;
}

privileged('a dropped pair is signalled once per rate-limit window, every packet is counted, and the doorbell delivers', async (t) => {
  // The safety poll, which also delivers signals, runs only every hour here: once the doorbell
  // reader is up (the warm-up below; bar the one fast poll already due then), signals arrive by
  // the doorbell or not at all. (Telling them apart by delay, < 200 ms against a 1 s poll, would
  // measure the machine.)
  const cluster = await Cluster.start(t, TEST_CAPACITIES, { safetyIntervalMs: 3_600_000 });
  const [agent1, agent2] = cluster.agents;
  const [a, b] = [cluster.w('w1a'), cluster.w('w2a')];
  const windowNs = 600_000_000n;
  agent1.setConfig({ signalIntervalNs: windowNs });
  const signals: Signal[] = [];
  const delaysMs: number[] = [];
  t.teardown(
    agent1.onSignal((signal) => {
      signals.push(signal);
      delaysMs.push(Number(monotonicNowNs() - signal.ktimeNs) / 1e6);
    }),
  );
  await until(() => agent1.signalDelivery === 'event'); // the reader's warm-up

  const before1 = agent1.counters();
  const before2 = agent2.counters();
  const sentAt = monotonicNowNs();
  await send(a, b, 'udp', 4, 5);
  await until(() => signals.length > 0);
  await sleep(30);
  t.is(signals.length, 1, 'five drops within one window: one signal');
  t.deepEqual(withoutTime(signals[0]!), {
    localIdentity: 101,
    remoteIdentity: 201,
    remoteNode: 2,
    authType: 1,
    protocol: 17,
    direction: 'egress',
    reason: 'noEntry',
    family: 4,
  });
  t.true(signals[0]!.ktimeNs >= sentAt && signals[0]!.ktimeNs <= monotonicNowNs(), 'stamped with the monotonic clock');
  t.deepEqual(delta(before1, agent1.counters()), { droppedNoEntry: 5n, signalsSent: 1n, signalsSuppressed: 4n });
  t.deepEqual(delta(before2, agent2.counters()), {}, 'nothing reached node 2');

  // The next window: one more signal.
  await sleep(Number((signals[0]!.ktimeNs + windowNs - monotonicNowNs()) / 1_000_000n) + 10);
  const before = agent1.counters();
  await send(a, b, 'udp', 4, 2);
  await until(() => signals.length > 1);
  t.deepEqual(delta(before, agent1.counters()), { droppedNoEntry: 2n, signalsSent: 1n, signalsSuppressed: 1n });

  // Authenticated: counted as allowed on both nodes, no signal.
  cluster.authorize(a, b, monotonicNowNs() + 3_600_000_000_000n);
  const allowedBefore = [agent1.counters(), agent2.counters()];
  t.true(await cluster.topology.reaches(a, b, 'udp', 4));
  t.deepEqual(delta(allowedBefore[0]!, agent1.counters()), { allowed: 1n });
  t.deepEqual(delta(allowedBefore[1]!, agent2.counters()), { allowed: 1n });

  // Expired (the gate checks expiry itself): the entry stays, its expiry passes, and the packet
  // is dropped as expired, signalled with that reason. The expiry is set once the traffic above
  // has passed (one set ahead of it would race a loaded machine's round trip).
  cluster.authorize(a, b, monotonicNowNs());
  await sleep(Number((signals[1]!.ktimeNs + windowNs - monotonicNowNs()) / 1_000_000n) + 10);
  const expiredBefore = agent1.counters();
  await send(a, b, 'udp', 4);
  await until(() => signals.length > 2);
  t.is(signals[2]!.reason, 'expired');
  t.deepEqual(delta(expiredBefore, agent1.counters()), { droppedExpired: 1n, signalsSent: 1n });
  await sleep(30);
  t.is(signals.length, 3);
  t.log(`delivery delays ${delaysMs.map((ms) => ms.toFixed(2)).join(', ')} ms`);
});

privileged('signals name the direction, protocol and family of the dropped packet', async (t) => {
  const cluster = await Cluster.start(t);
  const agent1 = cluster.agent(1);
  const received = agent1.signals();
  const next = async (): Promise<Omit<Signal, 'ktimeNs'>> => {
    // Generous, as until() is: the signal is awaited, not timed. The timer ends with the wait,
    // so that ten seconds of it do not outlive the test.
    const waited = new AbortController();
    const result = await Promise.race([received.next(), sleep(10_000, waited.signal).then(() => undefined)]).finally(() => waited.abort());
    if (!result || result.done) throw new Error('no signal');
    return withoutTime(result.value);
  };
  const [w1a, w1b, w2a, w2b] = ['w1a', 'w1b', 'w2a', 'w2b'].map((name) => cluster.w(name)) as [
    Workload,
    Workload,
    Workload,
    Workload,
  ];
  const common = { authType: 1, reason: 'noEntry' } as const;

  // Node 2 lets w2a out; node 1 drops it on the way in to w1a.
  cluster.agent(2).setAuth(cluster.key(w2a, w1a), monotonicNowNs() + 60_000_000_000n);
  await send(w2a, w1a, 'udp', 6);
  t.deepEqual(await next(), {
    ...common,
    localIdentity: 101,
    remoteIdentity: 201,
    remoteNode: 2,
    protocol: 17,
    direction: 'ingress',
    family: 6,
  });

  t.false(await cluster.topology.reaches(w1b, w2b, 'icmp', 6, 200));
  t.deepEqual(await next(), {
    ...common,
    localIdentity: 102,
    remoteIdentity: 202,
    remoteNode: 2,
    protocol: 58,
    direction: 'egress',
    family: 6,
  });

  await send(w1a, w2b, 'raw', 4);
  t.deepEqual(await next(), {
    ...common,
    localIdentity: 101,
    remoteIdentity: 202,
    remoteNode: 2,
    protocol: 253,
    direction: 'egress',
    family: 4,
  });

  t.false(await cluster.topology.reaches(w1b, w2a, 'tcp', 4, 200));
  t.deepEqual(await next(), {
    ...common,
    localIdentity: 102,
    remoteIdentity: 201,
    remoteNode: 2,
    protocol: 6,
    direction: 'egress',
    family: 4,
  });

  // Same-node pair, both hooks on one node: two keys, two signals.
  await send(w1a, w1b, 'udp', 4);
  t.like(await next(), { localIdentity: 101, remoteIdentity: 102, remoteNode: 1, direction: 'egress' });
  agent1.setAuth(cluster.key(w1a, w1b), monotonicNowNs() + 60_000_000_000n);
  await send(w1a, w1b, 'udp', 4);
  t.like(await next(), { localIdentity: 102, remoteIdentity: 101, remoteNode: 1, direction: 'ingress' });

  await received.return!();
  t.deepEqual(await received.next(), { value: undefined, done: true }, 'return() ends the iterator');
});
