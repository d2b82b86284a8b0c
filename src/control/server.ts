// The agent's local control API: HTTP on a unix socket that only the agent's user can open
// (socket 0600). GET /v1/status answers with the AgentStatus that `meshauth status` shows; POST
// /v1/cni/{add,del,check} carry the CNI plugin's requests (cni-api.ts), each body validated here.
import { lstat, mkdir, unlink } from 'node:fs/promises';
import type { Server } from 'node:http';
import { connect } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from '../util/logger.js';
import { silentLogger } from '../util/logger.js';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { z } from 'zod';
import { BodyError, CALLBACK_TIMEOUT_MS, allowGetOnly, closeServer, createBoundedServer, listen, readJsonBody, sendJson, sendText, withTimeout } from '../util/http-server.js';
import {
  CNI_PATHS,
  cniAddRequestSchema,
  cniCheckRequestSchema,
  cniDelRequestSchema,
  type CniAddRequest,
  type CniAddResponse,
  type CniCheckRequest,
  type CniCheckResponse,
  type CniDelRequest,
  type CniDelResponse,
} from './cni-api.js';
import { agentStatusSchema, type AgentStatus } from './status.js';

export const DEFAULT_CONTROL_SOCKET = '/run/meshauth/control.sock';

/** A CNI request is a few hundred bytes; anything near this is not one. */
const MAX_CNI_BODY_BYTES = 16 * 1024;

/** What the agent does for the CNI plugin (absent: those paths answer 404). */
export interface CniHandlers {
  add(request: CniAddRequest): Promise<CniAddResponse>;
  del(request: CniDelRequest): Promise<CniDelResponse>;
  check(request: CniCheckRequest): Promise<CniCheckResponse>;
}

export interface ControlServerOptions {
  /** Default DEFAULT_CONTROL_SOCKET. Its directory should be the socket's own. */
  socketPath?: string;
  status: () => AgentStatus | Promise<AgentStatus>;
  cni?: CniHandlers;
  logger?: Logger;
}

export class ControlServerError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ControlServerError';
  }
}

export class ControlServer {
  private constructor(
    private readonly server: Server,
    readonly socketPath: string,
  ) {}

  static async start(options: ControlServerOptions): Promise<ControlServer> {
    const socketPath = options.socketPath ?? DEFAULT_CONTROL_SOCKET;
    const logger = options.logger ?? silentLogger();
    await prepareDirectory(dirname(socketPath));
    await removeStaleSocket(socketPath);

    const cniPaths = new Set<string>(Object.values(CNI_PATHS));
    const server = createBoundedServer(
      async (req, res, path) => {
        if (options.cni && cniPaths.has(path)) {
          await serveCni(options.cni, req, res, path);
          return;
        }
        if (path !== '/v1/status') {
          sendText(res, 404, 'not found\n');
          return;
        }
        if (!allowGetOnly(req, res)) return;
        const status = await withTimeout(options.status, CALLBACK_TIMEOUT_MS, 'the agent status');
        // Only the fields of the status contract go out: a stray field is stripped, and a status
        // that breaks the contract is an agent bug, answered with 500 rather than sent.
        sendJson(res, 200, agentStatusSchema.parse(status));
      },
      (err) => logger.error({ err }, 'control request failed'),
      (path) => options.cni !== undefined && cniPaths.has(path),
    );

    // bind() creates the socket file with mode 0777 & ~umask, and a client can connect as soon as
    // listen() runs, before any chmod: so the umask is narrowed around those two calls, which
    // Node makes synchronously, and no client ever sees a wider mode. (The umask is per process;
    // for this instant, files created elsewhere in the process can only get narrower modes.)
    const previousUmask = process.umask(0o177);
    let listening: Promise<void>;
    try {
      listening = listen(server, { path: socketPath });
    } finally {
      process.umask(previousUmask);
    }
    try {
      await listening;
    } catch (err) {
      throw new ControlServerError(`cannot listen on control socket ${socketPath}: ${errorCode(err)}`, { cause: err });
    }
    logger.info({ socketPath }, 'control API listening');
    return new ControlServer(server, socketPath);
  }

  /** Stops serving; Node removes the socket file. */
  close(): Promise<void> {
    return closeServer(this.server);
  }
}

/**
 * One CNI request: POST only, a JSON body that matches its schema (else 400 naming the field),
 * answered with the handler's JSON. The handlers bound their own waits (ADD waits for pairs).
 */
async function serveCni(cni: CniHandlers, req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
  if (req.method !== 'POST') {
    res.setHeader('Allow', 'POST');
    sendText(res, 405, 'method not allowed\n');
    return;
  }
  let body: unknown;
  try {
    body = await readJsonBody(req, MAX_CNI_BODY_BYTES);
  } catch (err) {
    if (!(err instanceof BodyError)) throw err;
    sendText(res, err.status, `${err.message}\n`);
    return;
  }
  const parse = <T>(schema: z.ZodType<T>): T | undefined => {
    const parsed = schema.safeParse(body);
    if (parsed.success) return parsed.data;
    const issue = parsed.error.issues[0];
    sendText(res, 400, `invalid request: ${issue ? `${issue.path.join('.') || '(top level)'}: ${issue.message}` : 'unreadable'}\n`);
    return undefined;
  };
  if (path === CNI_PATHS.add) {
    const request = parse(cniAddRequestSchema);
    if (request) sendJson(res, 200, await cni.add(request));
  } else if (path === CNI_PATHS.del) {
    const request = parse(cniDelRequestSchema);
    if (request) sendJson(res, 200, await cni.del(request));
  } else {
    const request = parse(cniCheckRequestSchema);
    if (request) sendJson(res, 200, await cni.check(request));
  }
}

/**
 * Creates the socket's directory 0700. An existing one is used as it is, unless others could
 * write to it: then they could replace the socket with their own, and the agent refuses.
 */
async function prepareDirectory(directory: string): Promise<void> {
  await mkdir(directory, { recursive: true, mode: 0o700 });
  const stats = await lstat(directory);
  if (!stats.isDirectory()) throw new ControlServerError(`control socket directory ${directory} is not a directory`);
  if ((stats.mode & 0o022) !== 0) {
    throw new ControlServerError(
      `control socket directory ${directory} is writable by other users (mode ${(stats.mode & 0o7777).toString(8)}); ` +
        'give the socket a directory of its own',
    );
  }
}

/**
 * A socket file left by an agent that died is removed. One that accepts connections belongs to a
 * running agent and is left alone, as is anything that is not a socket.
 */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let stats;
  try {
    stats = await lstat(socketPath);
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return;
    throw new ControlServerError(`cannot inspect control socket ${socketPath}: ${errorCode(err)}`, { cause: err });
  }
  if (!stats.isSocket()) throw new ControlServerError(`${socketPath} exists and is not a socket; not replacing it`);
  const result = await probe(socketPath);
  if (result === 'live') throw new ControlServerError(`another agent is already listening on control socket ${socketPath}`);
  if (result !== 'ECONNREFUSED') throw new ControlServerError(`cannot probe control socket ${socketPath}: ${result}`);
  await unlink(socketPath);
}

/** 'live' when something accepts a connection on the socket, else the connect error's code. */
function probe(socketPath: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ path: socketPath });
    socket.setTimeout(CALLBACK_TIMEOUT_MS, () => {
      socket.destroy();
      resolve('ETIMEDOUT');
    });
    socket.once('connect', () => {
      socket.destroy();
      resolve('live');
    });
    socket.once('error', (err) => resolve(errorCode(err)));
  });
}

function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? (err instanceof Error ? err.message : String(err));
}
