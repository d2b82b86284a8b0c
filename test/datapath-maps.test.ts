// Privileged: the pinned maps and the in-process map API, without traffic.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { Datapath, monotonicNowNs } from '../src/datapath/gate/datapath.js';
import { COUNTER_NAMES } from '../src/datapath/gate/layout.js';
import { registeredInterfaces } from '../src/datapath/gate/loader.js';
import { PinLayout } from '../src/datapath/gate/pin-layout.js';
import { TEST_CAPACITIES, assertGateBuilt } from './helpers/datapath-fixture.js';
import { privilegedConcurrent } from './helpers/privileged.js';
import { capturedLogger } from './guest/transport-checks.js';

function pinDir(t: { teardown(fn: () => Promise<void>): void }): string {
  const dir = `/sys/fs/bpf/meshauth-test-${randomBytes(4).toString('hex')}`;
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

privilegedConcurrent('maps are pinned on open, outlive close, and are reused with their entries', async (t) => {
  const dir = pinDir(t);
  const first = await Datapath.open({ pinDir: dir, capacities: TEST_CAPACITIES });
  const key = { localIdentity: 1, remoteIdentity: 2, remoteNode: 3 };
  first.setAuth(key, 12345n);
  first.setIpcache('10.0.0.0/8', { identity: 9, node: 1 });
  first.setIpcache('10.0.0.1', { identity: 10, node: 1 });
  first.setConfig({ defaultMode: 'allow' });
  first.close();
  t.throws(() => first.getAuth(key), { name: 'DatapathError' }, 'a closed handle refuses work');
  for (const map of ['ipcache', 'ipcache_hosts4', 'ipcache_hosts6', 'endpoints', 'ipcache_memo', 'ipcache_gen', 'policy', 'auth', 'ratelimit', 'signals', 'doorbell', 'counters', 'config']) {
    t.true(existsSync(join(dir, 'maps', map)), map);
  }
  const { stdout } = await execa('bpftool', ['map', 'show', 'pinned', join(dir, 'maps', 'auth'), '-j']);
  t.is((JSON.parse(stdout) as { max_entries: number }).max_entries, TEST_CAPACITIES.auth);

  const second = await Datapath.open({ pinDir: dir });
  t.teardown(() => second.close());
  t.is(second.getAuth(key), 12345n);
  t.true(second.deleteIpcache('10.0.0.0/8'));
  t.false(second.deleteIpcache('10.0.0.0/8'));
  t.true(second.deleteIpcache('10.0.0.1/32'), 'host entries live in their own map');
  t.false(second.deleteIpcache('10.0.0.1'));
  t.is(second.config().defaultMode, 'allow');
  t.deepEqual(
    second.counters(),
    Object.fromEntries(COUNTER_NAMES.map((name) => [name, 0n])),
    'counters start at zero, one per verdict',
  );
});

privilegedConcurrent('a full ipcache, endpoints or policy map leaves entries out, counted and logged, without throwing (#16, item 9)', async (t) => {
  const { logger, text } = capturedLogger();
  const capacities = { ...TEST_CAPACITIES, ipcache_hosts4: 2, ipcache: 1, policy: 1 };
  const datapath = await Datapath.open({ pinDir: pinDir(t), capacities, logger });
  t.teardown(() => datapath.close());
  t.true(datapath.setIpcache('10.0.0.1', { identity: 1, node: 1 }));
  t.true(datapath.setIpcache('10.0.0.2', { identity: 2, node: 1 }));
  t.false(datapath.setIpcache('10.0.0.3', { identity: 3, node: 1 }), 'the third host address does not fit');
  t.true(datapath.setIpcache('10.0.0.1', { identity: 4, node: 1 }), 'an existing entry is still updated');
  t.true(datapath.setIpcache('10.1.0.0/16', { identity: 5, node: 2 }));
  t.false(datapath.setIpcache('10.2.0.0/16', { identity: 6, node: 2 }), 'nor a second prefix');
  t.true(datapath.setPolicy({ localIdentity: 1, remoteIdentity: 2, direction: 'egress' }, 0));
  t.false(datapath.setPolicy({ localIdentity: 1, remoteIdentity: 3, direction: 'egress' }, 0));
  t.deepEqual(datapath.overflows(), { ipcache: 2, endpoints: 0, policy: 1 });
  t.regex(text(), /a gate map is full/);
  t.regex(text(), /"map":"policy"/);

  // A pinned map keeps its capacity; a different configured one is reported, not applied.
  const reopened = await Datapath.open({ pinDir: datapath.pinDir, capacities: { ...capacities, ipcache_hosts4: 8 }, logger });
  reopened.close();
  t.regex(text(), /keeps the capacity it was created with/);
});

privilegedConcurrent('auth entries: single, batched, dumped, deleted; bad keys are refused', async (t) => {
  const datapath = await Datapath.open({ pinDir: pinDir(t), capacities: { ...TEST_CAPACITIES, auth: 32768 } });
  t.teardown(() => datapath.close());
  const now = monotonicNowNs();
  const entries = Array.from({ length: 20_000 }, (_, i) => ({
    key: { localIdentity: 1 + (i % 100), remoteIdentity: 1 + Math.floor(i / 100), remoteNode: i % 7, authType: 1 },
    expiryNs: now + BigInt(i),
  }));
  datapath.batchSetAuth(entries);
  const dumped = datapath.dumpAuth();
  t.is(dumped.length, entries.length);
  const byKey = (e: { key: object }) => JSON.stringify(e.key);
  const expected = new Map(entries.map((e) => [byKey(e), e.expiryNs]));
  t.is(dumped.filter((e) => expected.get(byKey(e)) !== e.expiryNs).length, 0, 'every dumped entry as written');

  const first = entries[0]!.key;
  datapath.setAuth(first, 7n);
  t.is(datapath.getAuth(first), 7n);
  t.true(datapath.deleteAuth(first));
  t.false(datapath.deleteAuth(first));
  t.is(datapath.getAuth(first), undefined);
  t.is(datapath.dumpAuth().length, entries.length - 1);

  t.throws(() => datapath.setAuth({ localIdentity: 0, remoteIdentity: 1, remoteNode: 1 }, 1n), { instanceOf: RangeError });
  t.throws(() => datapath.setAuth({ localIdentity: 1, remoteIdentity: 1, remoteNode: 70000 }, 1n), { instanceOf: RangeError });
  t.throws(() => datapath.setIpcache('10.0.0.0/40', { identity: 1, node: 1 }), { name: 'IpPrefixError' });
  t.throws(() => datapath.setPolicy({ localIdentity: 1, remoteIdentity: 2, direction: 'egress' }, 256), {
    instanceOf: RangeError,
  });
  t.is(datapath.dumpAuth().length, entries.length - 1, 'refused writes changed nothing');
});

privilegedConcurrent('a full auth map refuses new entries with a kernel error', async (t) => {
  const datapath = await Datapath.open({ pinDir: pinDir(t), capacities: { ...TEST_CAPACITIES, auth: 4 } });
  t.teardown(() => datapath.close());
  for (let i = 1; i <= 4; i++) datapath.setAuth({ localIdentity: i, remoteIdentity: 1, remoteNode: 1 }, 1n);
  t.throws(() => datapath.setAuth({ localIdentity: 5, remoteIdentity: 1, remoteNode: 1 }, 1n), { code: 'E2BIG' });
});

privilegedConcurrent('an incompatible pinned map is refused with a way out', async (t) => {
  const dir = pinDir(t);
  await execa('mkdir', ['-p', join(dir, 'maps')]);
  await execa('bpftool', ['map', 'create', join(dir, 'maps', 'auth'), 'type', 'hash', 'key', '12', 'value', '16', 'entries', '8', 'name', 'auth']);
  const error = await t.throwsAsync(Datapath.open({ pinDir: dir, capacities: TEST_CAPACITIES }), { name: 'DatapathError' });
  t.regex(error.message, /auth.*value 16.*value 8.*uninstall/);
});

privilegedConcurrent("a config map of an older build's shape is replaced, not refused: the agent rewrites it", async (t) => {
  const dir = pinDir(t);
  await execa('mkdir', ['-p', join(dir, 'maps')]);
  // Before #16 the config value had 16 bytes.
  await execa('bpftool', ['map', 'create', join(dir, 'maps', 'config'), 'type', 'array', 'key', '4', 'value', '16', 'entries', '1', 'name', 'config']);
  const datapath = await Datapath.open({ pinDir: dir, capacities: TEST_CAPACITIES });
  t.teardown(() => datapath.close());
  t.deepEqual(datapath.config().transport, 'unset', 'a fresh config: fail closed until the agent writes it');
  datapath.setConfig({ transport: 'wireguard', localNode: 3, wireguardIfindex: 9 });
  t.like(datapath.config(), { transport: 'wireguard', localNode: 3, wireguardIfindex: 9 });
});

privilegedConcurrent('bad pin dirs, interfaces and namespaces are refused before touching the kernel', async (t) => {
  const notBpffs = await mkdtemp(join(tmpdir(), 'meshauth-'));
  t.teardown(() => rm(notBpffs, { recursive: true, force: true }));
  await t.throwsAsync(Datapath.open({ pinDir: notBpffs }), { message: /not on a bpffs/ });
  await t.throwsAsync(Datapath.open({ pinDir: 'relative/dir' }), { message: /absolute path/ });

  const datapath = await Datapath.open({ pinDir: pinDir(t), capacities: TEST_CAPACITIES });
  t.teardown(() => datapath.close());
  await t.throwsAsync(datapath.install({ interfaces: [{ name: 'eth0; reboot' }] }), { message: /bad interface name/ });
  await t.throwsAsync(datapath.install({ interfaces: [{ name: 'eth0', netns: '../../etc' }] }), {
    message: /bad network namespace/,
  });
  await t.throwsAsync(datapath.install({ interfaces: [{ name: 'nosuchif0' }] }), { message: /nosuchif0/ });
  t.deepEqual(await datapath.attachedInterfaces(), [{ name: 'nosuchif0' }], 'registered before the attach, for uninstall');
});

privilegedConcurrent('uninstall removes the pin dir; uninstalling nothing is fine', async (t) => {
  assertGateBuilt();
  const dir = pinDir(t);
  const datapath = await Datapath.open({ pinDir: dir, capacities: TEST_CAPACITIES });
  await datapath.uninstall();
  t.false(existsSync(dir));
  await t.notThrowsAsync(Datapath.uninstall({ pinDir: dir }));
});

privilegedConcurrent('interfaces and namespaces with dots in their names are registered (bpffs refuses dotted names)', async (t) => {
  const layout = new PinLayout(pinDir(t));
  const interfaces = [{ name: 'eth0.100' }, { name: 'veth.a', netns: 'ns.1' }];
  for (const iface of interfaces) await mkdir(layout.interfaceEntry(iface), { recursive: true });
  t.deepEqual(
    (await registeredInterfaces(layout)).sort((a, b) => a.name.localeCompare(b.name)),
    interfaces,
  );
});
