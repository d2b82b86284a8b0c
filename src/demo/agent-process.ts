// One real `meshauth agent` process inside a node's network namespace, as the demo and the
// end-to-end tests run it: started with nsenter (which keeps the host's bpffs), its JSON log
// (stderr) appended to a file, its state read through the control socket and /metrics.
//
// The process is started detached, in its own process group: a Ctrl-C at the terminal reaches
// the demo, which stops the agents itself, and `meshauth demo --keep` can leave them running.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { fetchStatus } from '../control/client.js';
import type { AgentStatus } from '../control/status.js';
import { inNetns, nsenterArgs } from '../netns/exec.js';
import { cliInvocation } from './self.js';

export interface AgentProcessOptions {
  /** Node name, for messages. */
  name: string;
  netns: string;
  configPath: string;
  /** The agent's log (appended). */
  logPath: string;
  controlSocket: string;
  /** host:port of its metrics endpoint, inside the namespace. */
  metricsAddress: string;
}

/** A parsed pino log line (or {msg} for a line that is not JSON). */
export interface LogLine {
  level?: number;
  time?: number;
  msg?: string;
  err?: string;
  [field: string]: unknown;
}

export class AgentProcess {
  /** When the process was spawned (Date.now()). */
  readonly spawnedAt = Date.now();
  private exit?: { code: number | null; signal: NodeJS.Signals | null };
  private readonly exitWaiters = new Set<() => void>();

  private constructor(
    readonly options: AgentProcessOptions,
    private readonly child: ChildProcess,
    /** Bytes of the log file written before this process started. */
    private readonly logOffset: number,
  ) {
    child.on('exit', (code, signal) => {
      this.exit = { code, signal };
      for (const waiter of this.exitWaiters) waiter();
    });
  }

  static async start(options: AgentProcessOptions): Promise<AgentProcess> {
    const logOffset = (await readFile(options.logPath).catch(() => Buffer.alloc(0))).length;
    const log = openSync(options.logPath, 'a', 0o600);
    try {
      const [node, args] = cliInvocation(['agent', '--config', options.configPath]);
      const child = spawn('nsenter', nsenterArgs(options.netns, node, args), { detached: true, stdio: ['ignore', log, log] });
      await new Promise<void>((resolve, reject) => {
        child.once('spawn', resolve);
        child.once('error', reject);
      });
      return new AgentProcess(options, child, logOffset);
    } finally {
      closeSync(log);
    }
  }

  get pid(): number {
    return this.child.pid!;
  }

  get name(): string {
    return this.options.name;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  /** Lets the demo exit while the agent keeps running (`meshauth demo --keep`). */
  detach(): void {
    this.child.unref();
  }

  signal(signal: NodeJS.Signals): void {
    if (this.running) this.child.kill(signal);
  }

  /** Resolves when the process has exited (true), or after timeoutMs (false). */
  async exited(timeoutMs: number): Promise<boolean> {
    if (!this.running) return true;
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.exitWaiters.delete(done);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.exitWaiters.delete(done);
        resolve(false);
      }, timeoutMs);
      this.exitWaiters.add(done);
    });
  }

  /** SIGKILL, as a crash would: the agent gets no chance to clean up anything. */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    await this.exited(10_000);
  }

  /** SIGTERM (a graceful stop), then SIGKILL if it takes longer than timeoutMs. */
  async stop(timeoutMs = 5000): Promise<void> {
    this.signal('SIGTERM');
    if (!(await this.exited(timeoutMs))) await this.kill();
  }

  /** This process's log lines, parsed. */
  async logs(): Promise<LogLine[]> {
    const text = (await readFile(this.options.logPath).catch(() => Buffer.alloc(0))).subarray(this.logOffset).toString('utf8');
    return text
      .split('\n')
      .filter(Boolean)
      .map((line) => {
        try {
          return JSON.parse(line) as LogLine;
        } catch {
          return { msg: line };
        }
      });
  }

  /** The first log line matching (from line `since` on), waiting for it up to timeoutMs. */
  async waitForLog(match: (line: LogLine) => boolean, description: string, options: { since?: number; timeoutMs?: number } = {}): Promise<LogLine> {
    const timeoutMs = options.timeoutMs ?? 15_000;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = (await this.logs()).slice(options.since ?? 0).find(match);
      if (found) return found;
      if (!this.running) throw await this.exitedError(`before logging ${description}`);
      if (Date.now() > deadline) throw new Error(`agent ${this.name} did not log ${description} within ${timeoutMs} ms; see ${this.options.logPath}`);
      await sleep(25);
    }
  }

  status(): Promise<AgentStatus> {
    return fetchStatus({ socketPath: this.options.controlSocket, timeoutMs: 5000 });
  }

  /** Polls the status until check() accepts it; returns that status. */
  async waitForStatus(check: (status: AgentStatus) => boolean, description: string, timeoutMs = 20_000): Promise<AgentStatus> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    for (;;) {
      if (!this.running) throw await this.exitedError(`while waiting for ${description}`);
      try {
        const status = await this.status();
        if (check(status)) return status;
        last = status;
      } catch (err) {
        last = (err as Error).message; // not listening yet
      }
      if (Date.now() > deadline) {
        throw new Error(`agent ${this.name}: timed out after ${timeoutMs} ms waiting for ${description}; last status: ${JSON.stringify(last).slice(0, 1500)}`);
      }
      await sleep(25);
    }
  }

  /** The Prometheus text from /metrics, fetched inside the node's namespace. */
  async metrics(): Promise<string> {
    const url = `http://${this.options.metricsAddress}/metrics`;
    const script = `fetch(${JSON.stringify(url)}).then(async (r) => { if (!r.ok) throw new Error('HTTP ' + r.status); process.stdout.write(await r.text()); }).catch((e) => { console.error(e.message); process.exit(1); })`;
    const result = await inNetns(this.options.netns, process.execPath, ['-e', script], { reject: false, timeout: 15_000 });
    if (result.exitCode !== 0) throw new Error(`scraping ${url} in ${this.options.netns} failed: ${result.stderr.trim()}`);
    return result.stdout;
  }

  /**
   * Why a wait ended: the agent exited. Carries the end of its log (stderr, so a crash's stack
   * too), which a test's cleanup deletes with the rest of the cluster's files.
   */
  private async exitedError(when: string): Promise<Error> {
    const text = (await readFile(this.options.logPath).catch(() => Buffer.alloc(0))).subarray(this.logOffset).toString('utf8');
    const tail = text.trimEnd().split('\n').slice(-12).join('\n');
    const exit = this.exit?.signal ?? `exit code ${this.exit?.code}`;
    return new Error(`agent ${this.name} exited (${exit}) ${when}; the end of ${this.options.logPath}:\n${tail}`);
  }
}

/** The sum of the samples of a metric whose labels include `labels`, from a Prometheus text
 *  exposition (0 when there are none). */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match || match[1] !== name) continue;
    const found = new Map([...(match[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((m): [string, string] => [m[1]!, m[2]!]));
    if (Object.entries(labels).every(([key, value]) => found.get(key) === value)) sum += Number(match[4]);
  }
  return sum;
}
