// The two ways the gate hooks both directions of an interface:
//
//   tcx  the kernel's multi-program tc hook (Linux 6.6+), through native/meshauth-tcx: no qdisc,
//        and the gate goes first among the hook's programs (a CNI program that redirects would
//        otherwise skip it); a restart replaces it in place, by program name, in one step, or,
//        if a CNI has since put a program ahead of it, attaches first and then detaches the old.
//   tc   a cls_bpf filter at pref 1, handle 1 on the clsact qdisc, for older kernels; a restart
//        replaces it with `tc filter replace` on the same pref and handle, also in one step.
//
// Either way passing traffic leaves as TC_ACT_UNSPEC (TCX_NEXT), so a CNI's programs or filters
// after the gate still run. Hooking through one mechanism removes the gate from the other only
// afterwards: a switch (a kernel upgrade, or datapath.attach changed) never leaves a hook ungated.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { packageFile } from '../util/package-root.js';
import { DatapathError } from './errors.js';
import { PROGRAMS } from './layout.js';
import type { WorkloadInterface } from './loader.js';
import { runIn } from './run-in.js';

export type AttachMode = 'tcx' | 'tc';
export type AttachPreference = AttachMode | 'auto';
export type Hook = 'ingress' | 'egress';

export interface AttachedProgram {
  id: number;
  name: string;
  via: AttachMode;
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

/** meshauth-tcx's exit status for "TCX cannot be used here" (see its probe). */
const TCX_UNUSABLE = 3;

let tcxProbe: Promise<boolean> | undefined;

/**
 * Whether the gate can attach through TCX: the kernel has it (Linux 6.6+) and this process may
 * open a hook's programs by id (CAP_SYS_ADMIN; the DaemonSet's NET_ADMIN + BPF + PERFMON do not
 * allow it, so there the gate attaches through tc). Probed once per process; a probe that fails
 * otherwise throws rather than quietly choosing tc.
 */
export function tcxUsable(): Promise<boolean> {
  tcxProbe ??= execa(tcxHelperPath(), ['probe'], { reject: false }).then(({ exitCode, stderr }) => {
    if (exitCode === 0) return true;
    if (exitCode === TCX_UNUSABLE) return false;
    throw new DatapathError(`meshauth-tcx probe failed: ${stderr || `exit ${String(exitCode)}`}`);
  });
  return tcxProbe;
}

/** `auto`: TCX where usable, tc otherwise. Asking for TCX where it is not usable throws. */
export async function resolveAttachMode(preference: AttachPreference): Promise<AttachMode> {
  const tcx = await tcxUsable();
  if (preference === 'tcx' && !tcx) {
    throw new DatapathError('datapath.attach is tcx, but TCX is not usable here (it needs Linux 6.6 or later and CAP_SYS_ADMIN)');
  }
  return preference === 'auto' ? (tcx ? 'tcx' : 'tc') : preference;
}

/** Puts the programs of one generation on both hooks (replacing the gate's previous ones). */
export async function hookGate(iface: WorkloadInterface, mode: AttachMode, generation: string): Promise<void> {
  const pin = (hook: Hook) => join(generation, PROGRAM_ON[hook]);
  if (mode === 'tcx') {
    await runIn(iface.netns, tcxHelperPath(), ['attach', iface.name, ...HOOKS.map((hook) => `${hook}=${pin(hook)}`)]);
    await removeTcFilters(iface);
    return;
  }
  const tcx = await tcxUsable(); // before attaching: a failed probe must not follow a done attach
  const batch = [
    `qdisc replace dev ${iface.name} clsact`,
    ...HOOKS.map((hook) => `filter replace dev ${iface.name} ${hook} pref ${TC_PREF} handle ${TC_HANDLE} bpf da pinned ${pin(hook)}`),
  ].join('\n');
  await runIn(iface.netns, 'tc', ['-batch', '-'], `${batch}\n`);
  if (tcx) await removeTcxPrograms(iface);
}

/** Takes the gate off both hooks, whichever way it was attached; other programs and the qdisc stay. */
export async function unhookGate(iface: WorkloadInterface): Promise<void> {
  if (await tcxUsable()) await removeTcxPrograms(iface);
  await removeTcFilters(iface);
}

/** The gate's program on one hook of an interface, if it is attached. */
export async function attachedProgram(iface: WorkloadInterface, hook: Hook): Promise<AttachedProgram | undefined> {
  if (await tcxUsable()) {
    const shown = JSON.parse(await runIn(iface.netns, tcxHelperPath(), ['show', iface.name])) as Record<Hook, { id: number; name: string }[]>;
    const program = shown[hook].find((candidate) => candidate.name === PROGRAM_ON[hook]);
    if (program) return { ...program, via: 'tcx' };
  }
  const program = await tcFilterProgram(iface, hook);
  return program && { ...program, via: 'tc' };
}

function removeTcxPrograms(iface: WorkloadInterface): Promise<string> {
  return runIn(iface.netns, tcxHelperPath(), ['detach', iface.name, ...HOOKS.map((hook) => PROGRAM_ON[hook])]);
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
