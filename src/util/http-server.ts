// The pieces shared by the agent's two small HTTP servers (metrics on TCP, control on a unix
// socket): both serve a few GET endpoints to local tools and scrapers, take request bodies only
// on the paths a server names (the control socket's CNI requests, small JSON), bound every phase
// of a request in time and size, and answer handler bugs with a 500.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { ListenOptions } from 'node:net';

export type Handler = (req: IncomingMessage, res: ServerResponse, path: string) => void | Promise<void>;

const LIMITS = {
  /** Time to receive all headers, and the whole request; checked every checkIntervalMs. */
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  checkIntervalMs: 1_000,
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs: 5_000,
  /** A socket with no activity at all (including a slow response reader) is destroyed after this. */
  socketTimeoutMs: 30_000,
  maxHeaderSize: 8 * 1024,
  maxHeadersCount: 64,
  maxConnections: 64,
};

/** How long a handler waits for the agent's status or readiness function before giving up. */
export const CALLBACK_TIMEOUT_MS = 5_000;

/** An HTTP server for GET endpoints: requests with a body get 413 (except on the paths
 *  `acceptsBody` names; the handler reads those with readJsonBody), errors thrown by the handler 500. */
export function createBoundedServer(handler: Handler, onError: (err: unknown) => void, acceptsBody: (path: string) => boolean = () => false): Server {
  const server = createServer(
    {
      maxHeaderSize: LIMITS.maxHeaderSize,
      headersTimeout: LIMITS.headersTimeoutMs,
      requestTimeout: LIMITS.requestTimeoutMs,
      keepAliveTimeout: LIMITS.keepAliveTimeoutMs,
      connectionsCheckingInterval: LIMITS.checkIntervalMs,
    },
    (req, res) => {
      let path: string;
      try {
        path = new URL(req.url ?? '/', 'http://localhost').pathname;
      } catch {
        sendText(res, 400, 'bad request target\n');
        return;
      }
      if (hasBody(req) && !acceptsBody(path)) {
        // Close after answering, so Node does not read (and discard) an unbounded body.
        res.setHeader('Connection', 'close');
        sendText(res, 413, 'request bodies are not accepted\n');
        return;
      }
      Promise.resolve()
        .then(() => handler(req, res, path))
        .catch((err: unknown) => {
          onError(err);
          if (!res.headersSent) sendText(res, 500, 'internal error\n');
          else res.destroy();
        });
    },
  );
  server.maxHeadersCount = LIMITS.maxHeadersCount;
  server.maxConnections = LIMITS.maxConnections;
  server.setTimeout(LIMITS.socketTimeoutMs, (socket) => socket.destroy());
  return server;
}

function hasBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** A request body that is refused: too big or not JSON. The handler answers it with its status. */
export class BodyError extends Error {
  constructor(
    readonly status: 400 | 413,
    message: string,
  ) {
    super(message);
    this.name = 'BodyError';
  }
}

/** The request's body parsed as JSON, refused past `maxBytes` (without buffering the rest). */
export function readJsonBody(req: IncomingMessage, maxBytes: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxBytes) {
        reject(new BodyError(413, `request body exceeds ${maxBytes} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('error', reject);
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(new BodyError(400, 'request body is not JSON'));
      }
    });
  });
}

/** Only GET and HEAD are served; anything else on a known path gets 405. */
export function allowGetOnly(req: IncomingMessage, res: ServerResponse): boolean {
  if (req.method === 'GET' || req.method === 'HEAD') return true;
  res.setHeader('Allow', 'GET, HEAD');
  sendText(res, 405, 'method not allowed\n');
  return false;
}

export function sendText(res: ServerResponse, status: number, body: string, contentType = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    'X-Content-Type-Options': 'nosniff',
  });
  res.end(body);
}

export function sendJson(res: ServerResponse, status: number, value: unknown): void {
  sendText(res, status, `${JSON.stringify(value)}\n`, 'application/json');
}

/** Resolves with `fn()`'s value, or rejects once `ms` have passed without one. */
export async function withTimeout<T>(fn: () => T | Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([Promise.resolve().then(fn), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** listen() as a promise: resolves once listening, rejects with the bind error (EADDRINUSE, ...). */
export function listen(server: Server, options: ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err);
    server.once('error', onError);
    server.listen(options, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

/** Stops accepting and closes every connection, idle or not. */
export function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
