// The traffic probe: one per workload namespace (started under nsenter by probe.ts). It serves a
// TCP echo port and a UDP port that records what arrives, and on request makes TCP connections,
// sends datagrams and streams of numbered datagrams. Requests and replies are JSON lines on
// stdin/stdout, matched by id; a request that could not be carried out is answered with `fault`
// (a probe that fails, e.g. a TCP connect timing out, is a normal reply with ok: false). Times
// are CLOCK_MONOTONIC nanoseconds (process.hrtime), the same clock in every process of the host,
// so the caller can compare them with its own.
// It imports nothing from meshauth: it starts fast, also under tsx.
// Usage: probe-main <tcp port> <udp port>
import { createServer, connect, type Socket } from 'node:net';
import { createSocket } from 'node:dgram';
import { createInterface } from 'node:readline';

type Request =
  | { id: number; op: 'tcp'; host: string; port: number; timeoutMs: number; payload?: string }
  | { id: number; op: 'udp'; host: string; port: number; payload: string }
  | { id: number; op: 'received'; text: string; timeoutMs: number }
  | { id: number; op: 'stream'; host: string; port: number; tag: string; intervalMs: number; count: number }
  | { id: number; op: 'arrivals'; tag: string };

interface Arrival {
  text: string;
  atNs: bigint;
}

const tcpPort = Number(process.argv[2]);
const udpPort = Number(process.argv[3]);
const MAX_ARRIVALS = 200_000;
const arrivals: Arrival[] = [];
const waiters = new Set<{ text: string; resolve: () => void }>();

function arrived(text: string): void {
  if (arrivals.length >= MAX_ARRIVALS) arrivals.shift();
  arrivals.push({ text, atNs: process.hrtime.bigint() });
  for (const waiter of waiters) if (text.includes(waiter.text)) waiter.resolve();
}

function reply(message: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function elapsedMs(startNs: bigint): number {
  return Number(process.hrtime.bigint() - startNs) / 1e6;
}

/** Connects (and echoes `payload` when given); ms is the time to the connection, or to the echo. */
function tcpProbe(request: Extract<Request, { op: 'tcp' }>): Promise<Record<string, unknown>> {
  return new Promise((resolve) => {
    const start = process.hrtime.bigint();
    const socket: Socket = connect({ host: request.host, port: request.port });
    let echoed = '';
    let settled = false;
    const finish = (result: Record<string, unknown>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish({ ok: false, error: 'timeout', ms: elapsedMs(start) }), request.timeoutMs);
    socket.on('error', (err: NodeJS.ErrnoException) => finish({ ok: false, error: err.code ?? err.message, ms: elapsedMs(start) }));
    socket.on('connect', () => {
      if (request.payload === undefined) return finish({ ok: true, ms: elapsedMs(start) });
      socket.write(request.payload);
    });
    socket.on('data', (chunk: Buffer) => {
      echoed += chunk.toString('utf8');
      if (request.payload !== undefined && echoed.length >= request.payload.length) finish({ ok: echoed === request.payload, ms: elapsedMs(start) });
    });
  });
}

function waitFor(text: string, timeoutMs: number): Promise<Record<string, unknown>> {
  const start = process.hrtime.bigint();
  if (arrivals.some((a) => a.text.includes(text))) return Promise.resolve({ ok: true, ms: 0 });
  return new Promise((resolve) => {
    const waiter = {
      text,
      resolve: () => {
        waiters.delete(waiter);
        clearTimeout(timer);
        resolve({ ok: true, ms: elapsedMs(start) });
      },
    };
    const timer = setTimeout(() => {
      waiters.delete(waiter);
      resolve({ ok: false, ms: elapsedMs(start) });
    }, timeoutMs);
    waiters.add(waiter);
  });
}

const udp = createSocket('udp4');
udp.on('message', (message) => arrived(message.toString('utf8')));

function sendUdp(host: string, port: number, payload: string): Promise<void> {
  return new Promise((resolve, reject) => udp.send(payload, port, host, (err) => (err ? reject(err) : resolve())));
}

/** Sends `tag:<seq>` datagrams every intervalMs; returns each one's send time. A failed send
 *  (e.g. no route) is recorded as sent: from the network's point of view it was lost. */
function stream(request: Extract<Request, { op: 'stream' }>): Promise<Record<string, unknown>> {
  const sent: [number, string][] = [];
  return new Promise((resolve) => {
    let seq = 0;
    const timer = setInterval(() => {
      const now = process.hrtime.bigint();
      sent.push([seq, now.toString()]);
      sendUdp(request.host, request.port, `${request.tag}:${seq}`).catch(() => undefined);
      seq++;
      if (seq >= request.count) {
        clearInterval(timer);
        resolve({ ok: true, sent });
      }
    }, request.intervalMs);
  });
}

async function handle(request: Request): Promise<Record<string, unknown>> {
  switch (request.op) {
    case 'tcp':
      return tcpProbe(request);
    case 'udp':
      await sendUdp(request.host, request.port, request.payload);
      return { ok: true };
    case 'received':
      return waitFor(request.text, request.timeoutMs);
    case 'stream':
      return stream(request);
    case 'arrivals': {
      const prefix = `${request.tag}:`;
      const found = arrivals.filter((a) => a.text.startsWith(prefix)).map((a) => [Number(a.text.slice(prefix.length)), a.atNs.toString()]);
      return { ok: true, arrivals: found };
    }
  }
}

const server = createServer((socket) => {
  socket.on('data', (chunk: Buffer) => {
    arrived(chunk.toString('utf8'));
    socket.write(chunk);
  });
  socket.on('error', () => undefined);
});

await new Promise<void>((resolve, reject) => {
  server.once('error', reject);
  server.listen(tcpPort, '0.0.0.0', () => resolve());
});
await new Promise<void>((resolve, reject) => {
  udp.once('error', reject);
  udp.bind(udpPort, '0.0.0.0', () => resolve());
});

createInterface({ input: process.stdin })
  .on('line', (line) => {
    let request: Request;
    try {
      request = JSON.parse(line) as Request;
    } catch {
      return reply({ fault: `not JSON: ${line.slice(0, 100)}` });
    }
    handle(request).then(
      (result) => reply({ id: request.id, ...result }),
      (err: unknown) => reply({ id: request.id, fault: err instanceof Error ? err.message : String(err) }),
    );
  })
  // The parent went away: nothing more to do.
  .on('close', () => process.exit(0));
reply({ ready: true });
