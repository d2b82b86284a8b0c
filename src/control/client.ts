// The client side of the control API (see server.ts), as `meshauth status` uses it.
import { request } from 'node:http';
import { agentStatusSchema, type AgentStatus } from './status.js';
import { DEFAULT_CONTROL_SOCKET } from './server.js';

/** Why the agent could not be asked: no agent, not allowed, or an answer that makes no sense. */
export type ControlErrorKind = 'no-agent' | 'permission-denied' | 'timeout' | 'bad-response';

export class ControlClientError extends Error {
  constructor(
    readonly kind: ControlErrorKind,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'ControlClientError';
  }
}

export interface ControlClientOptions {
  socketPath?: string;
  timeoutMs?: number;
}

/** The largest status accepted (a node with very many pairs); a bigger answer is refused, not buffered. */
const MAX_RESPONSE_BYTES = 64 * 1024 * 1024;

export async function fetchStatus(options: ControlClientOptions = {}): Promise<AgentStatus> {
  const socketPath = options.socketPath ?? DEFAULT_CONTROL_SOCKET;
  const { status, body } = await get(socketPath, '/v1/status', options.timeoutMs ?? 10_000);
  if (status !== 200) {
    throw new ControlClientError('bad-response', `the agent on ${socketPath} answered HTTP ${status}: ${body.trim().slice(0, 200)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    throw new ControlClientError('bad-response', `the agent on ${socketPath} answered with invalid JSON`);
  }
  const parsed = agentStatusSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new ControlClientError('bad-response', `the agent on ${socketPath} sent a malformed status (${issue?.path.join('.')}: ${issue?.message})`);
  }
  return parsed.data;
}

function get(socketPath: string, path: string, timeoutMs: number): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET', timeout: timeoutMs, headers: { Accept: 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_RESPONSE_BYTES) {
          req.destroy(new ControlClientError('bad-response', `the agent's answer exceeds ${MAX_RESPONSE_BYTES} bytes`));
          return;
        }
        chunks.push(chunk);
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', (err) => reject(describe(err, socketPath)));
    });
    req.on('timeout', () => req.destroy(new ControlClientError('timeout', `the agent on ${socketPath} did not answer within ${timeoutMs} ms`)));
    req.on('error', (err) => reject(describe(err, socketPath)));
    req.end();
  });
}

function describe(err: Error, socketPath: string): ControlClientError {
  if (err instanceof ControlClientError) return err;
  switch ((err as NodeJS.ErrnoException).code) {
    case 'ENOENT':
    case 'ECONNREFUSED':
      return new ControlClientError('no-agent', `no agent is running (nothing listening on ${socketPath})`, { cause: err });
    case 'EACCES':
    case 'EPERM':
      return new ControlClientError('permission-denied', `permission denied on ${socketPath} (run as the agent's user, usually root)`, { cause: err });
    default:
      return new ControlClientError('bad-response', `cannot talk to the agent on ${socketPath}: ${err.message}`, { cause: err });
  }
}
