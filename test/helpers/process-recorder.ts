// Records the command line and environment of every process that runs while a test does, for
// secrets that are only known afterwards (keys an agent derived inside a handshake). Where the
// secrets are known up front, CmdlineScanner (secret-scanner.ts) is the lighter tool.
import { ProcScan, secretForms } from './secret-scanner.js';

export interface ProcessRecord {
  pid: string;
  /** The command line, arguments joined by spaces. */
  command: string;
  environ: string;
}

export interface Recording {
  scans: number;
  processes: ProcessRecord[];
}

// A (pid, command line) is
// recorded once: both only change with an exec. Kernel threads (an empty command line when
// first seen: they never exec) are not read again, which keeps each scan cheap.
const RECORDER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const flag = new Int32Array(workerData.flag);
const seen = new Map();
const kernelThreads = new Set([String(process.pid)]);
let scans = 0;
const read = (path) => { try { return fs.readFileSync(path, 'latin1'); } catch { return undefined; } };
while (Atomics.load(flag, 0) === 0) {
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(pid) || kernelThreads.has(pid)) continue;
    const cmdline = read('/proc/' + pid + '/cmdline');
    if (cmdline === undefined) continue;
    if (cmdline === '' && scans === 0) { kernelThreads.add(pid); continue; }
    if (cmdline === '') continue;
    const command = cmdline.split('\\0').filter(Boolean).join(' ');
    if (seen.has(pid + ' ' + command)) continue;
    seen.set(pid + ' ' + command, { pid, command, environ: read('/proc/' + pid + '/environ') ?? '' });
  }
  scans++;
  Atomics.wait(flag, 0, 0, workerData.intervalMs);
}
parentPort.postMessage({ scans, processes: [...seen.values()] });
`;

export class ProcessRecorder extends ProcScan<Recording> {
  constructor(intervalMs = 10) {
    super(RECORDER_SOURCE, { intervalMs });
  }
}

/** The recorded processes whose command line or environment holds one of the keys (any encoding). */
export function processesHolding(recording: Recording, keys: readonly Buffer[]): { pid: string; command: string; where: 'cmdline' | 'environ' }[] {
  const needles = [...new Set(keys.flatMap(secretForms))];
  const hits: { pid: string; command: string; where: 'cmdline' | 'environ' }[] = [];
  for (const process of recording.processes) {
    if (needles.some((needle) => process.command.includes(needle))) hits.push({ pid: process.pid, command: process.command.slice(0, 200), where: 'cmdline' });
    if (needles.some((needle) => process.environ.includes(needle))) hits.push({ pid: process.pid, command: process.command.slice(0, 200), where: 'environ' });
  }
  return hits;
}
