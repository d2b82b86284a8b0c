// The transport half of the identity API test servers: a real grpc-js server on a unix socket
// in a temp dir (or on 127.0.0.1), the server streams it holds open, and the failure modes the
// providers must survive: answering every call with an error status (PermissionDenied,
// Unavailable, …) until told to recover, and a restart that drops every connection.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';

export type StreamCall = grpc.ServerWritableStream<unknown, unknown>;

export interface ListenOptions {
  /** Listen on 127.0.0.1 (a tcp:// address) instead of a unix socket. */
  tcp?: boolean;
}

export class GrpcTestServer {
  private server: grpc.Server;
  private readonly open = new Map<StreamCall, string>();
  private failure?: { code: grpc.status; details: string };
  /** The address a provider is configured with: unix:///…/api.sock or tcp://127.0.0.1:port. */
  address = '';

  private constructor(
    private readonly service: grpc.ServiceDefinition,
    private readonly implementation: grpc.UntypedServiceImplementation,
    private bindTarget: string,
    private readonly dir: string | undefined,
  ) {
    this.server = this.newServer();
  }

  static async start(service: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation, options: ListenOptions = {}): Promise<GrpcTestServer> {
    const dir = options.tcp ? undefined : await mkdtemp(join(tmpdir(), 'meshauth-grpc-'));
    const target = dir ? `unix:${join(dir, 'api.sock')}` : '127.0.0.1:0';
    const server = new GrpcTestServer(service, implementation, target, dir);
    const port = await server.bind();
    if (dir) {
      server.address = `unix://${join(dir, 'api.sock')}`;
    } else {
      // A restart must come back on the same port, or the client could not find it again.
      server.bindTarget = `127.0.0.1:${port}`;
      server.address = `tcp://127.0.0.1:${port}`;
    }
    return server;
  }

  /** Takes a new stream call: false (and the call is ended) while a failure is set. */
  accept(call: StreamCall, method: string): boolean {
    if (this.failure) {
      end(call, this.failure);
      return false;
    }
    this.open.set(call, method);
    call.on('cancelled', () => this.open.delete(call));
    return true;
  }

  /** Ends one call with an error status (it is no longer pushed to). */
  reject(call: StreamCall, code: grpc.status, details: string): void {
    this.open.delete(call);
    end(call, { code, details });
  }

  /** The open stream calls of one method. */
  streams(method: string): StreamCall[] {
    return [...this.open].filter(([, name]) => name === method).map(([call]) => call);
  }

  /** From now on every call, open or new, ends with this status, until recover(). */
  fail(code: grpc.status, details: string): void {
    this.failure = { code, details };
    for (const call of this.open.keys()) end(call, this.failure);
    this.open.clear();
  }

  recover(): void {
    this.failure = undefined;
  }

  /** Drops every connection and stream, as a restarting agent does, and listens again. */
  async restart(): Promise<void> {
    this.server.forceShutdown();
    this.open.clear();
    this.server = this.newServer();
    await this.bind();
  }

  async close(): Promise<void> {
    this.server.forceShutdown();
    this.open.clear();
    if (this.dir) await rm(this.dir, { recursive: true, force: true });
  }

  private newServer(): grpc.Server {
    const server = new grpc.Server();
    server.addService(this.service, this.implementation);
    return server;
  }

  private bind(): Promise<number> {
    return new Promise((resolve, reject) => {
      this.server.bindAsync(this.bindTarget, grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port)));
    });
  }
}

function end(call: StreamCall, status: { code: grpc.status; details: string }): void {
  // grpc-js turns an 'error' event on a server stream into the call's final status.
  call.emit('error', Object.assign(new Error(status.details), status));
}
