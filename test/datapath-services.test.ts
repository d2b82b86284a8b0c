// Privileged: Service traffic through kube-proxy's iptables DNAT, in the two-node topology of
// test/helpers/netns.ts. The gate sits before the DNAT on the client's side (from_workload sees
// the ClusterIP) and after the reverse NAT on the way back (to_workload sees the ClusterIP as the
// source), so it must judge the pair through conntrack: the real backend, not the VIP.
//
//   w1a, w1b (node 1) --ClusterIP 10.96.0.10 / fd00:96::10--> DNAT (node 1) --> w2a (node 2)
//   w1a (node 1)      --ClusterIP 10.96.0.11 / fd00:96::11--> DNAT (node 1) --> w1b (node 1)
//   node 2's host     --NodePort 10.200.0.1:30701-----------> DNAT + masquerade (node 1) --> w1a
import { execa } from 'execa';
import { monotonicNowNs } from '../src/datapath/gate/datapath.js';
import { AUTH_TYPE, NO_IDENTITY, RESERVED_IDENTITY, type Direction, type Signal } from '../src/datapath/gate/layout.js';
import { eventually } from './helpers/agents.js';
import { Cluster, IDENTITY } from './helpers/datapath-fixture.js';
import { inNetns } from '../src/netns/exec.js';
import type { Family, Workload } from './helpers/netns.js';
import { privileged } from './helpers/privileged.js';

const UDP_PORT = 7000; // netns-probe.py's listeners
const TCP_PORT = 7001;
const VIP = { remote: { 4: '10.96.0.10', 6: 'fd00:96::10' }, local: { 4: '10.96.0.11', 6: 'fd00:96::11' } } as const;
const SERVICE_CIDRS = ['10.96.0.0/16', 'fd00:96::/112'];
const NODE_PORT = 30701;

/**
 * kube-proxy's iptables mode, as it writes a ClusterIP Service with one endpoint: KUBE-SERVICES
 * jumps from PREROUTING (and OUTPUT) to a chain per service, which jumps to a chain per endpoint
 * that DNATs; a NodePort additionally marks for masquerading (KUBE-MARK-MASQ), done in
 * KUBE-POSTROUTING.
 */
