// Transport benchmark (root): `npm run bench:transport [-- --json]`.
//
//   wg_program_100_ms      100 WireGuard peers programmed by one setPeers: one `wg syncconf`
//                          (keys in a 0600 tmpfs file) and one `ip -batch` of routes; wireguard-go
//                          on this machine (the kernel module is what production uses)
//   wg_resync_100_ms       the same 100 peers again with new PSKs (a re-authentication burst)
//   ipsec_program_100_ms   100 IPsec node pairs (200 ESP states, 300 policies) by one setPeers,
//                          in the run-in-guest VM (this kernel has no ESP), after a first, cold
//                          run (ipsec_program_100_cold_ms) paid for the kernel's one-time
//                          instantiation and self-test of rfc4106(gcm(aes)); null + reason when
//                          the guest cannot run. Under qemu's software emulation: pessimistic.
//   throughput (informational): iperf3 between two workloads over WireGuard vs the plain veth
//                          underlay on this machine, and over IPsec vs veth inside the guest.
//
// --json: the last line is one JSON object with all of the above.
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { WireGuardKeyPair } from '../src/datapath/transport/keys.js';
import { WireGuardTransport, type WireGuardPeer } from '../src/datapath/transport/wireguard.js';
import { inNetns } from '../src/netns/exec.js';
import { TransportTopology } from '../test/helpers/transport-topology.js';

const json = process.argv.includes('--json');
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const RUN_IN_GUEST = resolve(ROOT, '../shared/tools/run-in-guest');
const PEERS = 100;
const TARGET_MS = 1000;
const IPERF_SECONDS = 3;

type Result = Record<string, number | string | null>;

function line(label: string, value: number | null, unit: string, note = ''): void {
  const shown = value === null ? 'skipped' : `${value} ${unit}`;
  if (!json) console.log(`${label.padEnd(34)} ${shown.padStart(14)}  ${note}`);
}

function target(label: string, value: number | null, reason?: string): void {
  if (value === null) return line(label, null, 'ms', reason ?? '');
  line(label, value, 'ms', `target ≤ ${TARGET_MS} ms ${value <= TARGET_MS ? 'ok' : 'MISSED'}`);
}

/** 100 peers as a node would learn them from 100 node handshakes. */
function wireguardPeers(publicKeys: string[]): WireGuardPeer[] {
  return publicKeys.map((publicKey, i) => ({
    nodeName: `bench-node-${i}`,
    publicKey,
    endpoint: `192.0.2.${i + 1}:51820`,
    allowedIps: [`10.${100 + i}.0.0/16`],
    presharedKey: randomBytes(32),
  }));
}

async function wireguardProgramming(result: Result): Promise<void> {
  const topology = await TransportTopology.create();
  const stateDir = await mkdtemp(join(tmpdir(), 'meshauth-bench-wg-'));
  try {
    const peerKeys = await Promise.all(
      Array.from({ length: PEERS }, async (_, i) => (await WireGuardKeyPair.loadOrCreate(join(stateDir, `peer-${i}`))).publicKey),
    );
    const wg = await WireGuardTransport.open({ stateDir, netns: topology.node(1).netns, interfaceName: `mwbench${topology.tag}`.slice(0, 15), implementation: 'auto' });
    try {
      result.wg_implementation = wg.implementation;
      let started = performance.now();
      await wg.setPeers(wireguardPeers(peerKeys));
      result.wg_program_100_ms = Math.round(performance.now() - started);
      started = performance.now();
      await wg.setPeers(wireguardPeers(peerKeys));
      result.wg_resync_100_ms = Math.round(performance.now() - started);
      const { stdout } = await inNetns(topology.node(1).netns, 'wg', ['show', wg.interfaceName, 'peers']);
      if (stdout.split('\n').filter(Boolean).length !== PEERS) throw new Error(`expected ${PEERS} peers on the interface, found: ${stdout}`);
    } finally {
      await wg.destroy();
    }
  } finally {
    await topology.cleanup();
    await rm(stateDir, { recursive: true, force: true });
  }
}

