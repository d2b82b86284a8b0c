// The `spiffe` identity provider: a client of the SPIFFE Workload API (a SPIRE agent, or any
// other implementation of spiffe/spiffe standards/SPIFFE_Workload_API.md). It keeps two streams
// open on the endpoint:
//   FetchX509SVID     the SVIDs the server grants this process, each with its trust domain's
//                     bundle, plus the federated bundles;
//   FetchX509Bundles  the bundle set on its own.
// Every message is the full state of its stream. The SVIDs go to the sink as they come; the
// bundles the sink gets are the union of both streams' current states (a CA is trusted while
// either stream carries it), so a bundle absent from both is unloaded.
//
// The server decides which identities this process gets; setWanted() has nothing to ask for.
import { Metadata, type Client } from '@grpc/grpc-js';
import { splitConcatenatedDer } from '../bundle-set.js';
import { SpiffeId } from '../spiffe-id.js';
import { ProviderError, type IdentityProvider, type ProviderSink, type RawBundles, type RawSvid } from '../types.js';
import type { BackoffOptions } from '../../util/backoff.js';
import { silentLogger, type Logger } from '../../util/logger.js';
import { addDerBundles, mergeBundles, splitBundle } from './bundle-map.js';
import { GrpcEndpointError, parseGrpcEndpoint, type GrpcEndpoint } from './grpc-endpoint.js';
import { workloadApiDefinition, type X509BundlesResponse, type X509SvidResponse } from './grpc-protos.js';
import { DEFAULT_STREAM_BACKOFF, ResilientStream, createIdentityClient } from './grpc-stream.js';
import type { SpiffeOptions } from './spiffe-options.js';

/** The Workload Endpoint's SSRF guard: every request carries this key with the value "true". */
export const WORKLOAD_API_HEADER = 'workload.spiffe.io';

/** What a gRPC provider takes besides its config section; tests shorten the backoff. */
export interface GrpcProviderDeps {
  logger?: Logger;
  backoff?: BackoffOptions;
  /** Where SPIFFE_ENDPOINT_SOCKET is read from; default process.env. */
  env?: NodeJS.ProcessEnv;
}

export class SpiffeProvider implements IdentityProvider {
  readonly name = 'spiffe';
  readonly endpoint: GrpcEndpoint;
  private readonly logger: Logger;
  private readonly backoff: BackoffOptions;
  private sink?: ProviderSink;
  private client?: Client;
  private streams: ResilientStream<X509SvidResponse | X509BundlesResponse>[] = [];
  private stopped = false;
  /** Bundles from the FetchX509SVID stream (each SVID's own domain, and the federated ones). */
  private svidStreamBundles: RawBundles = new Map();
  /** Bundles from the FetchX509Bundles stream. */
  private bundleStreamBundles: RawBundles = new Map();

  /** Throws GrpcEndpointError when no endpoint is configured or the address is malformed. */
  constructor(options: SpiffeOptions, deps: GrpcProviderDeps = {}) {
    // An empty SPIFFE_ENDPOINT_SOCKET counts as unset; an empty configured endpoint is an error.
    const address = options.endpoint ?? ((deps.env ?? process.env).SPIFFE_ENDPOINT_SOCKET || undefined);
    if (address === undefined) {
      throw new GrpcEndpointError('the spiffe provider needs an endpoint: set identity.spiffe.endpoint or SPIFFE_ENDPOINT_SOCKET (unix:///path or tcp://IP:port)');
    }
    this.endpoint = parseGrpcEndpoint(address);
    this.logger = (deps.logger ?? silentLogger()).child({ provider: 'spiffe' });
    this.backoff = deps.backoff ?? DEFAULT_STREAM_BACKOFF;
  }

  start(sink: ProviderSink): Promise<void> {
    if (this.sink) return Promise.reject(new Error('the spiffe provider was already started'));
    this.sink = sink;
    const client = createIdentityClient(this.endpoint, this.backoff);
    this.client = client;
    const api = workloadApiDefinition();
    const common = { report: (err: ProviderError) => this.report(err), backoff: this.backoff, logger: this.logger };
    const svidStream = new ResilientStream<X509SvidResponse>({
      ...common,
      label: 'FetchX509SVID',
      open: () => client.makeServerStreamRequest(api.fetchX509Svid.path, api.fetchX509Svid.requestSerialize, api.fetchX509Svid.responseDeserialize, {}, workloadApiMetadata()),
      onMessage: (message) => this.onSvidMessage(message),
      onPermissionDenied: () => this.withdrawSvids(),
    });
    const bundleStream = new ResilientStream<X509BundlesResponse>({
      ...common,
      label: 'FetchX509Bundles',
      open: () => client.makeServerStreamRequest(api.fetchX509Bundles.path, api.fetchX509Bundles.requestSerialize, api.fetchX509Bundles.responseDeserialize, {}, workloadApiMetadata()),
      onMessage: (message) => this.onBundlesMessage(message),
      onPermissionDenied: () => this.withdrawBundleStream(),
    });
    this.streams = [svidStream, bundleStream] as ResilientStream<X509SvidResponse | X509BundlesResponse>[];
    this.logger.info({ endpoint: this.endpoint.address }, 'connecting to the SPIFFE Workload API');
    for (const stream of this.streams) stream.start();
    return Promise.resolve();
  }

