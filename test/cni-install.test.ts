// The CNI installer: the plugin and its Node go into the bin directory and run from there; the
// active conflist (the first by name) gets meshauth appended after its main plugin, once, and
// keeps everything else; uninstall takes the entry out again.
import test from 'ava';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { activeConflist, installEntry, installFiles, uninstallEntry, withMeshauth, type PluginEntry } from '../src/cni/install.js';
import { tempDir } from './helpers/agents.js';
import { MESHAUTH_PLUGIN } from './helpers/cni-runtime.js';

const ENTRY: PluginEntry = { type: 'meshauth', controlSocket: '/run/meshauth/control.sock', spoolDir: '/run/meshauth/cni', readyTimeoutMs: 2000 };
const BRIDGE = {
  cniVersion: '1.0.0',
  name: 'podnet',
  plugins: [
    { type: 'bridge', bridge: 'cni0', isGateway: true, ipam: { type: 'host-local', ranges: [[{ subnet: '10.88.0.0/16' }]] } },
    { type: 'portmap', capabilities: { portMappings: true } },
  ],
};

test('meshauth is chained last in the active conflist, once, and removed again', async (t) => {
  const netDir = await tempDir(t, 'meshauth-netd-');
  await writeFile(join(netDir, '10-podnet.conflist'), JSON.stringify(BRIDGE));
  await writeFile(join(netDir, '20-other.conflist'), JSON.stringify({ ...BRIDGE, name: 'other' }));
  await writeFile(join(netDir, '05-single.conf'), JSON.stringify({ cniVersion: '1.0.0', name: 'x', type: 'bridge' }));
  t.is(await activeConflist(netDir), join(netDir, '10-podnet.conflist'));

  t.like(await installEntry(netDir, ENTRY), { changed: true });
  const installed = JSON.parse(await readFile(join(netDir, '10-podnet.conflist'), 'utf8')) as typeof BRIDGE;
  t.deepEqual(installed, { ...BRIDGE, plugins: [...BRIDGE.plugins, ENTRY] }, 'appended; nothing else changed');
  t.like(await installEntry(netDir, ENTRY), { changed: false }, 'idempotent');
  t.like(await installEntry(netDir, { ...ENTRY, readyTimeoutMs: 500 }), { changed: true }, 'a new setting updates the entry');
  const updated = JSON.parse(await readFile(join(netDir, '10-podnet.conflist'), 'utf8')) as typeof BRIDGE;
  t.is(updated.plugins.length, 3);
  t.deepEqual(JSON.parse(await readFile(join(netDir, '20-other.conflist'), 'utf8')), { ...BRIDGE, name: 'other' }, 'other conflists untouched');

  t.like(await uninstallEntry(netDir), { changed: true });
  t.deepEqual(JSON.parse(await readFile(join(netDir, '10-podnet.conflist'), 'utf8')), BRIDGE);
  t.throws(() => withMeshauth({ plugins: [ENTRY] }, ENTRY), { message: /no main plugin/ });
  t.like(await installEntry(await tempDir(t, 'meshauth-netd-empty-'), ENTRY), { changed: false, path: undefined }, 'no pod network yet');
});

test('the installed plugin runs on the Node installed beside it', async (t) => {
  const binDir = join(await tempDir(t, 'meshauth-cnibin-'), 'bin');
  await mkdir(binDir);
  await installFiles(binDir, binDir, MESHAUTH_PLUGIN);
  t.regex((await readFile(join(binDir, 'meshauth'), 'utf8')).split('\n')[0]!, new RegExp(`^#!${binDir}/meshauth-node$`));
  const version = await execa(join(binDir, 'meshauth'), [], { input: '{"cniVersion":"1.0.0"}', env: { CNI_COMMAND: 'VERSION' }, extendEnv: false });
  t.like(JSON.parse(version.stdout), { cniVersion: '1.0.0' });
});
