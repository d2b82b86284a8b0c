// rss_mb_100k: the RSS of a child holding HELD_PAIRS pairs, next to one holding none and a bare node.
import { spawn } from 'node:child_process';
import { checkpoint } from './interrupt.js';
import { megabytes, runChild, type HoldResult } from './children.js';
import { HELD_PAIRS } from './pairs.js';

export const RSS_RUNS = 3;

export interface MemoryFigures {
  empty: HoldResult;
  /** The run with the median RSS of RSS_RUNS (the garbage collector's headroom varies). */
  full: HoldResult;
  fullRunsMb: number[];
  /** A node process with nothing loaded. */
  bareNodeMb: number;
}

/** RSS of a plain `node -e` with the given loader flags, after a full GC. */
function bareRss(execArgv: string[]): Promise<number> {
  const script = 'global.gc(); global.gc(); setTimeout(() => console.log(process.memoryUsage().rss), 200);';
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...execArgv, '--expose-gc', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) => (code === 0 ? resolve(megabytes(Number(out))) : reject(new Error(`node -e exited with ${code}`))));
  });
}

export async function memory(pinDir: string): Promise<MemoryFigures> {
  const empty = await runChild<HoldResult>({ kind: 'hold', pinDir, pairs: 0 });
  const runs: HoldResult[] = [];
  for (let run = 0; run < RSS_RUNS; run++) {
    checkpoint();
    const full = await runChild<HoldResult>({ kind: 'hold', pinDir, pairs: HELD_PAIRS });
    if (full.held !== HELD_PAIRS) throw new Error(`the child held ${full.held} pairs, not ${HELD_PAIRS}`);
    runs.push(full);
  }
  runs.sort((a, b) => a.rssMb - b.rssMb);
  const full = runs[Math.floor(runs.length / 2)]!;
  return { empty, full, fullRunsMb: runs.map((r) => r.rssMb), bareNodeMb: await bareRss([]) };
}