  /** The Workload API grants what the server has registered for this process; nothing to ask for. */
  setWanted(_ids: readonly SpiffeId[]): void {}

  stop(): Promise<void> {
    this.stopped = true;
    for (const stream of this.streams) stream.stop();
    this.client?.close();
    return Promise.resolve();
  }

  private onSvidMessage(message: X509SvidResponse): boolean {
    let state: SvidState;
    try {
      state = translateSvidResponse(message);
    } catch (err) {
      this.report(new ProviderError('malformed', `FetchX509SVID sent a malformed message, discarded: ${(err as Error).message}`));
      return false;
    }
    for (const { spiffeId, hint } of state.duplicateHints) {
      this.logger.warn({ spiffeId, hint }, 'FetchX509SVID sent a second SVID with the same hint; keeping the first');
    }
    this.svidStreamBundles = state.bundles;
    // Bundles first, so that the new SVIDs find the CAs that anchor them.
    this.deliverBundles();
    if (!this.stopped) this.sink?.svids(state.svids);
    return true;
  }

  private onBundlesMessage(message: X509BundlesResponse): boolean {
    try {
      if (Object.keys(message.bundles).length === 0) throw new Error('the required bundles field is empty');
      this.bundleStreamBundles = addDerBundles(new Map(), message.bundles);
    } catch (err) {
      this.report(new ProviderError('malformed', `FetchX509Bundles sent a malformed message, discarded: ${(err as Error).message}`));
      return false;
    }
    this.deliverBundles();
    return true;
  }

  /** PermissionDenied on FetchX509SVID: stop using every SVID (and bundle) it had granted. */
  private withdrawSvids(): void {
    this.svidStreamBundles = new Map();
    this.deliverBundles();
    if (!this.stopped) this.sink?.svids([]);
  }

  private withdrawBundleStream(): void {
    this.bundleStreamBundles = new Map();
    this.deliverBundles();
  }

  private deliverBundles(): void {
    if (!this.stopped) this.sink?.bundles(mergeBundles([this.svidStreamBundles, this.bundleStreamBundles]));
  }

  private report(err: ProviderError): void {
    if (!this.stopped) this.sink?.error(err);
  }
}

function workloadApiMetadata(): Metadata {
  const metadata = new Metadata();
  metadata.set(WORKLOAD_API_HEADER, 'true');
  return metadata;
}

interface SvidState {
  svids: RawSvid[];
  bundles: RawBundles;
  duplicateHints: { spiffeId: string; hint: string }[];
}

const REQUIRED_SVID_FIELDS = ['spiffe_id', 'x509_svid', 'x509_svid_key', 'bundle'] as const;

/**
 * One X509SVIDResponse as RawSvids and bundles. A message with a required field left empty, or
 * with bytes that are not DER, is discarded whole (Workload API §4.5): the previous state stays.
 * svids[0] stays first, as it is the default identity; of SVIDs sharing a hint, the first wins.
 */
function translateSvidResponse(message: X509SvidResponse): SvidState {
  if (message.svids.length === 0) throw new Error('the required svids field is empty');
  const state: SvidState = { svids: [], bundles: new Map(), duplicateHints: [] };
  const hints = new Set<string>();
  for (const [index, svid] of message.svids.entries()) {
    const missing = REQUIRED_SVID_FIELDS.filter((field) => svid[field].length === 0);
    if (missing.length > 0) throw new Error(`svids[${index}] lacks the required ${missing.join(', ')}`);
    let id: SpiffeId;
    try {
      id = SpiffeId.parse(svid.spiffe_id);
    } catch (err) {
      throw new Error(`svids[${index}].spiffe_id is not a SPIFFE ID: ${(err as Error).message}`);
    }
    let chain: Buffer[];
    try {
      chain = splitConcatenatedDer(svid.x509_svid);
    } catch (err) {
      throw new Error(`svids[${index}].x509_svid (${id.toString()}) is not concatenated DER: ${(err as Error).message}`);
    }
    if (!state.bundles.has(id.trustDomain)) state.bundles.set(id.trustDomain, splitBundle(id.trustDomain, svid.bundle));
    if (svid.hint !== '') {
      if (hints.has(svid.hint)) {
        state.duplicateHints.push({ spiffeId: svid.spiffe_id, hint: svid.hint });
        continue;
      }
      hints.add(svid.hint);
    }
    state.svids.push({ chain, key: svid.x509_svid_key, claimedId: svid.spiffe_id, ...(svid.hint !== '' && { hint: svid.hint }) });
  }
  // Federated bundles are for foreign domains; the bundle an SVID came with stays its own domain's.
  const federated = addDerBundles(new Map(), message.federated_bundles);
  for (const [trustDomain, certs] of federated) if (!state.bundles.has(trustDomain)) state.bundles.set(trustDomain, certs);
  return state;
}
