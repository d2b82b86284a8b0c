// What a test sees of a namespace's IPsec configuration: `ip xfrm state list` (with the keys:
// a test compares them across nodes), `ip xfrm policy list` (with the templates), and
// `ip xfrm monitor` as a timestamped event stream (the order of adds and deletes shows
// make-before-break). iproute2 has no JSON output for xfrm, so these parse its text; the
// parsers are tested on canned output in test/xfrm-observer.test.ts.
import { execa, type ResultPromise } from 'execa';
import { listingBlocks } from '../../src/datapath/transport/xfrm.js';

export interface XfrmState {
  src: string;
  dst: string;
  spi: number;
  reqid: number;
  mode: string;
  /** rfc4106(gcm(aes)) key and salt in hex, as ip prints it (without 0x); undefined for another algorithm. */
  aeadKey?: string;
  /** Packets the state has protected or accepted (`ip -s`), when listed with statistics. */
  packets?: number;
}

export interface XfrmPolicy {
  src: string;
  dst: string;
  dir: string;
  priority?: number;
  tmpl?: { src: string; dst: string; proto: string; reqid: number; mode: string };
}

export interface XfrmEvent {
  /** Date.now() when the monitor's output reached us. */
  at: number;
  action: 'add' | 'delete' | 'update' | 'expire';
  kind: 'state' | 'policy';
  src: string;
  dst: string;
  spi?: number;
  dir?: string;
}

function find(block: readonly string[], pattern: RegExp): RegExpExecArray | undefined {
  for (const line of block) {
    const match = pattern.exec(line);
    if (match) return match;
  }
  return undefined;
}

// `ip -s` adds the decimal SPI and the hexadecimal reqid in parentheses.
const STATE_ID = /^proto esp spi 0x([0-9a-f]+)(?:\(\d+\))? reqid (\d+)(?:\(0x[0-9a-f]+\))? mode (\S+)/;

/** ESP states from `ip [-s] xfrm state list`. */
export function parseXfrmStates(text: string): XfrmState[] {
  const states: XfrmState[] = [];
  for (const block of listingBlocks(text)) {
    const head = /^src (\S+) dst (\S+)$/.exec(block[0]!);
    const id = find(block, STATE_ID);
    if (!head || !id) continue;
    const key = find(block, /^aead rfc4106\(gcm\(aes\)\) 0x([0-9a-f]+)\b/);
    // `ip -s`: "lifetime current:" is followed by "<bytes>(bytes), <packets>(packets)".
    const current = block.findIndex((line) => line.startsWith('lifetime current:'));
    const packets = current >= 0 ? /(\d+)\(packets\)/.exec(block[current + 1] ?? '') : null;
    states.push({
      src: head[1]!,
      dst: head[2]!,
      spi: parseInt(id[1]!, 16),
      reqid: Number(id[2]),
      mode: id[3]!,
      ...(key && { aeadKey: key[1]! }),
      ...(packets && { packets: Number(packets[1]) }),
    });
  }
  return states;
}

/** Policies from `ip xfrm policy list` (socket policies, which have no selector, are skipped). */
export function parseXfrmPolicies(text: string): XfrmPolicy[] {
  const policies: XfrmPolicy[] = [];
  for (const block of listingBlocks(text)) {
    const selector = /^src (\S+) dst (\S+)\s*$/.exec(block[0]!);
    const dir = find(block, /^dir (\S+)(?: priority (\d+))?/);
    if (!selector || !dir) continue;
    const tmpl = find(block, /^tmpl src (\S+) dst (\S+)/);
    const proto = find(block, /^proto (\S+) reqid (\d+) mode (\S+)/);
    policies.push({
      src: selector[1]!,
      dst: selector[2]!,
      dir: dir[1]!,
      ...(dir[2] !== undefined && { priority: Number(dir[2]) }),
      ...(tmpl && proto && { tmpl: { src: tmpl[1]!, dst: tmpl[2]!, proto: proto[1]!, reqid: Number(proto[2]), mode: proto[3]! } }),
    });
  }
  return policies;
}

const ACTIONS: Record<string, XfrmEvent['action']> = { Deleted: 'delete', Updated: 'update', Expired: 'expire' };

/** State and policy events from `ip xfrm monitor` output (other events are skipped). */
export function parseXfrmEvents(text: string, at: number): XfrmEvent[] {
  const events: XfrmEvent[] = [];
  for (const block of listingBlocks(text)) {
    const head = /^(?:(Deleted|Updated|Expired) )?src (\S+) dst (\S+)/.exec(block[0]!);
    if (!head) continue;
    const action = head[1] ? ACTIONS[head[1]]! : 'add';
    const id = find(block, STATE_ID);
    const dir = find(block, /^dir (\S+)/);
    if (id) events.push({ at, action, kind: 'state', src: head[2]!, dst: head[3]!, spi: parseInt(id[1]!, 16) });
    else if (dir) events.push({ at, action, kind: 'policy', src: head[2]!, dst: head[3]!, dir: dir[1]! });
  }
  return events;
}

/** `ip xfrm state list` and `ip xfrm policy list` of a namespace, parsed. */
export async function listXfrm(netns: string, options: { stats?: boolean } = {}): Promise<{ states: XfrmState[]; policies: XfrmPolicy[] }> {
  const [states, policies] = await Promise.all([
    execa('ip', ['-n', netns, ...(options.stats ? ['-s'] : []), 'xfrm', 'state', 'list']),
    execa('ip', ['-n', netns, 'xfrm', 'policy', 'list']),
  ]);
  return { states: parseXfrmStates(states.stdout), policies: parseXfrmPolicies(policies.stdout) };
}

const MONITOR_OPTIONS = { stdin: 'ignore', stdout: 'pipe', stderr: 'pipe', buffer: false, reject: false } as const;

/**
 * `ip xfrm monitor nokeys` in a namespace, recording each event with the time its first line
 * arrived. An event is a block of lines that ends where the next unindented line begins, so the
 * latest event is parsed when the next one arrives or at stop(): read `events` after stop().
 */
export class XfrmMonitor {
  readonly events: XfrmEvent[] = [];
  private block: string[] = [];
  private blockAt = 0;
  private partialLine = '';

  private constructor(private readonly process: ResultPromise<typeof MONITOR_OPTIONS>) {
    process.stdout.on('data', (chunk: Buffer) => this.take(chunk.toString('utf8')));
  }

  /** Starts the monitor; resolves once ip is running (it prints nothing until an event). */
  static async start(netns: string): Promise<XfrmMonitor> {
    const process = execa('ip', ['-n', netns, 'xfrm', 'monitor', 'nokeys'], MONITOR_OPTIONS);
    await new Promise<void>((resolve, reject) => {
      process.once('spawn', () => resolve());
      process.once('error', reject);
    });
    return new XfrmMonitor(process);
  }

  async stop(): Promise<XfrmEvent[]> {
    this.process.kill();
    await this.process;
    this.take('\n');
    this.finishBlock();
    return this.events;
  }

  private take(text: string): void {
    const now = Date.now();
    const lines = (this.partialLine + text).split('\n');
    this.partialLine = lines.pop()!;
    for (const line of lines) {
      if (line.trim() === '') continue;
      if (!/^\s/.test(line)) {
        this.finishBlock();
        this.blockAt = now;
      }
      this.block.push(line);
    }
  }

  private finishBlock(): void {
    if (this.block.length > 0) this.events.push(...parseXfrmEvents(this.block.join('\n'), this.blockAt));
    this.block = [];
  }
}
