// Kernel-side lifecycle of the gate: bpffs, pinned maps, program load, attach/detach (hooks.ts),
// uninstall, all under one pin directory (pin-layout.ts). Everything is driven through bpftool,
// tc and meshauth-tcx (run-in.ts).
//
// Pins survive everything but unpinning (agent exit, SIGKILL, deletion of the namespaces
// involved): that is what keeps the gate closed while no agent runs, and why uninstall removes
// them explicitly. Removing an interface's entry by hand releases its TCX links, and so takes the
// gate off that interface.
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, statfs } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { MapType } from 'bpf';
import { packageFile } from '../../util/package-root.js';
import { DatapathError } from '../errors.js';
import { MAP_SPECS, type MapName, type MapSpec } from './layout.js';
import { openPinnedMap, possibleCpuCount } from './bpf-maps.js';
import { hookGate, unhookGate, type AttachMode } from './hooks.js';
import { netnsPath, run, runIn } from './run-in.js';
import { validateInterface, type PinLayout, type WorkloadInterface } from './pin-layout.js';
import type { DatapathCapacityOptions } from './options.js';

const BPFFS_ROOT = '/sys/fs/bpf';
const BPF_FS_MAGIC = 0xcafe4a11;
const BPF_F_NO_PREALLOC = 1;

export type MapCapacities = Partial<Record<'ipcache' | 'ipcache_hosts4' | 'ipcache_hosts6' | 'endpoints' | 'policy' | 'auth' | 'ratelimit' | 'signals', number>>;

/** The loader's capacities from the config's datapath.capacities (and the auth cache size). */
export function mapCapacities(options: DatapathCapacityOptions, auth?: number): MapCapacities {
  const capacities: MapCapacities = {
    ipcache_hosts4: options.ipcacheHosts4,
    ipcache_hosts6: options.ipcacheHosts6,
    ipcache: options.ipcachePrefixes,
    endpoints: options.endpoints,
    policy: options.policy,
    ratelimit: options.ratelimit,
    signals: options.signals,
    auth,
  };
  return Object.fromEntries(Object.entries(capacities).filter(([, value]) => value !== undefined));
}

/** bpf/gate.bpf.o of the package this module belongs to (built by `npm run build:bpf`). */
export function defaultObjectPath(): string {
  return packageFile('bpf/gate.bpf.o');
}

/** Makes sure the pin directory is on a bpffs, mounting /sys/fs/bpf if nothing is mounted there. */
export async function ensureBpffs(layout: PinLayout): Promise<void> {
  let existing = layout.root;
  while (!existsSync(existing)) existing = dirname(existing);
  if ((await statfs(existing)).type === BPF_FS_MAGIC) return;
  const underDefaultRoot = layout.root === BPFFS_ROOT || layout.root.startsWith(`${BPFFS_ROOT}/`);
  if (underDefaultRoot && (await statfs(BPFFS_ROOT)).type !== BPF_FS_MAGIC) {
    await run('mount', ['-t', 'bpf', 'bpf', BPFFS_ROOT]);
    return;
  }
  throw new DatapathError(`pin dir ${layout.root} is not on a bpffs`);
}

/**
 * Creates the maps that are not pinned yet and checks the shape of those that are. Existing maps
 * are kept with their contents and capacity: that is how auth entries survive a restart. A
 * replaceable map (the config, the memo) of an older shape is unpinned and created anew: the
 * programs attached keep the old one until the next install replaces them, and the agent
 * rewrites the config before that.
 */
export async function ensureMaps(layout: PinLayout, capacities: MapCapacities = {}): Promise<MapName[]> {
  await mkdir(layout.mapsDir, { recursive: true });
  const created: MapName[] = [];
  for (const [name, spec] of Object.entries(MAP_SPECS) as [MapName, (typeof MAP_SPECS)[MapName]][]) {
    const path = layout.mapPath(name);
    if (spec.replaceable && existsSync(path) && !hasShape(path, spec)) await rm(path);
    if (!existsSync(path)) {
      const entries = capacities[name as keyof MapCapacities] ?? (spec.maxEntries || possibleCpuCount());
      if (!Number.isInteger(entries) || entries < 1) throw new DatapathError(`bad ${name} capacity ${entries}`);
      const args = ['map', 'create', path, 'type', MapType[spec.type].toLowerCase()];
      args.push('key', String(spec.keySize), 'value', String(spec.valueSize), 'entries', String(entries));
      args.push('name', name, 'flags', String(spec.noPrealloc ? BPF_F_NO_PREALLOC : 0));
      try {
        await run('bpftool', args);
        created.push(name);
      } catch (err) {
        if (!existsSync(path)) throw err; // otherwise a concurrent loader won the race: use its map
      }
    }
    openPinnedMap(path, spec).close();
  }
  return created;
}

