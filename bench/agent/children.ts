// The figures measured in a child process of their own (RSS, restore with a cold JIT): the child
// runs this file, which loads only what holds pairs, not the whole agent nor the harness.
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { NumericIds } from '../../src/auth/numeric-ids.js';
import { Datapath } from '../../src/datapath/gate/datapath.js';
import { sleep } from '../../src/util/backoff.js';
import { benchManager, benchPairs, recordAll } from './pairs.js';

export type ChildTask = { kind: 'hold'; pinDir: string; pairs: number } | { kind: 'restore'; pinDir: string; idsPath: string };

export interface HoldResult {
  rssMb: number;
  heapMb: number;
  held: number;
}

export interface RestoreResult {
  openMs: number;
  restoreMs: number;
  adoptMs: number;
  restored: number;
  rssMb: number;
}

export const megabytes = (bytes: number) => bytes / (1024 * 1024);

function collectGarbage(): void {
  if (!globalThis.gc) throw new Error('the bench child needs --expose-gc');
  globalThis.gc();
  globalThis.gc();
}

async function childHold(task: Extract<ChildTask, { kind: 'hold' }>): Promise<HoldResult> {
  const datapath = await Datapath.open({ pinDir: task.pinDir });
  const { cache, manager } = benchManager(datapath, await NumericIds.load());
  recordAll(manager, benchPairs(task.pairs), Date.now());
  collectGarbage();
  await sleep(200);
  const { rss, heapUsed } = process.memoryUsage();
  const result = { rssMb: megabytes(rss), heapMb: megabytes(heapUsed), held: cache.size };
  manager.stop();
  datapath.close();
  return result;
}

async function childRestore(task: Extract<ChildTask, { kind: 'restore' }>): Promise<RestoreResult> {
  const t0 = performance.now();
  const datapath = await Datapath.open({ pinDir: task.pinDir });
  const ids = await NumericIds.load(task.idsPath);
  const { cache, manager } = benchManager(datapath, ids);
  const t1 = performance.now();
  const restored = cache.restore();
  const t2 = performance.now();
  manager.adoptRestored(restored);
  const t3 = performance.now();
  collectGarbage();
  const result = { openMs: t1 - t0, restoreMs: t2 - t1, adoptMs: t3 - t2, restored: restored.length, rssMb: megabytes(process.memoryUsage().rss) };
  manager.stop();
  datapath.close();
  return result;
}

export function runChild<T>(task: ChildTask): Promise<T> {
  const child = fork(fileURLToPath(import.meta.url), ['--child', JSON.stringify(task)], {
    execArgv: [...process.execArgv, '--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise<T>((resolve, reject) => {
    let result: T | undefined;
    child.once('message', (message) => (result = message as T));
    child.once('error', reject);
    child.once('exit', (code, signal) => {
      if (result !== undefined) resolve(result);
      else reject(new Error(`bench child (${task.kind}) exited with ${code ?? signal} and no result`));
    });
  });
}


if (process.argv[2] === '--child') {
  const task = JSON.parse(process.argv[3] ?? '') as ChildTask;
  const result = task.kind === 'hold' ? await childHold(task) : await childRestore(task);
  process.send!(result, () => process.exit(0));
}