async function wireguardThroughput(result: Result): Promise<void> {
  const topology = await TransportTopology.create();
  const stateDirs = await Promise.all([1, 2].map((id) => mkdtemp(join(tmpdir(), `meshauth-bench-wg-${id}-`))));
  try {
    const transports = await Promise.all(
      topology.nodes.map((node) =>
        WireGuardTransport.open({ stateDir: stateDirs[node.id - 1]!, netns: node.netns, interfaceName: `mwt${topology.tag}${node.id}`, implementation: 'auto' }),
      ),
    );
    const psk = randomBytes(32);
    await Promise.all(
      transports.map((wg, i) => {
        const other = topology.nodes[1 - i]!;
        return wg.setPeers([{ nodeName: `node${other.id}`, publicKey: transports[1 - i]!.publicKey, endpoint: `${other.underlay.ipv4}:51820`, allowedIps: other.podCidrs, presharedKey: psk }]);
      }),
    );
    result.wg_mbps = await topology.iperf(1, 2, IPERF_SECONDS);
    await Promise.all(transports.map((wg) => wg.destroy()));
    await topology.addUnderlayRoutes();
    result.veth_mbps = await topology.iperf(1, 2, IPERF_SECONDS);
  } finally {
    await topology.cleanup();
    await Promise.all(stateDirs.map((dir) => rm(dir, { recursive: true, force: true })));
  }
}

/** IPsec numbers from the guest VM; on failure, the reason instead. */
async function guestIpsec(result: Result): Promise<void> {
  // The compiled program (npm run bench:transport builds first); run.sh frames it with stage lines.
  const run = await execa(RUN_IN_GUEST, ['test/guest/run.sh', 'transport-bench:220'], { cwd: ROOT, reject: false, env: { GUEST_TIMEOUT: '240' } });
  const last = run.stdout.trim().split('\n').filter((line) => !line.startsWith('{"stage"')).pop() ?? '';
  let guest: Record<string, unknown> | undefined;
  try {
    guest = JSON.parse(last) as Record<string, unknown>;
  } catch {
    guest = undefined;
  }
  if (run.exitCode !== 0 || !guest || typeof guest.error === 'string' || typeof guest.ipsec_program_100_ms !== 'number') {
    result.ipsec_program_100_ms = null;
    const reason = typeof guest?.error === 'string' ? guest.error : run.stderr.trim().split('\n').slice(-3).join(' | ');
    result.ipsec_skipped = `the guest VM did not deliver (exit ${String(run.exitCode)}): ${reason}`;
    return;
  }
  for (const key of ['ipsec_program_100_ms', 'ipsec_program_100_cold_ms', 'ipsec_rekey_100_ms', 'guest_ipsec_mbps', 'guest_veth_mbps'] as const) {
    const value = guest[key];
    result[key] = typeof value === 'number' ? value : null;
  }
}

const result: Result = { peers: PEERS, target_ms: TARGET_MS, wg_program_100_ms: null, ipsec_program_100_ms: null };
if (process.getuid?.() !== 0) {
  result.wg_skipped = 'needs root (network namespaces, WireGuard)';
  result.ipsec_skipped = 'needs root (the guest VM is started from the same run)';
} else {
  try {
    await wireguardProgramming(result);
    await wireguardThroughput(result);
  } catch (err) {
    result.wg_skipped = (err as Error).message;
  }
  await guestIpsec(result);
}

const num = (key: string): number | null => {
  const value = result[key];
  return typeof value === 'number' ? value : null;
};
const text = (key: string): string => {
  const value = result[key];
  return typeof value === 'string' ? value : '';
};
if (!json) console.log(`transport benchmark: ${PEERS} peers; WireGuard ${text('wg_implementation') || 'n/a'} on this machine, IPsec in the guest VM (emulated)`);
target(`WireGuard: program ${PEERS} peers`, num('wg_program_100_ms'), text('wg_skipped'));
line(`WireGuard: re-key ${PEERS} peers`, num('wg_resync_100_ms'), 'ms');
target(`IPsec: program ${PEERS} node pairs`, num('ipsec_program_100_ms'), text('ipsec_skipped'));
line(`IPsec: first program (cold)`, num('ipsec_program_100_cold_ms'), 'ms', 'kernel instantiates and self-tests rfc4106(gcm(aes)) once');
line(`IPsec: re-key ${PEERS} node pairs`, num('ipsec_rekey_100_ms'), 'ms', 'switch delay 0 (programming only)');
line('throughput: veth', num('veth_mbps'), 'Mbit/s', 'informational');
line('throughput: WireGuard', num('wg_mbps'), 'Mbit/s', 'informational');
line('throughput (guest): veth', num('guest_veth_mbps'), 'Mbit/s', 'informational, emulated');
line('throughput (guest): IPsec', num('guest_ipsec_mbps'), 'Mbit/s', 'informational, emulated');
if (json) console.log(JSON.stringify(result));