function hasShape(path: string, spec: MapSpec): boolean {
  try {
    openPinnedMap(path, spec).close();
    return true;
  } catch {
    return false;
  }
}

/**
 * Loads both programs into a fresh generation directory, bound to the pinned maps, and returns
 * the directory. Nothing is attached yet.
 */
export async function loadPrograms(layout: PinLayout, objectPath: string): Promise<string> {
  if (!existsSync(objectPath)) {
    throw new DatapathError(`BPF object ${objectPath} not found: run \`npm run build:bpf\``);
  }
  const generation = join(layout.progsDir, `${Date.now().toString(36)}-${randomBytes(3).toString('hex')}`);
  await mkdir(layout.progsDir, { recursive: true });
  const args = ['prog', 'loadall', objectPath, generation];
  for (const name of Object.keys(MAP_SPECS) as MapName[]) args.push('map', 'name', name, 'pinned', layout.mapPath(name));
  await run('bpftool', args);
  return generation;
}

/** Removes every program generation but `keep`; attached programs stay alive on their hooks. */
export async function pruneGenerations(layout: PinLayout, keep: string): Promise<void> {
  for (const entry of await readdir(layout.progsDir)) {
    const dir = join(layout.progsDir, entry);
    if (dir !== keep) await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Attaches (or atomically replaces) the gate on one interface. The interface is registered first,
 * so that an attach interrupted halfway is still found by `uninstall`.
 */
export async function attach(layout: PinLayout, generation: string, iface: WorkloadInterface, mode: AttachMode): Promise<void> {
  validateInterface(iface);
  const entry = layout.interfaceEntry(iface);
  const fresh = !existsSync(entry);
  await mkdir(entry, { recursive: true });
  await hookGate(iface, entry, mode, generation, fresh);
}

/** Whether the interface (and its namespace) still exists. */
export async function interfaceExists(iface: WorkloadInterface): Promise<boolean> {
  return (await interfaceIndex(iface)) !== undefined;
}

/** The interface's ifindex in its namespace, or undefined if it (or the namespace) is gone. */
export async function interfaceIndex(iface: WorkloadInterface): Promise<number | undefined> {
  if (iface.netns !== undefined && !existsSync(netnsPath(iface.netns))) return undefined;
  try {
    const [link] = JSON.parse(await runIn(iface.netns, 'ip', ['-j', 'link', 'show', 'dev', iface.name])) as { ifindex?: number }[];
    return link?.ifindex;
  } catch {
    return undefined;
  }
}

/**
 * Takes the gate off one interface (only our programs: others' and the clsact qdisc stay, other
 * users may share them) and unregisters it. A vanished interface is fine.
 */
export async function detach(layout: PinLayout, iface: WorkloadInterface): Promise<void> {
  validateInterface(iface);
  await unhookGate(iface, layout.interfaceEntry(iface), await interfaceExists(iface));
  await rm(layout.interfaceEntry(iface), { recursive: true, force: true });
}

export async function registeredInterfaces(layout: PinLayout): Promise<WorkloadInterface[]> {
  if (!existsSync(layout.interfacesDir)) return [];
  return (await readdir(layout.interfacesDir)).map((entry) => {
    const [name = '', netns = ''] = entry.split('@').map(decodeURIComponent);
    return netns === '' ? { name } : { name, netns };
  });
}

/** Detaches every registered interface and removes the pin directory (maps, programs, registry). */
export async function uninstall(layout: PinLayout): Promise<void> {
  for (const iface of await registeredInterfaces(layout)) await detach(layout, iface);
  await rm(layout.root, { recursive: true, force: true });
}
