// Privileged: the gate on a real kernel, two nodes × two workloads in network namespaces.
// Every protocol family is gated alike: dropped without an entry, passed with one, dropped
// again after the entry expires (the BPF program enforces expiry) and after it is deleted.
import { randomBytes } from 'node:crypto';
import { monotonicNowNs } from '../src/datapath/gate/datapath.js';
import type { Signal } from '../src/datapath/gate/layout.js';
import { sleep } from '../src/util/backoff.js';
import { inNetns } from '../src/netns/exec.js';
import { eventually } from './helpers/agents.js';
import { Cluster, IDENTITY } from './helpers/datapath-fixture.js';
import type { Family, Protocol } from './helpers/netns.js';
import { privileged } from './helpers/privileged.js';

const PROTOCOLS: Protocol[] = ['tcp', 'udp', 'icmp', 'raw'];

async function reachability(cluster: Cluster, from: string, to: string, family: Family) {
  const results = await Promise.all(
    PROTOCOLS.map((protocol) => cluster.topology.reaches(cluster.w(from), cluster.w(to), protocol, family)),
  );
  return Object.fromEntries(PROTOCOLS.map((protocol, i) => [protocol, results[i]]));
}

const everyProtocol = (value: boolean) => Object.fromEntries(PROTOCOLS.map((protocol) => [protocol, value]));

for (const family of [4, 6] as const) {
  privileged(`IPv${family}: TCP, UDP, ICMP and raw protocol 253 need an unexpired entry`, async (t) => {
    const cluster = await Cluster.start(t);
    const [a, b] = [cluster.w('w1a'), cluster.w('w2a')];

    t.deepEqual(await reachability(cluster, 'w1a', 'w2a', family), everyProtocol(false), 'no entry: dropped');

    cluster.authorize(a, b);
    t.deepEqual(await reachability(cluster, 'w1a', 'w2a', family), everyProtocol(true), 'entry: passes');
    t.deepEqual(await reachability(cluster, 'w2a', 'w1a', family), everyProtocol(true), 'both directions');

    // The entry stays and its expiry passes. Set once the checks above are done: an expiry set
    // ahead of them (it was 1.5 s) raced a loaded machine's probes.
    cluster.authorize(a, b, monotonicNowNs());
    t.deepEqual(await reachability(cluster, 'w1a', 'w2a', family), everyProtocol(false), 'expired: dropped');

    cluster.authorize(a, b);
    t.deepEqual(await reachability(cluster, 'w1a', 'w2a', family), everyProtocol(true), 're-authenticated');
    cluster.revoke(a, b);
    t.deepEqual(await reachability(cluster, 'w1a', 'w2a', family), everyProtocol(false), 'deleted: dropped');
  });
}

privileged('traffic between two workloads on the same node is gated at both ends', async (t) => {
  const cluster = await Cluster.start(t);
  const [a, b] = [cluster.w('w1a'), cluster.w('w1b')];
  const agent = cluster.agent(1);

  t.false(await cluster.topology.reaches(a, b, 'udp', 4));
  t.false(await cluster.topology.reaches(a, b, 'udp', 6));

  // Only the sender's side is authenticated: the receiver's gate (to_workload on hw1b) drops.
  agent.setAuth(cluster.key(a, b), monotonicNowNs() + 60_000_000_000n);
  const before = agent.counters();
  t.false(await cluster.topology.reaches(a, b, 'udp', 4));
  const after = agent.counters();
  t.is(after.allowed - before.allowed, 1n);
  t.is(after.droppedNoEntry - before.droppedNoEntry, 1n);

  cluster.authorize(a, b);
  t.deepEqual(await reachability(cluster, 'w1a', 'w1b', 4), everyProtocol(true));
  t.deepEqual(await reachability(cluster, 'w1b', 'w1a', 6), everyProtocol(true));
  t.false(await cluster.topology.reaches(a, cluster.w('w2b'), 'udp', 4), 'other pairs stay gated');
});