function kubeProxyRules(family: Family, services: { name: string; vip: string; backend: string }[], nodePort?: { address: string; backend: string }): string {
  const wrap = (address: string) => (family === 6 ? `[${address}]` : address);
  const lines = [
    '*nat',
    ':KUBE-SERVICES - [0:0]',
    ':KUBE-NODEPORTS - [0:0]',
    ':KUBE-POSTROUTING - [0:0]',
    ':KUBE-MARK-MASQ - [0:0]',
    '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
    '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    '-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000',
    '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN',
    '-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0',
    '-A KUBE-POSTROUTING -j MASQUERADE --random-fully',
  ];
  for (const { name, vip, backend } of services) {
    for (const [proto, port] of [['udp', UDP_PORT], ['tcp', TCP_PORT]] as const) {
      const svc = `KUBE-SVC-${name}-${proto}`.toUpperCase().slice(0, 28);
      const sep = `KUBE-SEP-${name}-${proto}`.toUpperCase().slice(0, 28);
      lines.push(
        `:${svc} - [0:0]`,
        `:${sep} - [0:0]`,
        `-A KUBE-SERVICES -d ${vip}/${family === 4 ? 32 : 128} -p ${proto} -m ${proto} --dport ${port} -j ${svc}`,
        `-A ${svc} -j ${sep}`,
        `-A ${sep} -p ${proto} -m ${proto} -j DNAT --to-destination ${wrap(backend)}:${port}`,
      );
    }
  }
  if (nodePort) {
    lines.push(
      ':KUBE-EXT-NODEPORT - [0:0]',
      ':KUBE-SEP-NODEPORT - [0:0]',
      `-A KUBE-SERVICES -d ${nodePort.address}/${family === 4 ? 32 : 128} -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`,
      `-A KUBE-NODEPORTS -p tcp -m tcp --dport ${NODE_PORT} -j KUBE-EXT-NODEPORT`,
      '-A KUBE-EXT-NODEPORT -j KUBE-MARK-MASQ',
      '-A KUBE-EXT-NODEPORT -j KUBE-SEP-NODEPORT',
      `-A KUBE-SEP-NODEPORT -p tcp -m tcp -j DNAT --to-destination ${wrap(nodePort.backend)}:${TCP_PORT}`,
    );
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}

async function installKubeProxy(netns: string, family: Family, rules: string): Promise<void> {
  await execa('nsenter', [`--net=/run/netns/${netns}`, family === 4 ? 'iptables-restore' : 'ip6tables-restore', '--noflush'], { input: rules });
}

/** Node 1 runs kube-proxy's rules; both nodes' ipcache know the Service range. */
async function startWithServices(t: Parameters<typeof Cluster.start>[0], family: Family): Promise<Cluster> {
  const cluster = await Cluster.start(t);
  const [w1a, w1b, w2a] = [cluster.w('w1a'), cluster.w('w1b'), cluster.w('w2a')];
  const address = (w: Workload) => (family === 4 ? w.ipv4 : w.ipv6);
  const rules = kubeProxyRules(family, [
    { name: 'remote', vip: VIP.remote[family], backend: address(w2a) },
    { name: 'local', vip: VIP.local[family], backend: address(w1b) },
  ], family === 4 ? { address: '10.200.0.1', backend: address(w1a) } : undefined);
  await installKubeProxy(cluster.topology.node(1).netns, family, rules);
  for (const agent of cluster.agents) {
    agent.setConfig({ defaultMode: 'require' });
    for (const cidr of SERVICE_CIDRS) agent.setIpcache(cidr, { identity: RESERVED_IDENTITY.service, node: 0 });
  }
  return cluster;
}

async function tcpReaches(from: Workload, dst: string): Promise<boolean> {
  return (await from.probe.request<{ ok: boolean }>({ op: 'tcp', dst, timeout_ms: 400 })).ok;
}

async function udpReaches(from: Workload, dst: string, backend: Workload): Promise<boolean> {
  const token = `svc-${Math.random().toString(16).slice(2)}`;
  await from.probe.request({ op: 'send', proto: 'udp', dst, token });
  return (await backend.probe.request<{ ok: boolean }>({ op: 'wait', token, timeout_ms: 400 })).ok;
}

for (const family of [4, 6] as const) {
  privileged(`IPv${family}: a ClusterIP call passes for the authenticated backend pair and only for it, in both directions`, async (t) => {
    const cluster = await startWithServices(t, family);
    const [client, other, backend] = [cluster.w('w1a'), cluster.w('w1b'), cluster.w('w2a')];
    const vip = VIP.remote[family];

    cluster.authorize(client, backend);
    t.true(await tcpReaches(client, vip), 'TCP: the SYN, the SYN-ACK from the VIP and the ACK pass');
    t.true(await udpReaches(client, vip, backend), 'UDP reaches the backend');

    // w1b has no pair with the backend: its first packet leaves node 1 (the backend is not known
    // before the DNAT), and the backend's node drops it, judging the real pair.
    const [before1, before2] = cluster.agents.map((agent) => agent.counters());
    t.false(await tcpReaches(other, vip), 'TCP from an unauthenticated client');
    t.false(await udpReaches(other, vip, backend), 'UDP from an unauthenticated client');
    t.true(cluster.agent(1).counters().serviceDeferred > before1!.serviceDeferred, 'passed on to the DNAT at the client');
    t.true(cluster.agent(2).counters().droppedNoEntry > before2!.droppedNoEntry, 'dropped at the backend');
  });

  privileged(`IPv${family}: the reply from a ClusterIP is judged as the real backend on the client's node`, async (t) => {
    const cluster = await startWithServices(t, family);
    const [client, backend] = [cluster.w('w1a'), cluster.w('w2a')];
    const agent1 = cluster.agent(1);
    const signals: Signal[] = [];
    agent1.setConfig({ signalIntervalNs: 1_000_000n });
    t.teardown(agent1.onSignal((signal) => signals.push(signal)));

    // Only the backend's node holds the pair: the SYN passes there, the SYN-ACK comes back with
    // the VIP as its source and must be judged as (client, backend) on node 1, which has no entry.
    cluster.agent(2).setAuth(cluster.key(backend, client), monotonicNowNs() + 60_000_000_000n);
    t.false(await tcpReaches(client, VIP.remote[family]));
    await eventually(() => signals.some((s) => s.direction === 'ingress'), 'a signal for the reply');
    const reply = signals.find((s) => s.direction === 'ingress')!;
    t.deepEqual([reply.localIdentity, reply.remoteIdentity, reply.remoteNode], [IDENTITY.w1a, IDENTITY.w2a, 2], 'the real backend, not the VIP');

    cluster.agent(1).setAuth(cluster.key(client, backend), monotonicNowNs() + 60_000_000_000n);
    t.true(await tcpReaches(client, VIP.remote[family]), 'with the pair on both nodes');
  });

  privileged(`IPv${family}: a ClusterIP whose backend runs on the client's own node`, async (t) => {
    const cluster = await startWithServices(t, family);
    const [client, backend, other] = [cluster.w('w1a'), cluster.w('w1b'), cluster.w('w2a')];
    const vip = VIP.local[family];

    t.false(await tcpReaches(client, vip), 'no pair');
    t.false(await udpReaches(client, vip, backend), 'no pair');
    cluster.authorize(client, backend);
    t.true(await tcpReaches(client, vip));
    t.true(await udpReaches(client, vip, backend));
    cluster.authorize(client, other); // another pair of the client's does not open this one
    cluster.revoke(client, backend);
    t.false(await tcpReaches(client, vip), 'revoked');
  });
}

/** One TCP connect from a node's own network namespace (its host), from `source` if given. */
async function hostConnects(netns: string, dst: string, port: number, source?: string): Promise<boolean> {
  const script = 'import socket, sys\nsocket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.4, source_address=(sys.argv[3], 0) if len(sys.argv) > 3 else None).close()';
  return inNetns(netns, 'python3', ['-c', script, dst, String(port), ...(source ? [source] : [])]).then(
    () => true,
    () => false,
  );
}

privileged('reserved peers through NodePort and probes: the client before the masquerade is judged, the host is exempt', async (t) => {
  const cluster = await startWithServices(t, 4);
  const [n1, n2] = [cluster.topology.node(1).netns, cluster.topology.node(2).netns];
  const target = cluster.w('w1a');
  const agent = cluster.agent(1);
  const local = IDENTITY.w1a!;
  // What node 1's agent writes (src/agent/reserved-plan.ts): its own addresses are the host (the
  // node address and the gateway address on the workload's interface), node 2's is a remote node,
  // everything else the world; the host is exempt (the default cluster.policy.exempt).
  agent.setIpcache('0.0.0.0/0', { identity: RESERVED_IDENTITY.world, node: 0 });
  agent.setIpcache('10.200.0.1', { identity: RESERVED_IDENTITY.host, node: 1 });
  agent.setIpcache('10.1.1.1', { identity: RESERVED_IDENTITY.host, node: 1 });
  agent.setIpcache('10.200.0.2', { identity: RESERVED_IDENTITY.remoteNode, node: 2 });
  const exempt = (remoteIdentity: number) => {
    for (const direction of ['egress', 'ingress'] as Direction[]) agent.setPolicy({ localIdentity: local, remoteIdentity, direction }, AUTH_TYPE.none);
  };
  const unexempt = (remoteIdentity: number) => {
    for (const direction of ['egress', 'ingress'] as Direction[]) agent.deletePolicy({ localIdentity: local, remoteIdentity, direction });
  };
  exempt(RESERVED_IDENTITY.host);
  // A client outside the cluster, behind node 2.
  await inNetns(n2, 'ip', ['addr', 'add', '192.0.2.50/32', 'dev', 'nlink']);
  await inNetns(n1, 'ip', ['route', 'add', '192.0.2.50/32', 'via', '10.200.0.2']);

  t.true(await hostConnects(n1, target.ipv4, TCP_PORT), "a kubelet probe: node 1's host to its workload");
  unexempt(RESERVED_IDENTITY.host);
  t.false(await hostConnects(n1, target.ipv4, TCP_PORT), 'the host is dropped once it is no longer exempt');
  exempt(RESERVED_IDENTITY.host);

  // NodePort: node 1 DNATs to w1a and masquerades, so w1a's gate sees a host address as the
  // source; conntrack names the real client.
  const before = agent.counters();
  t.false(await hostConnects(n2, '10.200.0.1', NODE_PORT), 'from another node');
  t.false(await hostConnects(n2, '10.200.0.1', NODE_PORT, '192.0.2.50'), 'from the world');
  t.true(agent.counters().droppedNoEntry > before.droppedNoEntry);
  const flows = await inNetns(n1, 'conntrack', ['-L', '-p', 'tcp', '--orig-port-dst', String(NODE_PORT)]);
  t.regex(flows.stdout, /dst=10\.200\.0\.1 .*src=10\.1\.1\.2 dst=10\.1\.1\.1 /, 'masqueraded: the workload saw a host address');
  t.true(await hostConnects(n1, '10.200.0.1', NODE_PORT), "node 1's own host through the NodePort is the host");

  exempt(RESERVED_IDENTITY.remoteNode);
  t.true(await hostConnects(n2, '10.200.0.1', NODE_PORT), 'remote nodes exempt: passes');
  t.false(await hostConnects(n2, '10.200.0.1', NODE_PORT, '192.0.2.50'), 'the world still dropped');
  exempt(RESERVED_IDENTITY.world);
  t.true(await hostConnects(n2, '10.200.0.1', NODE_PORT, '192.0.2.50'));
});

privileged('an address of a pod range that no endpoint holds is unknown, not world', async (t) => {
  const cluster = await Cluster.start(t);
  const [a, b] = [cluster.w('w1a'), cluster.w('w2b')];
  const agent = cluster.agent(1);
  agent.setConfig({ defaultMode: 'require' });
  agent.setIpcache('0.0.0.0/0', { identity: RESERVED_IDENTITY.world, node: 0 });
  agent.setPolicy({ localIdentity: IDENTITY.w1a!, remoteIdentity: RESERVED_IDENTITY.world, direction: 'egress' }, AUTH_TYPE.none);
  // Node 2 lets w1a's datagrams in unauthenticated: only node 1's verdict is under test.
  cluster.agent(2).setPolicy({ localIdentity: IDENTITY.w2b!, remoteIdentity: IDENTITY.w1a!, direction: 'ingress' }, AUTH_TYPE.none);
  t.true(agent.deleteIpcache(b.ipv4));
  t.true(await cluster.topology.reaches(a, b, 'udp', 4), 'outside every range: world, which this policy lets through');

  agent.setIpcache('10.2.0.0/16', { identity: NO_IDENTITY, node: 0 });
  const before = agent.counters().unknownIdentity;
  t.false(await cluster.topology.reaches(a, b, 'udp', 4), "inside node 2's pod range: unknown, dropped");
  t.is(agent.counters().unknownIdentity - before, 1n);
});
