// Runs one script in the run-in-guest VM (Debian's stock kernel under qemu: kernel ESP and
// WireGuard, which this machine's kernel lacks) and asserts the JSON check lines it prints: every
// expected check ran and passed, and no other check failed. A missing qemu, kernel or guest tool
// is a failure with the reason, never a silent pass.
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
/** CI puts shared/ beside the clone. */
const RUN_IN_GUEST = resolve(ROOT, '../shared/tools/run-in-guest');

interface CheckLine {
  check: string;
  ok: boolean;
  detail?: unknown;
}

export interface GuestRun {
  /** The script, relative to the repository root. */
  script: string;
  expectedChecks: readonly string[];
  /** The guest's own time limit (run-in-guest's GUEST_TIMEOUT). */
  guestTimeoutSeconds: number;
  /** Files the script needs, e.g. compiled code under dist/. */
  requiredFiles?: readonly string[];
}

/** Runs the script in the guest; returns the parsed checks (after asserting them). */
export async function runGuestChecks(t: ExecutionContext, run: GuestRun): Promise<Map<string, CheckLine>> {
  const checks = new Map<string, CheckLine>();
  if (!existsSync(RUN_IN_GUEST)) {
    t.fail(`${RUN_IN_GUEST} not found: the guest tool comes from shared/tools beside the repository`);
    return checks;
  }
  for (const file of run.requiredFiles ?? []) {
    if (!existsSync(resolve(ROOT, file))) {
      t.fail(`${file} is missing: run "npm run build" first (npm test does)`);
      return checks;
    }
  }
  const result = await execa(RUN_IN_GUEST, [run.script], { cwd: ROOT, reject: false, env: { GUEST_TIMEOUT: String(run.guestTimeoutSeconds) } });
  if (result.exitCode === 125) {
    t.fail(`the guest VM did not run (needs qemu-system-x86, busybox-static, cpio, kmod, xz-utils and linux-image-amd64: scripts/setup.sh installs them):\n${result.stderr}`);
    return checks;
  }
  for (const line of result.stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    const parsed = JSON.parse(line) as CheckLine;
    if (typeof parsed.check === 'string') checks.set(parsed.check, parsed);
  }
  for (const name of run.expectedChecks) {
    const check = checks.get(name);
    t.true(check?.ok === true, `${name}: ${check ? JSON.stringify(check.detail) : 'did not run'}`);
  }
  const unexpected = [...checks.values()].filter((c) => !c.ok && !run.expectedChecks.includes(c.check));
  t.deepEqual(unexpected, [], 'an extra check failed (e.g. a scenario threw)');
  t.is(result.exitCode, 0, result.stderr);
  return checks;
}
