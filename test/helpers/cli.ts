// Runs the meshauth CLI exactly as a user would: the compiled command (`npm run build`, which
// `npm test` runs first), in a child process. Spawning the compiled CLI, not the TypeScript
// source through a loader, keeps each call fast and tests what ships.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { execa, type Options } from 'execa';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const CLI = fileURLToPath(new URL('../../dist/src/cli/main.js', import.meta.url));

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** The compiled CLI's path; fails clearly when the build is missing. */
export function builtCli(): string {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" first (npm test does)`);
  return CLI;
}

export async function runCli(args: readonly string[], options: Pick<Options, 'env' | 'uid' | 'gid'> = {}): Promise<CliResult> {
  const result = await execa(process.execPath, [builtCli(), ...args], {
    cwd: REPO_ROOT,
    reject: false,
    stdin: 'ignore',
    timeout: 60_000,
    ...options,
  });
  if (result.exitCode === undefined) throw new Error(`meshauth ${args.join(' ')} did not exit: ${result.message}`);
  return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
}
