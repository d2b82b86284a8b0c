// Privileged: a remote identity counts only if its packet came the way that identity's node sends
// (#16, item 1). Two nodes of the gate fixture; WireGuard between them through wireguard-go on a
// tun device (this machine's kernel has no WireGuard module; the ingress ifindex the gate checks
// is the same for both). A packet with an authenticated peer's source address is dropped, under a
// verdict of its own, when it was injected on the underlay or originated by the destination's own
// host; the peer's real packets, decrypted on the WireGuard device, pass.
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { interfaceIndex } from '../src/datapath/gate/loader.js';
import { COUNTER_NAMES, type Counters } from '../src/datapath/gate/layout.js';
import type { Datapath } from '../src/datapath/gate/datapath.js';
import { sleep } from '../src/util/backoff.js';
import { eventually } from './helpers/agents.js';
import { Cluster } from './helpers/datapath-fixture.js';
import { inNetns } from '../src/netns/exec.js';
import type { Workload } from './helpers/netns.js';
import { privileged } from './helpers/privileged.js';

// One UDP datagram with a forged IPv4 source through a raw socket (the kernel fills in checksum and id).
const FORGE_SCRIPT = `
import socket, struct, sys
src, dst = sys.argv[1], sys.argv[2]
udp = struct.pack('!HHHH', 40000, 7002, 12, 0) + b'spof'
ip = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst))
socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).sendto(ip + udp, (dst, 0))
`;

/** Sends one forged datagram from `netns`; the verdict counters' changes once the gate judged it. */
async function forge(gate: Datapath, netns: string, src: string, dst: string): Promise<Partial<Counters>> {
  const judged = COUNTER_NAMES.filter((name) => !name.startsWith('signals') && name !== 'exempt');
  const total = (c: Counters) => judged.reduce((sum, name) => sum + c[name], 0n);
  const before = gate.counters();
  await inNetns(netns, 'python3', ['-c', FORGE_SCRIPT, src, dst]);
  await eventually(() => total(gate.counters()) > total(before), 'the datagram judged');
  await sleep(50);
  const after = gate.counters();
  return Object.fromEntries(judged.filter((name) => after[name] !== before[name]).map((name) => [name, after[name] - before[name]]));
}

/**
 * wireguard-go between the two node namespaces, one peer each (allowed-ips: the other node's pod
 * CIDRs), and the pod routes moved from the underlay onto it. Keys are generated into 0600 files.
 */
async function wireguardBetweenNodes(cluster: Cluster, t: { teardown(fn: () => Promise<void>): void }): Promise<[string, string]> {
  // wireguard-go's control sockets (/var/run/wireguard/<name>.sock) are shared by all namespaces.
  const names: [string, string] = [`mg${cluster.topology.tag}1`, `mg${cluster.topology.tag}2`];
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-provenance-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const keys: { privateFile: string; publicKey: string }[] = [];
  for (const node of cluster.topology.nodes) {
    const privateKey = (await execa('wg', ['genkey'])).stdout.trim();
    const privateFile = join(dir, `n${node.id}.key`);
    await writeFile(privateFile, `${privateKey}\n`, { mode: 0o600 });
    keys.push({ privateFile, publicKey: (await execa('wg', ['pubkey'], { input: privateKey })).stdout.trim() });
    const name = names[node.id - 1]!;
    const child = spawn('nsenter', [`--net=/run/netns/${node.netns}`, 'wireguard-go', name], {
      env: { ...process.env, WG_PROCESS_FOREGROUND: '1' },
      stdio: 'ignore',
    });
    t.teardown(async () => {
      child.kill();
      await rm(`/var/run/wireguard/${name}.sock`, { force: true });
    });
    await eventually(async () => (await interfaceIndex({ name, netns: node.netns })) !== undefined, `${name} in n${node.id}`);
  }
  for (const node of cluster.topology.nodes) {
    const other = node.id === 1 ? 2 : 1;
    const name = names[node.id - 1]!;
    const run = (command: string, args: string[]) => inNetns(node.netns, command, args);
    await run('wg', ['set', name, 'listen-port', String(51820 + node.id), 'private-key', keys[node.id - 1]!.privateFile]);
    await run('wg', ['set', name, 'peer', keys[other - 1]!.publicKey, 'allowed-ips', `10.${other}.0.0/16`, 'endpoint', `10.200.0.${other}:${51820 + other}`]);
    await run('ip', ['link', 'set', name, 'up']);
    await run('ip', ['route', 'replace', `10.${other}.0.0/16`, 'dev', name]);
  }
  return names;
}