privileged('policy decides which pairs need authentication; unknown addresses follow the default', async (t) => {
  const cluster = await Cluster.start(t);
  const [a, b] = [cluster.w('w1a'), cluster.w('w2b')];
  const [agent1, agent2] = cluster.agents;

  agent1.setPolicy({ localIdentity: 101, remoteIdentity: 202, direction: 'egress' }, 0);
  agent2.setPolicy({ localIdentity: 202, remoteIdentity: 101, direction: 'ingress' }, 0);
  const before = agent1.counters();
  t.true(await cluster.topology.reaches(a, b, 'udp', 4), 'auth type none: passes without an entry');
  t.is(agent1.counters().notRequired - before.notRequired, 1n);
  t.false(await cluster.topology.reaches(b, a, 'udp', 4), 'the reverse direction is still required');

  agent1.deletePolicy({ localIdentity: 101, remoteIdentity: 202, direction: 'egress' });
  t.false(await cluster.topology.reaches(a, b, 'udp', 4));

  // w2b's addresses leave the ipcache: an unknown identity, dropped under the default...
  for (const agent of cluster.agents) {
    t.true(agent.deleteIpcache(b.ipv4));
    agent.setConfig({ defaultMode: 'require' });
  }
  const unknownBefore = agent1.counters().unknownIdentity;
  t.false(await cluster.topology.reaches(a, b, 'udp', 4));
  t.is(agent1.counters().unknownIdentity - unknownBefore, 1n);
  // ...and passed when the default allows.
  for (const agent of cluster.agents) agent.setConfig({ defaultMode: 'allow' });
  t.true(await cluster.topology.reaches(a, b, 'udp', 4));
  t.is(agent1.counters().unknownIdentity - unknownBefore, 2n);
  // A wider prefix gives the address an identity again (LPM): gated as that identity.
  for (const agent of cluster.agents) {
    agent.setConfig({ defaultMode: 'require' });
    agent.setIpcache('10.2.0.0/16', { identity: 202, node: 2 });
  }
  t.false(await cluster.topology.reaches(a, b, 'udp', 4));
  cluster.authorize(a, b);
  t.true(await cluster.topology.reaches(a, b, 'udp', 4));
});

privileged('IPv6 extension headers are skipped: gated by address, signalled with the upper-layer protocol', async (t) => {
  const cluster = await Cluster.start(t);
  const [a, b] = [cluster.w('w1a'), cluster.w('w2a')];
  const signals: Signal[] = [];
  cluster.agent(1).setConfig({ signalIntervalNs: 1_000_000n }); // one signal per packet here
  t.teardown(cluster.agent(1).onSignal((signal) => signals.push(signal)));
  const sendWithOptions = async (protocol: 'udp' | 'raw') => {
    const token = `${protocol}-dstopts-${randomBytes(6).toString('hex')}`;
    await a.probe.request({ op: 'send', proto: protocol, dst: b.ipv6, token, dstopts: true });
    return (await b.probe.request<{ ok: boolean }>({ op: 'wait', token, timeout_ms: 400 })).ok;
  };

  t.false(await sendWithOptions('udp'));
  t.false(await sendWithOptions('raw'));
  // Signals are awaited, not given a fixed 50 ms.
  await eventually(() => signals.length >= 2, 'two signals');
  t.deepEqual(
    signals.map((s) => [s.protocol, s.family]),
    [
      [17, 6],
      [253, 6],
    ],
    'the protocol behind the destination options header',
  );
  cluster.authorize(a, b);
  t.true(await sendWithOptions('udp'));
  t.true(await sendWithOptions('raw'));
});

// One UDP datagram with a forged IPv4 source, through a raw socket (the kernel fills in the IP
// checksum and id).
const SPOOF_SCRIPT = `
import socket, struct, sys
src, dst = sys.argv[1], sys.argv[2]
udp = struct.pack('!HHHH', 40000, 7002, 12, 0) + b'spof'
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(ip + udp, (dst, 0))
`;

