// The two ways the gate hooks both directions of an interface:
//
//   tcx  the kernel's multi-program tc hook (Linux 6.6+), through native/meshauth-tcx: a BPF link
//        per hook, pinned in the interface's registry entry (<pin dir>/interfaces/<entry>/ingress,
//        egress), no qdisc. The gate goes first among the hook's programs (a CNI program that
//        redirects would otherwise skip it); a restart swaps the link's program in one step, or,
//        if a CNI has since put a program ahead of it, pins a new first link over the old one.
//   tc   a cls_bpf filter at pref 1, handle 1 on the clsact qdisc, for older kernels; a restart
//        replaces it with `tc filter replace` on the same pref and handle, also in one step.
//
// Either way passing traffic leaves as TC_ACT_UNSPEC (TCX_NEXT), so a CNI's programs or filters
// after the gate still run. Hooking through one mechanism removes the gate from the other only
// afterwards: a switch (a kernel upgrade, or datapath.attach changed) never leaves a hook ungated.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { packageFile } from '../../util/package-root.js';
import { DatapathError } from '../errors.js';
import { PROGRAMS } from './layout.js';
import type { PinLayout, WorkloadInterface } from './pin-layout.js';
import { runIn } from './run-in.js';

export type AttachMode = 'tcx' | 'tc';
export type AttachPreference = AttachMode | 'auto';
export type Hook = 'ingress' | 'egress';

export interface AttachedProgram {
  id: number;
  name: string;
  via: AttachMode;
  /** TCX: whether it runs before every other program on the hook. */
  first?: boolean;
}

const TC_PREF = 1;
const TC_HANDLE = 1;
const PROGRAM_ON: Record<Hook, string> = { ingress: PROGRAMS.fromWorkload, egress: PROGRAMS.toWorkload };
const HOOKS = Object.keys(PROGRAM_ON) as Hook[];

/** native/meshauth-tcx of this package (built with the gate by `npm run build:bpf`). */
export function tcxHelperPath(): string {
  const helper = packageFile('native/meshauth-tcx');
  if (!existsSync(helper)) throw new DatapathError(`${helper} not found: run \`npm run build:bpf\``);
  return helper;
}

/** meshauth-tcx's exit status for a kernel without TCX (see its probe). */
const NO_TCX = 3;

let tcxProbe: Promise<boolean> | undefined;

/**
 * Whether the kernel has TCX (Linux 6.6+). Probed once per process; a probe that fails for
 * another reason throws rather than quietly choosing tc.
 */
export function tcxUsable(): Promise<boolean> {
  tcxProbe ??= execa(tcxHelperPath(), ['probe'], { reject: false }).then(({ exitCode, stderr }) => {
    if (exitCode === 0) return true;
    if (exitCode === NO_TCX) return false;
    throw new DatapathError(`meshauth-tcx probe failed: ${stderr || `exit ${String(exitCode)}`}`);
  });
  return tcxProbe;
}

/** `auto`: TCX where usable, tc otherwise. Asking for TCX where it is not usable throws. */
export async function resolveAttachMode(preference: AttachPreference): Promise<AttachMode> {
  const tcx = await tcxUsable();
  if (preference === 'tcx' && !tcx) {
    throw new DatapathError('datapath.attach is tcx, but this kernel has no TCX (Linux 6.6 or later)');
  }
  return preference === 'auto' ? (tcx ? 'tcx' : 'tc') : preference;
}

/**
 * Puts the programs of one generation on both hooks of an interface (replacing the gate's
 * previous ones); TCX links are pinned in `linkDir`, the interface's registry entry. `fresh`: the
 * interface was not registered before, so the other mechanism holds no gate of ours to remove
 * (a new pod costs no look at it).
 */
