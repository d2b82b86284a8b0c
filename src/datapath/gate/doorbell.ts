// Event-driven wake-up for signal delivery. The gate rings a perf event array ("doorbell") after
// each signal it queues; Node cannot wait on a perf buffer itself (the `bpf` package has no reader
// and an fd of that kind cannot become a net.Socket), so one long-lived `bpftool map event_pipe`
// child waits on it and prints a line per event. Any output on its stdout means "drain the queue".
//
// The child runs under `setpriv --pdeathsig KILL`: if the agent dies, even by SIGKILL, the kernel
// kills the reader too. If the reader exits, it is restarted with backoff. bpftool does not say
// when it is ready, so `listening` turns true only WARMUP_MS after the start; until then, and
// while the reader is down, the poller polls fast instead.
import { execa, type ResultPromise } from 'execa';
import { Backoff } from '../../util/backoff.js';

const WARMUP_MS = 500;
const CHILD_OPTIONS = { buffer: false, reject: false, stdin: 'ignore', stdout: 'pipe', stderr: 'pipe' } as const;

export class Doorbell {
  private child: ResultPromise<typeof CHILD_OPTIONS> | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private stopped = true;
  private startedAt = 0;
  private readonly backoff = new Backoff({ initialMs: 500, maxMs: 30_000 });

  constructor(
    private readonly mapPath: string,
    private readonly onRing: () => void,
    private readonly onError: (err: Error) => void = () => {},
  ) {}

  /** Whether a reader has been running long enough for the gate's rings to reach us. */
  get listening(): boolean {
    return this.child !== undefined && Date.now() - this.startedAt >= WARMUP_MS;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.spawn();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    this.child?.kill('SIGKILL');
    this.child = undefined;
  }

  private spawn(): void {
    const child = execa(
      'setpriv',
      ['--pdeathsig', 'KILL', '--', 'bpftool', 'map', 'event_pipe', 'pinned', this.mapPath],
      CHILD_OPTIONS,
    );
    this.child = child;
    const started = (this.startedAt = Date.now());
    let stderr = '';
    child.stdout.on('data', () => this.onRing());
    child.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-500)));
    void child.then((result) => {
      if (this.child !== child) return; // stopped, or replaced
      this.child = undefined;
      if (this.stopped) return;
      if (Date.now() - started > 10_000) this.backoff.reset();
      const detail = stderr.trim() || result.shortMessage;
      this.onError(new Error(`signal reader (bpftool map event_pipe) exited: ${detail}`));
      this.restartTimer = setTimeout(() => this.spawn(), this.backoff.next());
    });
  }
}
