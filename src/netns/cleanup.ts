// Removing namespaces and what runs inside them: for a topology's destroy(), and for cleaning up
// after a process that made namespaces died (`meshauth demo --cleanup` reads their names from a
// manifest). Only namespaces we made are ever named here, so every process inside one is ours.
import { existsSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { COMMAND_TIMEOUT_MS } from '../util/command-timeout.js';

export function namespaceExists(netns: string): boolean {
  return existsSync(`/run/netns/${netns}`);
}

/** Kills the processes inside these namespaces, then deletes them; one that does not exist is
 *  skipped. */
export async function removeNamespaces(namespaces: readonly string[]): Promise<void> {
  await killNamespaceProcesses(namespaces);
  for (const netns of namespaces) {
    if (namespaceExists(netns)) await execa('ip', ['netns', 'del', netns], { reject: false, timeout: COMMAND_TIMEOUT_MS });
  }
}

/** SIGKILLs every process inside these namespaces, again until none is left (a dying process
 *  may have started another). */
export async function killNamespaceProcesses(namespaces: readonly string[]): Promise<void> {
  const existing = namespaces.filter(namespaceExists);
  for (let round = 0; round < 100; round++) {
    const pids = (await Promise.all(existing.map(namespacePids))).flat();
    if (pids.length === 0) break;
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    await sleep(20);
  }
}

async function namespacePids(netns: string): Promise<number[]> {
  const result = await execa('ip', ['netns', 'pids', netns], { reject: false, timeout: COMMAND_TIMEOUT_MS });
  return result.exitCode === 0 ? result.stdout.split('\n').filter(Boolean).map(Number) : [];
}
