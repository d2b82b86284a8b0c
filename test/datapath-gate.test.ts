// Privileged: the gate on a real kernel, two nodes × two workloads in network namespaces.
// Every protocol family is gated alike: dropped without an entry, passed with one, dropped
// again after the entry expires (the BPF program enforces expiry) and after it is deleted.
import { randomBytes } from 'node:crypto';
import { Datapath, monotonicNowNs } from '../src/datapath/gate/datapath.js';
import { COUNTER_NAMES, type Counters, type Signal } from '../src/datapath/gate/layout.js';
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

// One UDP datagram with a forged source, through a raw socket that takes the IP header as given
// (IPv4: the kernel fills in the checksum and id; IPv6 has no header checksum).
const SPOOF_SCRIPT = `
import socket, struct, sys
src, dst = sys.argv[1], sys.argv[2]
if ':' in dst:
    payload = b'spof'
    udp = struct.pack('!HHHH', 40000, 7002, 8 + len(payload), 0)
    pseudo = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + struct.pack('!I3xB', len(udp) + len(payload), 17)
    data = pseudo + udp + payload
    total = sum(struct.unpack('!%dH' % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xffff) + (total >> 16)
    udp = udp[:6] + struct.pack('!H', ~total & 0xffff or 0xffff)
    ip = struct.pack('!IHBB16s16s', 6 << 28, len(udp) + len(payload), 17, 64, socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst))
    socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(ip + udp + payload, (dst, 0))
else:
    udp = struct.pack('!HHHH', 40000, 7002, 12, 0) + b'spof'
    ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(ip + udp, (dst, 0))
`;

/**
 * Sends one forged datagram from `netns`; returns the counters' changes once the gate judged it
 * (but for exempt ARP and neighbour discovery, which may pass meanwhile).
 */
async function forge(agent: Datapath, netns: string, src: string, dst: string): Promise<Partial<Counters>> {
  const before = agent.counters();
  const judged = COUNTER_NAMES.filter((name) => !name.startsWith('signals') && name !== 'exempt');
  const total = (c: Counters) => judged.reduce((sum, name) => sum + c[name], 0n);
  await inNetns(netns, 'python3', ['-c', SPOOF_SCRIPT, src, dst]);
  // Until the gate has judged the datagram (a loaded machine's softirq may come late), then a
  // moment for anything it caused.
  await eventually(() => total(agent.counters()) > total(before), 'the datagram judged');
  await sleep(50);
  const after = agent.counters();
  const changed = COUNTER_NAMES.filter((name) => name !== 'exempt' && after[name] !== before[name]);
  return Object.fromEntries(changed.map((name) => [name, after[name] - before[name]]));
}

for (const family of [4, 6] as const) {
  privileged(`IPv${family}: a workload sends only from its own addresses: a neighbour's or any other source is dropped and counted`, async (t) => {
    const cluster = await Cluster.start(t);
    const [a, neighbour, remote] = [cluster.w('w1a'), cluster.w('w1b'), cluster.w('w2a')];
    const agent = cluster.agent(1);
    const ip = (w: typeof a) => (family === 4 ? w.ipv4 : w.ipv6);
    const signals: Signal[] = [];
    agent.setConfig({ signalIntervalNs: 1_000_000n }); // one signal per packet here
    t.teardown(agent.onSignal((signal) => signals.push(signal)));
    cluster.authorize(neighbour, remote); // the neighbour's pair, which w1a must not be able to use

    t.deepEqual(await forge(agent, a.netns, ip(neighbour), ip(remote)), { droppedSpoofedSource: 1n }, "as the neighbour: dropped before any pair is looked up");
    const stranger = family === 4 ? '10.1.1.99' : 'fd00:1:1::99';
    t.deepEqual(await forge(agent, a.netns, stranger, ip(remote)), { droppedSpoofedSource: 1n }, 'as an address of nobody: dropped');
    if (family === 6) {
      // A link-local source reaches nothing past this host: an unknown identity, not a spoof.
      t.deepEqual(await forge(agent, a.netns, 'fe80::99', ip(remote)), { unknownIdentity: 1n }, 'from a link-local address');
    }
    t.deepEqual(await forge(agent, a.netns, ip(a), ip(remote)), { droppedNoEntry: 1n, signalsSent: 1n }, 'as itself: gated as itself');
    await eventually(() => signals.length >= 1, 'the signal');
    t.deepEqual(signals.map((s) => [s.localIdentity, s.remoteIdentity]), [[IDENTITY.w1a, IDENTITY.w2a]], 'and signalled as w1a');
    t.true(await cluster.topology.reaches(neighbour, remote, 'udp', family), "the neighbour's own traffic passes");
  });
}