privileged('the local identity is the interface binding: a forged source address borrows no pair', async (t) => {
  const cluster = await Cluster.start(t);
  const [a, neighbour, remote] = [cluster.w('w1a'), cluster.w('w1b'), cluster.w('w2a')];
  const agent = cluster.agent(1);
  const signals: Signal[] = [];
  agent.setConfig({ signalIntervalNs: 1_000_000n }); // one signal per packet here
  t.teardown(agent.onSignal((signal) => signals.push(signal)));
  cluster.authorize(neighbour, remote); // the neighbour's pair, which w1a must not be able to use
  const forge = async () => {
    const before = agent.counters();
    await inNetns(a.netns, 'python3', ['-c', SPOOF_SCRIPT, neighbour.ipv4, remote.ipv4]);
    // Until the gate has judged the datagram (a loaded machine's softirq may come late), then a
    // moment for anything it caused.
    await eventually(() => agent.counters().allowed + agent.counters().droppedNoEntry > before.allowed + before.droppedNoEntry, 'the datagram judged');
    await sleep(50);
    const after = agent.counters();
    return { allowed: after.allowed - before.allowed, dropped: after.droppedNoEntry - before.droppedNoEntry };
  };

  t.deepEqual(await forge(), { allowed: 0n, dropped: 1n }, 'judged as w1a, whose interface it left');
  await eventually(() => signals.length >= 1, 'the signal');
  t.deepEqual(
    signals.map((s) => [s.localIdentity, s.remoteIdentity]),
    [[IDENTITY.w1a, IDENTITY.w2a]],
    'and signalled as w1a',
  );
  t.deepEqual(agent.interfaceBinding(a.hostInterface), { identity: IDENTITY.w1a, node: 1 });

  // Unbound, the gate falls back to the source address: what a binding protects against.
  t.true(agent.bindInterface(a.hostInterface, undefined));
  t.is(agent.interfaceBinding(a.hostInterface), undefined);
  const spoofed = await forge();
  t.is(spoofed.dropped, 0n);
  // Passed as the neighbour, and whatever w2a answered went to the neighbour's address (its pair).
  t.true(spoofed.allowed >= 1n, 'judged as the neighbour');

  t.false(agent.bindInterface({ name: 'nosuchif0' }, { identity: 1, node: 1 }), 'only interfaces this handle attached');
  // Detaching clears the binding, so a later interface with the same ifindex starts unbound.
  t.true(agent.bindInterface(a.hostInterface, { identity: IDENTITY.w1a!, node: 1 }));
  await agent.detach([a.hostInterface]);
  await agent.install({ interfaces: [a.hostInterface] });
  t.is(agent.interfaceBinding(a.hostInterface), undefined);
});

privileged('an ipcache change decides the very next packet, though the gate memoizes ipcache answers', async (t) => {
  const cluster = await Cluster.start(t);
  const [a, b] = [cluster.w('w1a'), cluster.w('w2a')];
  const agent = cluster.agent(1);
  const signals: Signal[] = [];
  agent.setConfig({ signalIntervalNs: 1_000_000n });
  t.teardown(agent.onSignal((signal) => signals.push(signal)));
  cluster.authorize(a, b);
  for (let i = 0; i < 3; i++) t.true(await cluster.topology.reaches(a, b, 'udp', 4), 'memoized on every CPU that saw it');

  agent.setIpcache(b.ipv4, { identity: 299, node: 2 }); // b's address now names another workload
  t.false(await cluster.topology.reaches(a, b, 'udp', 4));
  await eventually(() => signals.length >= 1, 'the signal');
  t.deepEqual(signals.map((s) => [s.localIdentity, s.remoteIdentity]).slice(0, 1), [[IDENTITY.w1a, 299]]);

  agent.setIpcache(b.ipv4, { identity: IDENTITY.w2a!, node: 2 });
  t.true(await cluster.topology.reaches(a, b, 'udp', 4), 'and back');
});
