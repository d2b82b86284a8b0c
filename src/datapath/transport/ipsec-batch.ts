// IPsec programming goes to `ip -force -batch -` in phases, each line belonging to one peer, so
// that a line that fails fails only its own peer (the others are programmed and kept).
import type { NetnsExec } from './exec.js';
import { failedBatchLines } from './exec.js';
import { policyDeleteLine, policyKey, policyUpdateLine, type PolicySpec } from './xfrm.js';

/** A line of a batch and the peer it belongs to, so failures are attributed. */
export interface Line {
  owner: string;
  text: string;
}

/** Updates for the wanted policies (idempotent: it also repairs drift), deletes for the rest. */
export function policyLines(owner: string, wanted: readonly PolicySpec[], previous: readonly Pick<PolicySpec, 'src' | 'dst' | 'dir'>[], priority: number): Line[] {
  const keep = new Set(wanted.map(policyKey));
  const stale = previous.filter((p) => !keep.has(policyKey(p)));
  return [...wanted.map((p) => ({ owner, text: policyUpdateLine(p, priority) })), ...stale.map((p) => ({ owner, text: policyDeleteLine(p) }))];
}

/** Runs one batch with -force (every line is tried) and records which owners had a line fail. */
export async function runPhase(exec: NetnsExec, lines: readonly Line[], failures: Map<string, string>): Promise<void> {
  if (lines.length === 0) return;
  const result = await exec.ipBatch(lines.map((l) => l.text), { force: true });
  if (result.exitCode === 0) return;
  const messages = result.stderr.split('\n');
  const failed = failedBatchLines(result.stderr);
  if (failed.length === 0) throw exec.failure('ip', ['-force', '-batch', '-'], result);
  for (const number of failed) {
    const owner = lines[number - 1]?.owner ?? '(unknown)';
    // ip prints the error just before its "Command failed -:N" line.
    const at = messages.findIndex((m) => m.includes(`Command failed -:${number}`));
    const message = (at > 0 ? messages[at - 1] : undefined)?.trim() || 'failed';
    if (!failures.has(owner)) failures.set(owner, message);
  }
}