export async function hookGate(iface: WorkloadInterface, linkDir: string, mode: AttachMode, generation: string, fresh: boolean): Promise<void> {
  const pin = (hook: Hook) => join(generation, PROGRAM_ON[hook]);
  if (mode === 'tcx') {
    await runIn(iface.netns, tcxHelperPath(), ['attach', iface.name, linkDir, ...HOOKS.map((hook) => `${hook}=${pin(hook)}`)]);
    if (!fresh) await removeTcFilters(iface);
    return;
  }
  // Before attaching: a failed probe must not follow a done attach.
  const removeFromTcx = !fresh && (await tcxUsable());
  const batch = [
    `qdisc replace dev ${iface.name} clsact`,
    ...HOOKS.map((hook) => `filter replace dev ${iface.name} ${hook} pref ${TC_PREF} handle ${TC_HANDLE} bpf da pinned ${pin(hook)}`),
  ].join('\n');
  await runIn(iface.netns, 'tc', ['-batch', '-'], `${batch}\n`);
  if (removeFromTcx) await removeTcxLinks(linkDir);
}

/**
 * Takes the gate off both hooks, whichever way it was attached; other programs and the qdisc
 * stay. `present`: whether the interface still exists (a vanished one leaves only pins to drop).
 */
export async function unhookGate(iface: WorkloadInterface, linkDir: string, present: boolean): Promise<void> {
  if (await tcxUsable()) await removeTcxLinks(linkDir);
  if (present) await removeTcFilters(iface);
}

/**
 * The gate's programs on both hooks of an interface, where the gate of `layout` attached them.
 * `registeredAs`: the interface as that gate's agent names it, where it sees it from another
 * network namespace than ours (an agent running inside the namespace names no namespace).
 */
export async function attachedPrograms(
  layout: PinLayout,
  iface: WorkloadInterface,
  registeredAs: WorkloadInterface = iface,
): Promise<Record<Hook, AttachedProgram | undefined>> {
  const found: Record<Hook, AttachedProgram | undefined> = { ingress: undefined, egress: undefined };
  if (await tcxUsable()) {
    const linkDir = layout.interfaceEntry(registeredAs);
    const shown = JSON.parse(await runIn(iface.netns, tcxHelperPath(), ['show', iface.name, linkDir])) as Record<Hook, { prog: number; first: boolean } | null>;
    for (const hook of HOOKS) {
      const link = shown[hook];
      if (link) found[hook] = { id: link.prog, name: PROGRAM_ON[hook], via: 'tcx', first: link.first };
    }
  }
  for (const hook of HOOKS) {
    if (found[hook]) continue;
    const program = await tcFilterProgram(iface, hook);
    if (program) found[hook] = { ...program, via: 'tc' };
  }
  return found;
}

/** Detaches and unpins the gate's TCX links; needs no interface (nor its namespace). */
function removeTcxLinks(linkDir: string): Promise<string> {
  return runIn(undefined, tcxHelperPath(), ['detach', linkDir]);
}

async function removeTcFilters(iface: WorkloadInterface): Promise<void> {
  const qdiscs = JSON.parse(await runIn(iface.netns, 'tc', ['-j', 'qdisc', 'show', 'dev', iface.name])) as { kind?: string }[];
  if (!qdiscs.some((qdisc) => qdisc.kind === 'clsact')) return;
  for (const hook of HOOKS) {
    if (await tcFilterProgram(iface, hook)) {
      await runIn(iface.netns, 'tc', ['filter', 'del', 'dev', iface.name, hook, 'pref', String(TC_PREF), 'handle', String(TC_HANDLE), 'bpf']);
    }
  }
}

interface TcFilter {
  pref?: number;
  options?: { handle?: string; prog?: { id?: number; name?: string } };
}

/** The gate's cls_bpf filter on one hook: our pref, handle and program name. */
async function tcFilterProgram(iface: WorkloadInterface, hook: Hook): Promise<{ id: number; name: string } | undefined> {
  const filters = JSON.parse(await runIn(iface.netns, 'tc', ['-j', 'filter', 'show', 'dev', iface.name, hook])) as TcFilter[];
  for (const filter of filters) {
    const prog = filter.options?.prog;
    if (filter.pref === TC_PREF && Number(filter.options?.handle) === TC_HANDLE && prog?.name === PROGRAM_ON[hook] && prog.id) {
      return { id: prog.id, name: prog.name };
    }
  }
  return undefined;
}
