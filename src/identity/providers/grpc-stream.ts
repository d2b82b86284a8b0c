// One long-lived gRPC server stream that carries full states (a Workload API or Delegated
// Identity subscription), kept open for as long as the provider runs. What to do when it ends
// follows SPIFFE_Workload_Endpoint.md §6 and go-spiffe:
//   InvalidArgument  report, never retry (the request itself is wrong; retrying cannot help);
//   Unimplemented    report, never retry (the server does not offer this RPC);
//   PermissionDenied report, withdraw what the stream delivered, retry with backoff;
//   anything else    (Unavailable, a dropped connection, a stream the server ended) report and
//                    reconnect: at once if the stream had delivered a good message, otherwise
//                    after the next backoff delay (1 s, 2 s, … 30 s with jitter by default).
// The backoff restarts after every good message.
import { Client, credentials, status as grpcStatus, type ClientReadableStream, type StatusObject } from '@grpc/grpc-js';
import { Backoff, type BackoffOptions } from '../../util/backoff.js';
import type { Logger } from '../../util/logger.js';
import { ProviderError } from '../types.js';
import type { GrpcEndpoint } from './grpc-endpoint.js';

export const DEFAULT_STREAM_BACKOFF: BackoffOptions = { initialMs: 1_000, maxMs: 30_000, jitter: 0.2 };

/** A plaintext channel to a local identity endpoint (the Workload Endpoint spec forbids requiring
 *  TLS there). grpc-js reconnects a broken channel on its own backoff; it is kept within ours so
 *  that a recovered server is reached when our retry comes, not minutes later. */
export function createIdentityClient(endpoint: GrpcEndpoint, backoff: BackoffOptions): Client {
  return new Client(endpoint.target, credentials.createInsecure(), {
    'grpc.initial_reconnect_backoff_ms': backoff.initialMs,
    'grpc.max_reconnect_backoff_ms': backoff.maxMs,
  });
}

export interface ResilientStreamOptions<T> {
  /** Names the stream in logs and errors, e.g. "FetchX509SVID". */
  label: string;
  /** Starts one call; called again for every reconnection. */
  open(): ClientReadableStream<T>;
  /** Takes one message (a full state). Returns false when it was malformed and discarded. */
  onMessage(message: T): boolean;
  /** The server answered PermissionDenied: everything this stream delivered is withdrawn. */
  onPermissionDenied(): void;
  report(err: ProviderError): void;
  backoff: BackoffOptions;
  logger: Logger;
}

export class ResilientStream<T> {
  private call?: ClientReadableStream<T>;
  private retryTimer?: NodeJS.Timeout;
  private stopped = false;
  private readonly backoff: Backoff;

  constructor(private readonly options: ResilientStreamOptions<T>) {
    this.backoff = new Backoff(options.backoff);
  }

  start(): void {
    this.connect();
  }

  /** Cancels the call and any pending retry; nothing is reported afterwards. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    const call = this.call;
    this.call = undefined;
    call?.cancel();
  }

  private connect(): void {
    this.retryTimer = undefined;
    if (this.stopped) return;
    let call: ClientReadableStream<T>;
    try {
      call = this.options.open();
    } catch (err) {
      this.fail('unavailable', `cannot start ${this.options.label}: ${(err as Error).message}`, this.backoff.next());
      return;
    }
    this.call = call;
    let delivered = false;
    call.on('data', (message: T) => {
      // A message that trails the final status belongs to a call already given up on; taking it
      // could resurrect SVIDs that a PermissionDenied has just withdrawn.
      if (this.call !== call || this.stopped) return;
      if (!this.accept(message)) return;
      delivered = true;
      this.backoff.reset();
    });
    // The outcome of the call is handled once, from 'status'; this listener only keeps an
    // error status from being thrown as an unhandled 'error' event.
    call.on('error', () => undefined);
    call.on('status', (status: StatusObject) => {
      if (this.call !== call) return;
      this.call = undefined;
      if (!this.stopped) this.ended(status, delivered);
    });
  }

  /** Hands a message over; a throwing handler is a bug, logged and counted, never thrown into grpc-js. */
  private accept(message: T): boolean {
    try {
      return this.options.onMessage(message);
    } catch (err) {
      this.options.logger.error({ stream: this.options.label, err: (err as Error).message }, 'handling an identity update failed');
      return false;
    }
  }

  private ended(status: StatusObject, delivered: boolean): void {
    const { label } = this.options;
    const what = `${label} ${status.code === grpcStatus.OK ? 'was ended by the server' : `failed with ${grpcStatus[status.code]}`}${status.details ? `: ${status.details}` : ''}`;
    switch (status.code) {
      case grpcStatus.INVALID_ARGUMENT:
        this.fail('invalid_argument', `${what}; not retrying (the request is malformed)`);
        return;
      case grpcStatus.UNIMPLEMENTED:
        this.fail('unimplemented', `${what}; not retrying (the server does not implement it)`);
        return;
      case grpcStatus.PERMISSION_DENIED:
        this.options.onPermissionDenied();
        this.fail('permission_denied', `${what}; its SVIDs and bundles are withdrawn`, this.backoff.next());
        return;
      default:
        this.fail('unavailable', what, delivered ? 0 : this.backoff.next());
    }
  }

  /** Reports a failure and, when retryInMs is given, schedules the reconnection. */
  private fail(kind: ProviderError['kind'], message: string, retryInMs?: number): void {
    const retrying = retryInMs !== undefined;
    this.options.logger.warn({ stream: this.options.label, kind, retryInMs: retryInMs ?? null }, message);
    this.options.report(new ProviderError(kind, retrying ? `${message}; retrying in ${retryInMs} ms` : message));
    if (retrying) this.retryTimer = setTimeout(() => this.connect(), retryInMs);
  }
}
