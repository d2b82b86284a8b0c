// Watching every process's command line and environment for key material while a test runs:
// CmdlineScanner for secrets known up front, ProcessRecorder (process-recorder.ts) for secrets
// known only afterwards. Both scan /proc from a worker thread, in a tight loop the test's event
// loop cannot starve, until stop().
import { Worker } from 'node:worker_threads';

/** A worker running `source` (which loops until workerData.flag is set, then posts its result)
 *  with `workerData`; stop() sets the flag and resolves with what the worker posted. */
export class ProcScan<T> {
  private readonly flag = new Int32Array(new SharedArrayBuffer(4));
  private readonly result: Promise<T>;

  constructor(source: string, workerData: Record<string, unknown>) {
    const worker = new Worker(source, { eval: true, workerData: { ...workerData, flag: this.flag.buffer } });
    this.result = new Promise((resolve, reject) => {
      worker.once('message', (result: T) => resolve(result));
      worker.once('error', reject);
    });
  }

  async stop(): Promise<T> {
    Atomics.store(this.flag, 0, 1);
    Atomics.notify(this.flag, 0);
    return this.result;
  }
}

/** Every representation a key could take on a command line or in an environment. */
export function secretForms(key: Buffer | string): string[] {
  const bytes = typeof key === 'string' ? Buffer.from(key, 'base64') : key;
  return [bytes.toString('base64'), bytes.toString('base64url'), bytes.toString('hex'), bytes.toString('hex').toUpperCase()];
}

export interface ScanReport {
  scans: number;
  /** Distinct processes whose command line was read; proves the scanner saw the tools run. */
  commandsSeen: string[];
  hits: { pid: string; where: 'cmdline' | 'environ'; command: string }[];
}

// Kernel threads (empty command line, they never exec) are skipped after the first look, and an
// environment is read once per (pid, command line): both only change with an exec.
const SCANNER_SOURCE = `
const { workerData, parentPort } = require('node:worker_threads');
const fs = require('node:fs');
const flag = new Int32Array(workerData.flag);
const needles = workerData.needles.map((s) => Buffer.from(s));
const kernelThreads = new Set([String(process.pid)]);
const seen = new Map();
const hits = [];
let scans = 0;
const read = (path) => { try { return fs.readFileSync(path); } catch { return undefined; } };
while (Atomics.load(flag, 0) === 0) {
  for (const pid of fs.readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(pid) || kernelThreads.has(pid)) continue;
    const cmdline = read('/proc/' + pid + '/cmdline');
    if (cmdline === undefined) continue;
    if (cmdline.length === 0 && scans === 0) { kernelThreads.add(pid); continue; }
    const command = cmdline.toString().split('\\0').filter(Boolean).join(' ').slice(0, 200);
    for (const needle of needles) if (cmdline.includes(needle)) hits.push({ pid, where: 'cmdline', command });
    if (seen.has(pid + ' ' + command)) continue;
    seen.set(pid + ' ' + command, command);
    const environ = read('/proc/' + pid + '/environ') ?? Buffer.alloc(0);
    for (const needle of needles) if (environ.includes(needle)) hits.push({ pid, where: 'environ', command });
  }
  scans++;
  Atomics.wait(flag, 0, 0, 2);
}
parentPort.postMessage({ scans, commandsSeen: [...new Set(seen.values())], hits });
`;

/** Watches /proc/<pid>/cmdline and environ of every process for the given secrets until stop(). */
export class CmdlineScanner extends ProcScan<ScanReport> {
  /** Secrets as Buffers (raw key bytes) or strings (base64 keys). */
  constructor(secrets: (Buffer | string)[]) {
    super(SCANNER_SOURCE, { needles: [...new Set(secrets.flatMap(secretForms))] });
  }
}