privileged('bindings: several endpoints share an interface, a rebinding replaces the addresses, an unbound interface sends nothing', async (t) => {
  const cluster = await Cluster.start(t);
  const [a, b, remote] = [cluster.w('w1a'), cluster.w('w1b'), cluster.w('w2a')];
  const agent = cluster.agent(1);
  t.deepEqual(agent.interfaceBinding(a.hostInterface), cluster.addresses(a));
  cluster.authorize(a, remote);
  t.true(await cluster.topology.reaches(a, remote, 'udp', 4));

  // w1a's IPv4 address now belongs to w1b's identity on the same interface (two endpoints behind one
  // interface): it is judged as w1b, whose pair it does not have, while its IPv6 address is still w1a's.
  agent.bindInterface(a.hostInterface, [
    { address: a.ipv4, identity: IDENTITY.w1b!, node: 1 },
    { address: a.ipv6, identity: IDENTITY.w1a!, node: 1 },
  ]);
  t.false(await cluster.topology.reaches(a, remote, 'udp', 4), 'IPv4: judged as w1b');
  t.true(await cluster.topology.reaches(a, remote, 'udp', 6), 'IPv6: still w1a');

  agent.bindInterface(a.hostInterface, [{ address: a.ipv6, identity: IDENTITY.w1a!, node: 1 }]);
  t.deepEqual(agent.interfaceBinding(a.hostInterface), [{ address: a.ipv6, identity: IDENTITY.w1a, node: 1 }]);
  t.deepEqual(await forge(agent, a.netns, a.ipv4, remote.ipv4), { droppedSpoofedSource: 1n }, 'an address no longer bound');

  t.true(agent.bindInterface(a.hostInterface, []));
  t.false(await cluster.topology.reaches(a, remote, 'udp', 6), 'unbound: nothing passes');
  t.false(agent.bindInterface({ name: 'nosuchif0' }, cluster.addresses(a)), 'only interfaces this handle attached');
  t.throws(() => agent.bindInterface(a.hostInterface, [{ address: '10.1.1.0/24', identity: 1, node: 1 }]), { instanceOf: RangeError });

  // Detaching clears the binding, so a later interface with the same ifindex starts unbound; a
  // handle opened later finds the pinned bindings.
  t.true(agent.bindInterface(a.hostInterface, cluster.addresses(a)));
  t.true(agent.bindInterface(b.hostInterface, cluster.addresses(b)));
  await agent.detach([a.hostInterface]);
  await agent.install({ interfaces: [a.hostInterface] });
  t.deepEqual(agent.interfaceBinding(a.hostInterface), []);
  const reopened = await Datapath.open({ pinDir: agent.pinDir });
  t.teardown(() => reopened.close());
  await reopened.install({ interfaces: [b.hostInterface] });
  t.deepEqual(reopened.interfaceBinding(b.hostInterface), cluster.addresses(b));
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

// An ICMPv6 neighbour solicitation (type 135, hop limit 255; the kernel fills in the checksum).
const NEIGHBOUR_SOLICITATION_SCRIPT = `
import socket, sys
dst, target = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.sendto(bytes([135, 0, 0, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, target), (dst, 0, 0, 0))
`;

privileged('neighbour discovery is exempt only where it stays on the link, not to any destination', async (t) => {
  const cluster = await Cluster.start(t);
  const [a, remote] = [cluster.w('w1a'), cluster.w('w2a')];
  const agent = cluster.agent(1);
  const solicit = async (dst: string, target: string) => {
    const before = agent.counters();
    await inNetns(a.netns, 'python3', ['-c', NEIGHBOUR_SOLICITATION_SCRIPT, dst, target]);
    return before;
  };
  const gateway = a.ipv6.replace(/::2$/, '::1'); // the host's end of w1a's link, its IPv6 next hop

  // Shaped like ND, addressed to another node's workload: gated like any packet (no pair: dropped).
  const before = await solicit(remote.ipv6, remote.ipv6);
  await eventually(() => agent.counters().droppedNoEntry > before.droppedNoEntry, 'the solicitation judged');
  t.is(agent.counters().droppedNoEntry - before.droppedNoEntry, 1n);

  // ND's own addresses pass: the solicited-node group of the host's address, and the host itself.
  for (const dst of ['ff02::1:ff00:1', gateway]) {
    const exempt = (await solicit(dst, gateway)).exempt;
    await eventually(() => agent.counters().exempt > exempt, `a solicitation to ${dst} exempt`);
  }
  t.false(await cluster.topology.reaches(a, remote, 'udp', 6), 'and the pair is still gated');
  cluster.authorize(a, remote);
  t.true(await cluster.topology.reaches(a, remote, 'udp', 6));
});
