// Loads the SPIFFE Workload API and SPIRE Delegated Identity API definitions from the .proto
// files in src/identity/proto/ (copied next to the compiled code by the build), and names the
// TypeScript shapes of their messages as @grpc/proto-loader decodes them with LOADER_OPTIONS:
// field names as in the .proto (snake_case), bytes as Buffer, int64 as number, and absent
// fields filled with their proto3 defaults.
import { fileURLToPath } from 'node:url';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';
import { loadSync, type Options } from '@grpc/proto-loader';

/** src/identity/proto/ under tsx, dist/src/identity/proto/ when compiled. */
const PROTO_DIR = fileURLToPath(new URL('../proto/', import.meta.url));

const LOADER_OPTIONS: Options = {
  keepCase: true,
  // int64 expires_at is seconds since the epoch: far inside Number's exact range.
  longs: Number,
  enums: String,
  bytes: Buffer,
  defaults: true,
  arrays: true,
  objects: true,
  includeDirs: [PROTO_DIR],
};

// --- SPIFFE Workload API (workloadapi.proto, no proto package) ---

export interface X509SvidRequest {
  [field: string]: never;
}

export interface WorkloadX509Svid {
  spiffe_id: string;
  /** Concatenated DER certificates, leaf first. */
  x509_svid: Buffer;
  /** PKCS#8 DER. */
  x509_svid_key: Buffer;
  /** Concatenated DER CA certificates of the SVID's trust domain. */
  bundle: Buffer;
  hint: string;
}

export interface X509SvidResponse {
  svids: WorkloadX509Svid[];
  crl: Buffer[];
  /** Keyed by the SPIFFE ID of the foreign trust domain (spiffe://td); concatenated DER. */
  federated_bundles: Record<string, Buffer>;
}

export interface X509BundlesRequest {
  [field: string]: never;
}

export interface X509BundlesResponse {
  crl: Buffer[];
  /** Keyed by the SPIFFE ID of the trust domain (spiffe://td); concatenated DER. */
  bundles: Record<string, Buffer>;
}

export interface WorkloadApiDefinition {
  service: ServiceDefinition;
  fetchX509Svid: MethodDefinition<X509SvidRequest, X509SvidResponse>;
  fetchX509Bundles: MethodDefinition<X509BundlesRequest, X509BundlesResponse>;
}

// --- SPIRE Delegated Identity API (spire.api.agent.delegatedidentity.v1) ---

export interface Selector {
  type: string;
  value: string;
}

export interface SpireX509Svid {
  /** DER certificates, leaf first. */
  cert_chain: Buffer[];
  /** Absent (null) when the server left it out. */
  id: { trust_domain: string; path: string } | null;
  /** Seconds since the epoch. */
  expires_at: number;
  hint: string;
}

export interface X509SvidWithKey {
  x509_svid: SpireX509Svid | null;
  /** PKCS#8 DER. */
  x509_svid_key: Buffer;
}

export interface SubscribeToX509SvidsRequest {
  selectors: Selector[];
  pid: number;
}

export interface SubscribeToX509SvidsResponse {
  x509_svids: X509SvidWithKey[];
  federates_with: string[];
}

export interface SubscribeToX509BundlesRequest {
  [field: string]: never;
}

export interface SubscribeToX509BundlesResponse {
  /** Keyed by trust domain (SPIRE sends spiffe://td); concatenated DER CA certificates. */
  ca_certificates: Record<string, Buffer>;
}

export interface DelegatedIdentityDefinition {
  service: ServiceDefinition;
  subscribeToX509Svids: MethodDefinition<SubscribeToX509SvidsRequest, SubscribeToX509SvidsResponse>;
  subscribeToX509Bundles: MethodDefinition<SubscribeToX509BundlesRequest, SubscribeToX509BundlesResponse>;
}

let workloadApi: WorkloadApiDefinition | undefined;
let delegatedIdentity: DelegatedIdentityDefinition | undefined;

export function workloadApiDefinition(): WorkloadApiDefinition {
  if (!workloadApi) {
    const service = loadService('workloadapi.proto', 'SpiffeWorkloadAPI');
    workloadApi = {
      service,
      fetchX509Svid: method(service, 'FetchX509SVID'),
      fetchX509Bundles: method(service, 'FetchX509Bundles'),
    };
  }
  return workloadApi;
}

export function delegatedIdentityDefinition(): DelegatedIdentityDefinition {
  if (!delegatedIdentity) {
    const service = loadService(
      'spire/api/agent/delegatedidentity/v1/delegatedidentity.proto',
      'spire.api.agent.delegatedidentity.v1.DelegatedIdentity',
    );
    delegatedIdentity = {
      service,
      subscribeToX509Svids: method(service, 'SubscribeToX509SVIDs'),
      subscribeToX509Bundles: method(service, 'SubscribeToX509Bundles'),
    };
  }
  return delegatedIdentity;
}

function loadService(file: string, serviceName: string): ServiceDefinition {
  const definition = loadSync(file, LOADER_OPTIONS);
  const service = definition[serviceName];
  if (!service || 'format' in service) throw new Error(`${file} defines no service ${serviceName}`);
  return service;
}

function method<Request, Response>(service: ServiceDefinition, name: string): MethodDefinition<Request, Response> {
  const found = service[name];
  if (!found) throw new Error(`gRPC service has no method ${name}`);
  // The .proto files and the interfaces above describe the same messages.
  return found as MethodDefinition<Request, Response>;
}
