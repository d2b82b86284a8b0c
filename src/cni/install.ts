#!/usr/bin/env node
// Installs the meshauth CNI plugin on a node, as Istio's and Cilium's CNI installers do, from a
// container of the meshauth DaemonSet that mounts the host's CNI directories:
//   - the plugin file goes to the host's CNI bin directory as `meshauth`, with the Node binary it
//     runs on next to it (`meshauth-node`: the host needs no Node of its own), each written whole
//     (rename);
//   - the pod network's conflist (the first `*.conflist` in the net.d directory by name, the one
//     the runtime uses) gets a `meshauth` entry appended to its `plugins`, or its entry updated;
//     everything else in the file is kept as it is. A main CNI that rewrites its conflist drops
//     the entry: with --watch it is appended again within the interval.
// Usage: install.js --bin-dir /host/opt/cni/bin --net-dir /host/etc/cni/net.d
//          [--host-bin-dir /opt/cni/bin] [--control-socket PATH] [--spool-dir PATH]
//          [--ready-timeout-ms N] [--watch SECONDS] [--uninstall]
// --uninstall removes the entry (the files stay: a runtime running the plugin right now must find it).
import { chmod, copyFile, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

export interface PluginEntry {
  type: 'meshauth';
  controlSocket: string;
  spoolDir: string;
  readyTimeoutMs: number;
}

type Conflist = { plugins?: unknown[] } & Record<string, unknown>;

function isMeshauth(plugin: unknown): boolean {
  return typeof plugin === 'object' && plugin !== null && (plugin as { type?: unknown }).type === 'meshauth';
}

/** The conflist with meshauth last in its chain (its entry updated in place if present). */
export function withMeshauth(conflist: Conflist, entry: PluginEntry): Conflist {
  if (!Array.isArray(conflist.plugins) || conflist.plugins.length === 0) throw new Error('the conflist has no plugins to chain after');
  const others = conflist.plugins.filter((plugin) => !isMeshauth(plugin));
  if (others.length === 0) throw new Error('the conflist holds only meshauth: no main plugin to chain after');
  return { ...conflist, plugins: [...others, entry] };
}

export function withoutMeshauth(conflist: Conflist): Conflist {
  return { ...conflist, plugins: (conflist.plugins ?? []).filter((plugin) => !isMeshauth(plugin)) };
}

/** The conflist the runtime uses: the first `*.conflist` by name (what containerd and CRI-O pick). */
export async function activeConflist(netDir: string): Promise<string | undefined> {
  const names = (await readdir(netDir)).filter((name) => name.endsWith('.conflist')).sort();
  return names[0] === undefined ? undefined : join(netDir, names[0]);
}

/** Rewrites the file only when its content changes; returns whether it did. */
async function rewrite(path: string, change: (conflist: Conflist) => Conflist): Promise<boolean> {
  const text = await readFile(path, 'utf8');
  const next = `${JSON.stringify(change(JSON.parse(text) as Conflist), null, 2)}\n`;
  if (next === text) return false;
  await writeWhole(path, next, 0o644);
  return true;
}

async function writeWhole(path: string, content: string | Buffer, mode: number): Promise<void> {
  const temporary = `${path}.meshauth-${process.pid}.tmp`;
  await writeFile(temporary, content, { mode });
  await chmod(temporary, mode);
  await rename(temporary, path);
}

/**
 * The plugin and the Node binary it runs on into `binDir` (the host's `hostBinDir`): the plugin's
 * first line names that Node by its path on the host.
 */
export async function installFiles(binDir: string, hostBinDir: string, plugin = fileURLToPath(new URL('./plugin.js', import.meta.url)), node = process.execPath): Promise<void> {
  const temporaryNode = join(binDir, `meshauth-node.${process.pid}.tmp`);
  await copyFile(node, temporaryNode);
  await chmod(temporaryNode, 0o755);
  await rename(temporaryNode, join(binDir, 'meshauth-node'));
  const source = await readFile(plugin, 'utf8');
  const body = source.startsWith('#!') ? source.slice(source.indexOf('\n') + 1) : source;
  await writeWhole(join(binDir, 'meshauth'), `#!${join(hostBinDir, 'meshauth-node')}\n${body}`, 0o755);
}

/** Appends or updates the entry in the active conflist; returns its path (undefined: none yet). */
export async function installEntry(netDir: string, entry: PluginEntry): Promise<{ path?: string; changed: boolean }> {
  const path = await activeConflist(netDir);
  if (!path) return { changed: false };
  return { path, changed: await rewrite(path, (conflist) => withMeshauth(conflist, entry)) };
}

export async function uninstallEntry(netDir: string): Promise<{ path?: string; changed: boolean }> {
  const path = await activeConflist(netDir);
  if (!path) return { changed: false };
  return { path, changed: await rewrite(path, withoutMeshauth) };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'bin-dir': { type: 'string', default: '/host/opt/cni/bin' },
      'net-dir': { type: 'string', default: '/host/etc/cni/net.d' },
      'host-bin-dir': { type: 'string', default: '/opt/cni/bin' },
      'control-socket': { type: 'string', default: '/run/meshauth/control.sock' },
      'spool-dir': { type: 'string', default: '/run/meshauth/cni' },
      'ready-timeout-ms': { type: 'string', default: '2000' },
      watch: { type: 'string' },
      uninstall: { type: 'boolean', default: false },
    },
  });
  const log = (message: string): void => void process.stderr.write(`meshauth-cni-install: ${message}\n`);
  if (values.uninstall) {
    const { path, changed } = await uninstallEntry(values['net-dir']);
    log(path ? `${changed ? 'removed the meshauth entry from' : 'no meshauth entry in'} ${path}` : 'no conflist');
    return;
  }
  const entry: PluginEntry = {
    type: 'meshauth',
    controlSocket: values['control-socket'],
    spoolDir: values['spool-dir'],
    readyTimeoutMs: Number(values['ready-timeout-ms']),
  };
  if (!Number.isInteger(entry.readyTimeoutMs) || entry.readyTimeoutMs < 0) throw new Error('--ready-timeout-ms must be a non-negative integer');
  await installFiles(values['bin-dir'], values['host-bin-dir']);
  log(`plugin installed in ${values['bin-dir']}`);
  const apply = async (): Promise<void> => {
    const { path, changed } = await installEntry(values['net-dir'], entry);
    if (!path) log(`no *.conflist in ${values['net-dir']} yet (the pod network is not installed)`);
    else if (changed) log(`meshauth chained in ${path}`);
  };
  await apply();
  if (values.watch === undefined) return;
  const intervalMs = Number(values.watch) * 1000;
  if (!(intervalMs > 0)) throw new Error('--watch must be a positive number of seconds');
  // The main CNI's installer may rewrite its conflist at any time (an upgrade): chain again.
  setInterval(() => void apply().catch((err: unknown) => log(`chaining failed: ${(err as Error).message}`)), intervalMs);
}

if (process.argv[1] !== undefined && realpathSync(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`meshauth-cni-install: ${(err as Error).message}\n`);
    process.exitCode = 1;
  });
}
