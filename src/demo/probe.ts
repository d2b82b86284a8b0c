// The caller's side of a traffic probe (probe-main.ts) running inside a workload namespace.
import { createInterface } from 'node:readline';
import { execa, type ResultPromise } from 'execa';
import { nsenterArgs } from '../netns/exec.js';
import { modulePath, nodeInvocation } from './self.js';

/** Ports every probe listens on: TCP echo, UDP recorder. */
export const PROBE_TCP_PORT = 7070;
export const PROBE_UDP_PORT = 7071;

export interface TcpResult {
  ok: boolean;
  /** Time to the connection (or the echo of the payload), or until it failed. */
  ms: number;
  error?: string;
}

export interface StreamResult {
  /** [sequence number, CLOCK_MONOTONIC ns] of every datagram sent. */
  sent: [number, bigint][];
}

const PROBE_SCRIPT = modulePath('probe-main');
const CHILD_OPTIONS = { buffer: false, reject: false, stdin: 'pipe', stdout: 'pipe', stderr: 'pipe' } as const;
const START_TIMEOUT_MS = 30_000;

export class Probe {
  private nextId = 0;
  private readonly pending = new Map<number, { resolve: (reply: Record<string, unknown>) => void; reject: (err: Error) => void }>();
  private exited?: Error;

  private constructor(
    readonly netns: string,
    private readonly child: ResultPromise<typeof CHILD_OPTIONS>,
  ) {}

  /** Starts a probe in `netns` and waits until it is listening. */
  static async start(netns: string): Promise<Probe> {
    const [node, args] = nodeInvocation(PROBE_SCRIPT, [String(PROBE_TCP_PORT), String(PROBE_UDP_PORT)]);
    const child = execa('nsenter', nsenterArgs(netns, node, args), CHILD_OPTIONS);
    const probe = new Probe(netns, child);
    child.stdin.on('error', () => undefined); // a dead probe fails its pending requests instead
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
    const ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`probe in ${netns} did not start within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
      createInterface({ input: child.stdout }).on('line', (line) => {
        let message: Record<string, unknown>;
        try {
          message = JSON.parse(line) as Record<string, unknown>;
        } catch {
          return;
        }
        if (message.ready === true) {
          clearTimeout(timer);
          return resolve();
        }
        const id = typeof message.id === 'number' ? message.id : -1;
        const waiter = probe.pending.get(id);
        probe.pending.delete(id);
        if (typeof message.fault === 'string') waiter?.reject(new Error(`probe in ${netns}: ${message.fault}`));
        else waiter?.resolve(message);
      });
      void child.then((result) => {
        clearTimeout(timer);
        const err = new Error(`probe in ${netns} exited (${result.exitCode ?? result.signal}): ${stderr.trim()}`);
        probe.exited = err;
        reject(err);
        for (const waiter of probe.pending.values()) waiter.reject(err);
        probe.pending.clear();
      });
    });
    try {
      await ready;
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
    return probe;
  }

  /** A TCP connection to host (the probe port by default); with payload, echoed back. */
  async tcp(host: string, options: { timeoutMs?: number; payload?: string; port?: number } = {}): Promise<TcpResult> {
    const reply = await this.request({ op: 'tcp', host, port: options.port ?? PROBE_TCP_PORT, timeoutMs: options.timeoutMs ?? 1000, payload: options.payload });
    return { ok: reply.ok === true, ms: Number(reply.ms), ...(typeof reply.error === 'string' && { error: reply.error }) };
  }

  async udp(host: string, payload: string, port = PROBE_UDP_PORT): Promise<void> {
    await this.request({ op: 'udp', host, port, payload });
  }

  /** Whether TCP data or a datagram containing `text` arrived here (waiting up to timeoutMs). */
  async received(text: string, timeoutMs: number): Promise<boolean> {
    return (await this.request({ op: 'received', text, timeoutMs })).ok === true;
  }

  /** Sends `count` datagrams `tag:<seq>` to host, one every intervalMs. */
  async stream(host: string, tag: string, options: { intervalMs: number; count: number }): Promise<StreamResult> {
    const reply = await this.request({ op: 'stream', host, port: PROBE_UDP_PORT, tag, ...options });
    return { sent: (reply.sent as [number, string][]).map(([seq, ns]) => [seq, BigInt(ns)]) };
  }

  /** The datagrams of a stream that arrived here: sequence number → CLOCK_MONOTONIC ns. */
  async arrivals(tag: string): Promise<Map<number, bigint>> {
    const reply = await this.request({ op: 'arrivals', tag });
    return new Map((reply.arrivals as [number, string][]).map(([seq, ns]) => [seq, BigInt(ns)]));
  }

  async stop(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.child;
  }

  private request(command: Record<string, unknown>): Promise<Record<string, unknown>> {
    if (this.exited) return Promise.reject(this.exited);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.child.stdin.write(`${JSON.stringify({ ...command, id })}\n`);
    });
  }
}
