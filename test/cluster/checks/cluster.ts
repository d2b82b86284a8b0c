// Access to a cluster made by test/cluster/up.sh, for the cluster checks: its env file, kubectl as
// the admin (from the control plane's network namespace), commands in a node's namespaces, and
// commands in pods. Nothing here makes or removes the cluster: run-checks.sh does.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';

export interface Cluster {
  dir: string;
  env: Record<string, string>;
}

/** The cluster named by CLUSTER_DIR (up.sh's output). */
export function clusterFromEnv(): Cluster {
  const dir = process.env.CLUSTER_DIR;
  if (!dir) throw new Error('CLUSTER_DIR is not set: run the checks through test/cluster/run-checks.sh');
  const env: Record<string, string> = {};
  for (const line of readFileSync(join(dir, 'env'), 'utf8').split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return { dir, env };
}

export interface Run {
  ok: boolean;
  stdout: string;
  stderr: string;
}

const TIMEOUT_MS = 120_000;

async function run(file: string, args: string[], input?: string): Promise<Run> {
  const result = await execa(file, args, { reject: false, timeout: TIMEOUT_MS, ...(input === undefined ? {} : { input }) });
  return { ok: result.exitCode === 0, stdout: result.stdout, stderr: result.stderr };
}

/** kubectl as the cluster admin; never throws (the result says how it went). */
export function kubectl(cluster: Cluster, args: string[], input?: string): Promise<Run> {
  return run(join(cluster.dir, 'bin', 'kubectl'), args, input);
}

/** kubectl that must succeed: its stdout, or an error naming the command and its stderr. */
export async function kubectlOk(cluster: Cluster, args: string[], input?: string): Promise<string> {
  const result = await kubectl(cluster, args, input);
  if (!result.ok) throw new Error(`kubectl ${args.join(' ')} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

/** A command in node `node`'s ("a" or "b") network and mount namespaces, as its host. */
export function nodeExec(cluster: Cluster, node: 'a' | 'b', args: string[]): Promise<Run> {
  return run(join(cluster.dir, 'bin', 'node-exec'), [node, ...args]);
}

/** Polls `check` every 500 ms until it returns true or `timeoutMs` passes; returns whether it did. */
export async function eventually(check: () => Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return true;
    if (Date.now() > end) return false;
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
}
