// Runs programs in one boot of the run-in-guest VM (Debian's stock kernel under qemu: kernel ESP
// and WireGuard, which this machine's kernel lacks) and asserts the JSON check lines each prints:
// every expected check ran and passed, and no other check failed. test/guest/run.sh frames each
// program with stage lines, so a run that ran out of time says which stage did. A missing qemu,
// kernel or build is a failure with the reason, never a silent pass.
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** CI puts shared/ beside the clone. */
const RUN_IN_GUEST = resolve(ROOT, '../shared/tools/run-in-guest');

export interface CheckLine {
  check: string;
  ok: boolean;
  detail?: unknown;
}

interface StageLine {
  stage: string;
  event: 'start' | 'end' | 'failed' | 'timeout';
  uptimeS: number;
}

export interface GuestStage {
  /** A program under test/guest/, run compiled from dist/test/guest/PROGRAM.js. */
  program: string;
  /** Its own time limit inside the guest. */
  limitSeconds: number;
  expectedChecks: readonly string[];
}

export interface GuestRun {
  /** The guest's boot, before the first stage starts. */
  bootLimitSeconds: number;
  stages: readonly GuestStage[];
}

/** The whole run's limit: boot, every stage, and a margin for qemu's start and stop. */
export function guestRunSeconds(run: GuestRun): number {
  return run.bootLimitSeconds + run.stages.reduce((sum, stage) => sum + stage.limitSeconds + 5, 0) + 10;
}

/** Runs the stages in one boot; returns each stage's parsed checks (after asserting them). */
export async function runGuestStages(t: ExecutionContext, run: GuestRun): Promise<Map<string, Map<string, CheckLine>>> {
  const byStage = new Map<string, Map<string, CheckLine>>();
  if (!existsSync(RUN_IN_GUEST)) {
    t.fail(`${RUN_IN_GUEST} not found: the guest tool comes from shared/tools beside the repository`);
    return byStage;
  }
  for (const { program } of run.stages) {
    if (!existsSync(resolve(ROOT, `dist/test/guest/${program}.js`))) {
      t.fail(`dist/test/guest/${program}.js is missing: run "npm run build" first (npm test does)`);
      return byStage;
    }
  }
  const result = await execa(RUN_IN_GUEST, ['test/guest/run.sh', ...run.stages.map((s) => `${s.program}:${s.limitSeconds}`)], {
    cwd: ROOT,
    reject: false,
    env: { GUEST_TIMEOUT: String(guestRunSeconds(run)) },
  });
  const stageEvents: StageLine[] = [];
  let current: Map<string, CheckLine> | undefined;
  for (const line of result.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    const parsed = JSON.parse(line) as Partial<CheckLine & StageLine>;
    if (typeof parsed.stage === 'string') {
      stageEvents.push(parsed as StageLine);
      if (parsed.event === 'start') byStage.set(parsed.stage, (current = new Map<string, CheckLine>()));
    } else if (typeof parsed.check === 'string' && current) {
      current.set(parsed.check, parsed as CheckLine);
    }
  }
  const timeline = stageEvents.map((e) => `${e.stage} ${e.event} at ${e.uptimeS}s`).join(', ') || 'nothing: the guest never finished booting';
  t.log(`guest timeline (uptime): ${timeline}`);
  if (result.exitCode === 125) {
    const last = stageEvents.at(-1);
    const where = !last ? `booting (limit ${run.bootLimitSeconds} s)` : last.event === 'start' ? `stage ${last.stage}` : `after stage ${last.stage}`;
    t.fail(`the guest VM ran out of time or did not run, while ${where}; timeline: ${timeline}\n${result.stderr}`);
  }
  for (const stage of run.stages) {
    const checks = byStage.get(stage.program);
    const ended = stageEvents.find((e) => e.stage === stage.program && e.event !== 'start');
    if (ended?.event === 'timeout') t.fail(`stage ${stage.program} ran out of its ${stage.limitSeconds} s`);
    for (const name of stage.expectedChecks) {
      const check = checks?.get(name);
      t.true(check?.ok === true, `${stage.program} › ${name}: ${check ? JSON.stringify(check.detail) : 'did not run'}`);
    }
    const unexpected = [...(checks?.values() ?? [])].filter((c) => !c.ok && !stage.expectedChecks.includes(c.check));
    t.deepEqual(unexpected, [], `${stage.program}: an extra check failed (e.g. a scenario threw)`);
  }
  t.is(result.exitCode, 0, result.stderr);
  return byStage;
}
