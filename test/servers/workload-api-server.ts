// A SPIFFE Workload API server for tests, faithful to SPIFFE_Workload_API.md and
// SPIFFE_Workload_Endpoint.md as SPIRE's agent implements them: it requires the
// `workload.spiffe.io: true` header on every call (InvalidArgument otherwise), sends the full
// state as soon as a stream opens and again on every change, answers PermissionDenied when the
// caller has no SVIDs, and keys bundles by the trust domain's SPIFFE ID (spiffe://td) as SPIRE
// does. SVIDs are real X509-SVIDs issued by DevCa instances.
import * as grpc from '@grpc/grpc-js';
import type { DevCa, KeyAlgorithm } from '../../src/identity/dev-ca.js';
import type { RawSvid } from '../../src/identity/types.js';
import { workloadApiDefinition, type X509BundlesResponse, type X509SvidResponse } from '../../src/identity/providers/grpc-protos.js';
import { WORKLOAD_API_HEADER } from '../../src/identity/providers/spiffe.js';
import type { ListenOptions, StreamCall } from './grpc-test-server.js';
import { IdentityApiServer } from './identity-api-server.js';

export interface WorkloadSvidSpec {
  id: string;
  hint?: string;
  keyAlgorithm?: KeyAlgorithm;
}

export interface WorkloadApiServerOptions extends ListenOptions {
  /** The CA of the server's own trust domain; it issues every SVID. */
  ca: DevCa;
  svids: WorkloadSvidSpec[];
  /** CAs of foreign trust domains, served as federated bundles. */
  federated?: DevCa[];
  /** false: FetchX509Bundles answers Unimplemented, as SPIRE agents before 0.11 did. */
  serveBundles?: boolean;
  ttlMs?: number;
}

export type WorkloadMethod = 'FetchX509SVID' | 'FetchX509Bundles';

export interface WorkloadCall {
  method: WorkloadMethod;
  /** The values of the workload.spiffe.io header the call carried. */
  header: string[];
}

export class WorkloadApiServer extends IdentityApiServer<WorkloadMethod, WorkloadCall> {
  private issued: { spec: WorkloadSvidSpec; svid: RawSvid }[] = [];
  private tamper?: (response: X509SvidResponse) => X509SvidResponse;

  private constructor(private readonly options: WorkloadApiServerOptions) {
    super(options.federated);
  }

  static async start(options: WorkloadApiServerOptions): Promise<WorkloadApiServer> {
    const server = new WorkloadApiServer(options);
    await server.listen(
      workloadApiDefinition().service,
      {
        FetchX509SVID: (call: StreamCall) => server.open(call, 'FetchX509SVID'),
        FetchX509Bundles: (call: StreamCall) => server.open(call, 'FetchX509Bundles'),
      },
      options,
    );
    await server.setSvids(options.svids);
    return server;
  }

  /** Grants exactly these SVIDs (freshly issued) and pushes the new state; [] withdraws all. */
  async setSvids(specs: WorkloadSvidSpec[]): Promise<void> {
    this.issued = await Promise.all(specs.map(async (spec) => ({ spec, svid: await this.issue(spec) })));
    this.push();
  }

  /** Re-issues every SVID and pushes the new state. */
  async rotate(): Promise<void> {
    await this.setSvids(this.issued.map(({ spec }) => spec));
  }

  /** Makes the server misbehave: every X509SVIDResponse from now on passes through tamper. */
  setTamper(tamper: ((response: X509SvidResponse) => X509SvidResponse) | undefined): void {
    this.tamper = tamper;
    this.push();
  }

  private open(call: StreamCall, method: WorkloadMethod): void {
    const header = call.metadata.get(WORKLOAD_API_HEADER).map(String);
    this.calls.push({ method, header });
    // SPIRE's wording; the spec requires exactly one value, "true".
    if (header.length !== 1 || header[0] !== 'true') {
      call.emit('error', Object.assign(new Error('security header missing from request'), { code: grpc.status.INVALID_ARGUMENT }));
      return;
    }
    if (method === 'FetchX509Bundles' && this.options.serveBundles === false) {
      // What grpc-js and grpc-go answer for a method the server does not register.
      call.emit('error', Object.assign(new Error('The server does not implement the method /SpiffeWorkloadAPI/FetchX509Bundles'), { code: grpc.status.UNIMPLEMENTED }));
      return;
    }
    if (!this.transport.accept(call, method)) return;
    this.send(call, method);
  }

  protected push(): void {
    for (const method of ['FetchX509SVID', 'FetchX509Bundles'] as const) {
      for (const call of this.transport.streams(method)) this.send(call, method);
    }
  }

  private send(call: StreamCall, method: WorkloadMethod): void {
    if (method === 'FetchX509Bundles') {
      call.write(this.bundlesResponse());
    } else if (this.issued.length === 0) {
      // Spec: a caller entitled to no SVIDs gets PermissionDenied, which ends the stream.
      this.transport.reject(call, grpc.status.PERMISSION_DENIED, 'no identity issued');
    } else {
      const response = this.svidResponse();
      call.write(this.tamper ? this.tamper(response) : response);
    }
  }

  private svidResponse(): X509SvidResponse {
    const own = Buffer.concat(this.options.ca.bundle());
    return {
      svids: this.issued.map(({ spec, svid }) => ({
        spiffe_id: spec.id,
        x509_svid: Buffer.concat(svid.chain),
        x509_svid_key: svid.key,
        bundle: own,
        hint: spec.hint ?? '',
      })),
      crl: [],
      federated_bundles: Object.fromEntries(this.federated.map((ca) => [`spiffe://${ca.trustDomain}`, Buffer.concat(ca.bundle())])),
    };
  }

  private bundlesResponse(): X509BundlesResponse {
    const cas = [this.options.ca, ...this.federated];
    return { crl: [], bundles: Object.fromEntries(cas.map((ca) => [`spiffe://${ca.trustDomain}`, Buffer.concat(ca.bundle())])) };
  }

  private issue(spec: WorkloadSvidSpec): Promise<RawSvid> {
    return this.options.ca.issue({ id: spec.id, ttlMs: this.options.ttlMs ?? 3_600_000, ...(spec.keyAlgorithm && { keyAlgorithm: spec.keyAlgorithm }) });
  }
}
