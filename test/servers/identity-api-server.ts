// What the SPIFFE identity API test servers (Workload API, SPIRE Delegated Identity API) share:
// their grpc-js transport, the calls they received, the federated trust domains they serve, and
// the failure controls the providers are tested against.
import * as grpc from '@grpc/grpc-js';
import type { DevCa } from '../../src/identity/dev-ca.js';
import { GrpcTestServer, type ListenOptions, type StreamCall } from './grpc-test-server.js';

export abstract class IdentityApiServer<Method extends string, Call extends { method: Method }> {
  /** Every call received, in order. */
  readonly calls: Call[] = [];
  protected federated: DevCa[];
  protected transport!: GrpcTestServer;

  protected constructor(federated: DevCa[] | undefined) {
    this.federated = federated ?? [];
  }

  /** Serves the API; each method's handler takes its new stream calls. */
  protected async listen(service: grpc.ServiceDefinition, handlers: Record<Method, (call: StreamCall) => void>, options: ListenOptions): Promise<void> {
    this.transport = await GrpcTestServer.start(service, handlers, options);
  }

  get address(): string {
    return this.transport.address;
  }

  callCount(method: Method): number {
    return this.calls.filter((call) => call.method === method).length;
  }

  /** Replaces the federated trust domains and pushes the new state. */
  setFederated(cas: DevCa[]): void {
    this.federated = cas;
    this.push();
  }

  /** Every call (open or new) ends with this status until recover(). */
  fail(code: grpc.status, details = `test server answers ${grpc.status[code]}`): void {
    this.transport.fail(code, details);
  }

  recover(): void {
    this.transport.recover();
  }

  /** Drops every connection, as a restarting agent does. */
  restart(): Promise<void> {
    return this.transport.restart();
  }

  close(): Promise<void> {
    return this.transport.close();
  }

  /** Sends the current state to every open stream. */
  protected abstract push(): void;
}
