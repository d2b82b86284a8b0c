// Kernel-side lifecycle of the gate: bpffs, pinned maps, program load, tc attach/detach, uninstall.
// Everything is driven through bpftool and tc (execa, argument arrays, never a shell), and
// everything lives under one pin directory, /sys/fs/bpf/meshauth by default (DEFAULT_PIN_DIR;
// pinDir / --pin-dir choose another, so that tests and two agents on one machine keep apart):
//
//   <pin dir>/maps/<map>              the maps (created once, reused by every later load)
//   <pin dir>/progs/<generation>/     from_workload, to_workload of the latest load
//   <pin dir>/interfaces/<name@netns> one empty directory per interface the gate was attached to
//
// bpffs holds only pins and directories, so the interface registry is a set of directory names;
// it is what `uninstall` walks, and it survives the agent. Pins survive everything but unpinning
// (agent exit, SIGKILL, deletion of the namespaces involved): that is what keeps the gate closed
// while no agent runs, and why uninstall removes them explicitly.
//
// The gate's filters take tc pref 1, handle 1 on each hook and pass traffic as TC_ACT_UNSPEC, so a
// CNI filter at a later pref still runs after them.
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm, statfs } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { MapType } from 'bpf';
import { DatapathError } from './errors.js';
import { MAP_SPECS, PROGRAMS, type MapName } from './layout.js';
import { openPinnedMap, possibleCpuCount } from './bpf-maps.js';

export const DEFAULT_PIN_DIR = '/sys/fs/bpf/meshauth';
const BPFFS_ROOT = '/sys/fs/bpf';
const BPF_FS_MAGIC = 0xcafe4a11;
const BPF_F_NO_PREALLOC = 1;

/** Both filters sit at this tc preference and handle; `replace` there swaps programs atomically. */
export const TC_PREF = 1;
export const TC_HANDLE = 1;

export interface WorkloadInterface {
  /** Host-side interface of the workload (e.g. the host end of its veth). */
  name: string;
  /** Network namespace holding that interface: a name under /run/netns or an absolute path; absent = ours. */
  netns?: string;
}

export type MapCapacities = Partial<Record<'ipcache' | 'ipcache_hosts4' | 'ipcache_hosts6' | 'interfaces' | 'policy' | 'auth' | 'ratelimit' | 'signals', number>>;

const IFNAME = /^[A-Za-z0-9_.:+-]{1,15}$/;
const NETNS_NAME = /^[A-Za-z0-9_.-]{1,255}$/;

export function validateInterface(iface: WorkloadInterface): void {
  if (!IFNAME.test(iface.name) || iface.name === '.' || iface.name === '..') {
    throw new DatapathError(`bad interface name ${JSON.stringify(iface.name)}`);
  }
  if (iface.netns !== undefined) netnsPath(iface.netns);
}

function netnsPath(netns: string): string {
  if (isAbsolute(netns)) {
    if (/\s/.test(netns)) throw new DatapathError(`bad network namespace path ${JSON.stringify(netns)}`);
    return netns;
  }
  if (!NETNS_NAME.test(netns) || netns === '.' || netns === '..') {
    throw new DatapathError(`bad network namespace name ${JSON.stringify(netns)}`);
  }
  return `/run/netns/${netns}`;
}

export function describeInterface(iface: WorkloadInterface): string {
  return iface.netns === undefined ? iface.name : `${iface.name}@${iface.netns}`;
}

/** The paths under one pin directory. */
export class PinLayout {
  readonly mapsDir: string;
  readonly progsDir: string;
  readonly interfacesDir: string;

  constructor(readonly root: string) {
    if (!isAbsolute(root) || /\s/.test(root)) {
      throw new DatapathError(`pin dir must be an absolute path without spaces, got ${JSON.stringify(root)}`);
    }
    this.mapsDir = join(root, 'maps');
    this.progsDir = join(root, 'progs');
    this.interfacesDir = join(root, 'interfaces');
  }

  mapPath(name: MapName): string {
    return join(this.mapsDir, name);
  }

  interfaceEntry(iface: WorkloadInterface): string {
    return join(this.interfacesDir, `${encodeURIComponent(iface.name)}@${encodeURIComponent(iface.netns ?? '')}`);
  }
}

/** bpf/gate.bpf.o of the package this module belongs to (built by `npm run build:bpf`). */
export function defaultObjectPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new DatapathError('cannot locate the meshauth package root');
    dir = parent;
  }
  return join(dir, 'bpf', 'gate.bpf.o');
}