const udpPasses = (cluster: Cluster, from: Workload, to: Workload) => cluster.topology.reaches(from, to, 'udp', 4);

privileged('WireGuard: only packets decrypted on the WireGuard device carry another node\'s identity', async (t) => {
  t.timeout(120_000);
  const cluster = await Cluster.start(t);
  const [w1a, w2a] = [cluster.w('w1a'), cluster.w('w2a')];
  const [gate1, gate2] = cluster.agents;
  const [n1, n2] = cluster.topology.nodes;
  cluster.authorize(w1a, w2a);
  t.true(await udpPasses(cluster, w2a, w1a), "transport none: the CNI's underlay carries the pair (its anti-spoofing is all there is)");

  const devices = await wireguardBetweenNodes(cluster, t);
  const wgIfindex = async (node: 1 | 2) => (await interfaceIndex({ name: devices[node - 1]!, netns: cluster.topology.node(node).netns }))!;
  gate1.setConfig({ transport: 'wireguard', wireguardIfindex: await wgIfindex(1) });
  gate2.setConfig({ transport: 'wireguard', wireguardIfindex: await wgIfindex(2) });
  t.true(await udpPasses(cluster, w2a, w1a), 'decrypted on the WireGuard device: passes');
  t.true(await udpPasses(cluster, w1a, w2a), 'both ways');

  // The peer's address, from the destination's own host: the pair is authenticated, the path is not.
  t.deepEqual(await forge(gate1, n1.netns, w2a.ipv4, w1a.ipv4), { droppedUnverifiedArrival: 1n }, "originated by w1a's host");
  // ...and injected on the underlay (n2 routes 10.1.0.0/16 over WireGuard now: this one goes around it).
  await inNetns(n2.netns, 'ip', ['route', 'add', `${w1a.ipv4}/32`, 'via', '10.200.0.1', 'dev', 'nlink']);
  t.deepEqual(await forge(gate1, n2.netns, w2a.ipv4, w1a.ipv4), { droppedUnverifiedArrival: 1n }, 'injected on the underlay');
  t.false(await udpPasses(cluster, w2a, w1a), "even the peer's real packets, when they come around the tunnel");
  await inNetns(n2.netns, 'ip', ['route', 'del', `${w1a.ipv4}/32`]);
  t.true(await udpPasses(cluster, w2a, w1a), 'through the tunnel again: passes');

  // A gate whose WireGuard device is another interface, or none configured: fail closed.
  gate1.setConfig({ wireguardIfindex: 0 });
  t.false(await udpPasses(cluster, w2a, w1a), 'no WireGuard device configured');
  gate1.setConfig({ transport: 'unset', wireguardIfindex: await wgIfindex(1) });
  t.false(await udpPasses(cluster, w2a, w1a), 'no transport configured');
});

privileged("a local identity arrives only from its own workload's interface, whatever the transport", async (t) => {
  const cluster = await Cluster.start(t);
  const [w1a, w1b] = [cluster.w('w1a'), cluster.w('w1b')];
  const gate1 = cluster.agent(1);
  const [n1, n2] = cluster.topology.nodes;
  cluster.authorize(w1a, w1b);
  t.true(await udpPasses(cluster, w1b, w1a), 'from its interface: passes');

  t.deepEqual(await forge(gate1, n1.netns, w1b.ipv4, w1a.ipv4), { droppedUnverifiedArrival: 1n }, 'originated by the host');
  t.deepEqual(await forge(gate1, n2.netns, w1b.ipv4, w1a.ipv4), { droppedUnverifiedArrival: 1n }, 'injected on the underlay');
  t.is(gate1.counters().droppedUnverifiedArrival, 2n);
});
