// Privileged: WireGuard through wireguard-go (this machine's kernel has no WireGuard module)
// between two node namespaces, with the checks the guest runs against kernel WireGuard
// (test/guest/transport-checks.ts): a forged handshake passes nothing, matching PSKs pass
// traffic that the wire shows only encrypted, a PSK change under a 100/s ping loses nothing and
// is in effect, a removed peer is gone; meanwhile no key appears on any command line, in any
// environment or in the logs.
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { Registry } from 'prom-client';
import { DatapathError } from '../src/datapath/errors.js';
import { TransportMetrics } from '../src/datapath/transport/metrics.js';
import { WireGuardTransport } from '../src/datapath/transport/wireguard.js';
import { inNetns } from '../src/netns/exec.js';
import { CmdlineScanner } from './helpers/secret-scanner.js';
import { TransportTopology } from './helpers/transport-topology.js';
import { WIREGUARD_CHECKS, capturedLogger, leakedIn, wireguardChecks, wireguardSecrets } from './guest/transport-checks.js';
import { privileged } from './helpers/privileged.js';

const EXPECTED_CHECKS = WIREGUARD_CHECKS;

async function requireTools(t: { fail(message: string): void }): Promise<boolean> {
  for (const tool of ['wireguard-go', 'wg', 'tcpdump', 'ping']) {
    const found = await execa('which', [tool], { reject: false });
    if (found.exitCode !== 0) {
      t.fail(`${tool} is not installed (scripts/setup.sh installs wireguard-go, wireguard-tools, tcpdump and iputils-ping)`);
      return false;
    }
  }
  return true;
}

/** The tools, fresh node keys and PSKs (removed afterwards) and the two-node topology; undefined
 *  (the test has failed, saying why) when a tool is missing. */
async function setUp(t: ExecutionContext) {
  if (!(await requireTools(t))) return undefined;
  const secrets = await wireguardSecrets();
  t.teardown(secrets.cleanup);
  return { secrets, topology: await TransportTopology.create(t) };
}

privileged('userspace WireGuard between two node namespaces, keyed by the handshake PSK', async (t) => {
  t.timeout(90_000);
  const setup = await setUp(t);
  if (!setup) return;
  const { secrets, topology } = setup;
  const allSecrets = [...secrets.privateKeys, ...secrets.psks];
  const { logger, text } = capturedLogger();
  const scanner = new CmdlineScanner(allSecrets);
  const checks = new Map<string, { ok: boolean; detail: unknown }>();
  const registry = new Registry();
  const metrics = new TransportMetrics(registry);
  try {
    await wireguardChecks(topology, { implementation: 'userspace', secrets, logger, metrics, record: (check, ok, detail) => checks.set(check, { ok, detail }) });
  } finally {
    const report = await scanner.stop();
    const sawTools = report.commandsSeen.some((c) => /\bwg (set|syncconf)\b/.test(c)) && report.commandsSeen.some((c) => /\bip\b.*-batch/.test(c));
    t.true(sawTools && report.scans > 10, `the scanner watched the tools run (${report.scans} scans)`);
    t.deepEqual(report.hits, [], 'no key on a command line or in an environment');
  }
  for (const name of EXPECTED_CHECKS) {
    const check = checks.get(name);
    t.true(check?.ok === true, `${name}: ${check ? JSON.stringify(check.detail) : 'did not run'}`);
  }
  const operations = (await metrics.operations.get()).values.map((v) => `${String(v.labels.operation)}/${String(v.labels.result)}=${v.value}`).sort();
  t.deepEqual(operations, ['add/success=2', 'rekey/success=3', 'remove/success=3', 'sync/success=2'], 'operations are counted');
  const exposition = await registry.metrics();
  t.is(leakedIn(exposition, allSecrets), 0, 'no key in the metrics');
  const logs = text();
  t.true(logs.includes('WireGuard peer updated'), 'the logs were captured');
  t.is(leakedIn(logs, allSecrets), 0, 'no key in the logs');
});