async function run(file: string, args: string[], input?: string): Promise<string> {
  try {
    const result = await execa(file, args, { input, stripFinalNewline: true });
    return result.stdout;
  } catch (err) {
    const stderr = (err as { stderr?: unknown }).stderr;
    const detail = typeof stderr === 'string' && stderr.trim() !== '' ? stderr.trim() : (err as Error).message;
    throw new DatapathError(`${file} ${args.join(' ')} failed: ${detail}`, { cause: err });
  }
}

/**
 * A tool inside a network namespace (or ours). `tc -n NS` and `ip netns exec` would give tc a
 * fresh /sys in a private mount namespace, where the bpffs pins are invisible; nsenter enters
 * only the network namespace.
 */
export function runIn(netns: string | undefined, file: string, args: string[], input?: string): Promise<string> {
  if (netns === undefined) return run(file, args, input);
  return run('nsenter', [`--net=${netnsPath(netns)}`, file, ...args], input);
}

function tc(netns: string | undefined, args: string[], input?: string): Promise<string> {
  return runIn(netns, 'tc', args, input);
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
 * are kept with their contents and capacity: that is how auth entries survive a restart.
 */
export async function ensureMaps(layout: PinLayout, capacities: MapCapacities = {}): Promise<MapName[]> {
  await mkdir(layout.mapsDir, { recursive: true });
  const created: MapName[] = [];
  for (const [name, spec] of Object.entries(MAP_SPECS) as [MapName, (typeof MAP_SPECS)[MapName]][]) {
    const path = layout.mapPath(name);
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

/** Removes every program generation but `keep`; attached programs stay alive through tc. */
export async function pruneGenerations(layout: PinLayout, keep: string): Promise<void> {
  for (const entry of await readdir(layout.progsDir)) {
    const dir = join(layout.progsDir, entry);
    if (dir !== keep) await rm(dir, { recursive: true, force: true });
  }
}

/**
 * Attaches (or atomically replaces) both filters on one interface. The interface is registered
 * first, so that an attach interrupted halfway is still found by `uninstall`.
 */
export async function attach(layout: PinLayout, generation: string, iface: WorkloadInterface): Promise<void> {
  validateInterface(iface);
  await mkdir(layout.interfaceEntry(iface), { recursive: true });
  const dev = iface.name;
  const batch = [
    `qdisc replace dev ${dev} clsact`,
    `filter replace dev ${dev} ingress pref ${TC_PREF} handle ${TC_HANDLE} bpf da pinned ${join(generation, PROGRAMS.fromWorkload)}`,
    `filter replace dev ${dev} egress pref ${TC_PREF} handle ${TC_HANDLE} bpf da pinned ${join(generation, PROGRAMS.toWorkload)}`,
  ].join('\n');
  await tc(iface.netns, ['-batch', '-'], `${batch}\n`);
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

interface TcFilter {
  pref?: number;
  options?: { handle?: string; prog?: { id?: number; name?: string } };
}

/** The program attached by the gate at our pref/handle on one hook, if it is ours. */
export async function attachedProgram(
  iface: WorkloadInterface,
  hook: 'ingress' | 'egress',
): Promise<{ id: number; name: string } | undefined> {
  const filters = JSON.parse(await tc(iface.netns, ['-j', 'filter', 'show', 'dev', iface.name, hook])) as TcFilter[];
  const ours = hook === 'ingress' ? PROGRAMS.fromWorkload : PROGRAMS.toWorkload;
  for (const filter of filters) {
    const prog = filter.options?.prog;
    if (filter.pref === TC_PREF && Number(filter.options?.handle) === TC_HANDLE && prog?.name === ours && prog.id) {
      return { id: prog.id, name: prog.name };
    }
  }
  return undefined;
}

/**
 * Removes the gate's filters from one interface (only filters running our programs; the clsact
 * qdisc stays, other users may share it) and unregisters it. A vanished interface is fine.
 */
export async function detach(layout: PinLayout, iface: WorkloadInterface): Promise<void> {
  validateInterface(iface);
  if (await interfaceExists(iface)) {
    for (const hook of ['ingress', 'egress'] as const) {
      if (await attachedProgram(iface, hook)) {
        await tc(iface.netns, ['filter', 'del', 'dev', iface.name, hook, 'pref', String(TC_PREF), 'handle', String(TC_HANDLE), 'bpf']);
      }
    }
  }
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
