// Runs the meshauth CLI from source exactly as a user would, in a child process.
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export async function runCli(args: readonly string[]): Promise<CliResult> {
  const result = await execa(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    cwd: REPO_ROOT,
    reject: false,
    stdin: 'ignore',
    timeout: 60_000,
  });
  if (result.exitCode === undefined) throw new Error(`meshauth ${args.join(' ')} did not exit: ${result.message}`);
  return { exitCode: result.exitCode, stdout: result.stdout, stderr: result.stderr };
}