privileged("'auto' takes the kernel's WireGuard where it exists and falls back to wireguard-go where it does not; 'kernel' says why it cannot", async (t) => {
  const setup = await setUp(t);
  if (!setup) return;
  const { secrets, topology } = setup;
  const netns = topology.node(1).netns;
  const kernelProbe = await execa('ip', ['-n', netns, 'link', 'add', 'probe0', 'type', 'wireguard'], { reject: false });
  const kernelHasWireGuard = kernelProbe.exitCode === 0;
  if (kernelHasWireGuard) await execa('ip', ['-n', netns, 'link', 'del', 'probe0']);

  const auto = await WireGuardTransport.open({ stateDir: secrets.stateDirs[0]!, netns, interfaceName: `mwa${topology.tag}`, implementation: 'auto' });
  t.teardown(() => auto.destroy());
  t.is(auto.implementation, kernelHasWireGuard ? 'kernel' : 'userspace', kernelHasWireGuard ? 'the kernel module is preferred' : 'the fallback');
  const { stdout } = await inNetns(netns, 'wg', ['show', auto.interfaceName, 'public-key']);
  t.is(stdout.trim(), auto.publicKey, 'the node key is on the interface');

  const kernelOpen = WireGuardTransport.open({ stateDir: secrets.stateDirs[1]!, netns, interfaceName: `mwk${topology.tag}`, implementation: 'kernel' });
  if (kernelHasWireGuard) {
    const kernel = await kernelOpen;
    t.teardown(() => kernel.destroy());
    t.is(kernel.implementation, 'kernel');
    return;
  }
  const err = await t.throwsAsync(kernelOpen, { instanceOf: DatapathError });
  t.regex(err.message, /ip link add mwk\w+ type wireguard .*failed/);
});

privileged('bad peers are refused before anything is programmed', async (t) => {
  const setup = await setUp(t);
  if (!setup) return;
  const { secrets, topology } = setup;
  const wg = await WireGuardTransport.open({ stateDir: secrets.stateDirs[0]!, netns: topology.node(1).netns, interfaceName: `mwb${topology.tag}`, implementation: 'userspace' });
  t.teardown(() => wg.destroy());
  const other = (await WireGuardTransport.open({ stateDir: secrets.stateDirs[1]!, netns: topology.node(2).netns, interfaceName: `mwc${topology.tag}`, implementation: 'userspace' }));
  t.teardown(() => other.destroy());
  const good = { nodeName: 'node2', publicKey: other.publicKey, endpoint: '192.168.250.2:51820', allowedIps: ['10.2.0.0/16'], presharedKey: secrets.psks[0]! };
  await t.throwsAsync(wg.setPeers([{ ...good, presharedKey: Buffer.alloc(16) }]), { instanceOf: DatapathError, message: /preshared key: expected 32 key bytes/ });
  await t.throwsAsync(wg.setPeers([{ ...good, publicKey: 'not-a-key' }]), { instanceOf: DatapathError, message: /public key is not 32 bytes/ });
  await t.throwsAsync(wg.setPeers([{ ...good, publicKey: wg.publicKey }]), { instanceOf: DatapathError, message: /own public key/ });
  await t.throwsAsync(wg.setPeers([{ ...good, endpoint: '192.168.250.2:51820\nAllowedIPs = 0.0.0.0/0' }]), { instanceOf: DatapathError, message: /bad endpoint/ });
  await t.throwsAsync(wg.setPeers([good, { ...good, nodeName: 'node3', publicKey: wg.publicKey.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')), allowedIps: ['10.2.5.0/24'] }]), {
    instanceOf: DatapathError,
    message: /overlaps/,
  });
  await wg.setPeers([good]);
  // Another node claiming part of node2's pod CIDR would steal its traffic: refused.
  await t.throwsAsync(wg.upsertPeer({ ...good, nodeName: 'node3', publicKey: wg.publicKey.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')), allowedIps: ['10.2.1.0/24'] }), {
    instanceOf: DatapathError,
    message: /10.2.1.0\/24 of node3 overlaps 10.2.0.0\/16 of node2/,
  });
  t.deepEqual(wg.nodeNames(), ['node2']);
});
