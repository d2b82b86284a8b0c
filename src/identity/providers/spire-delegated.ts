// The `spire-delegated` identity provider: SPIRE's Delegated Identity API
// (spire.api.agent.delegatedidentity.v1.DelegatedIdentity) on the SPIRE agent's admin socket.
// It lets this node agent hold the SVIDs of the workloads on its own node, and only those:
//   - one SubscribeToX509SVIDs by `nodeSelectors` (from the config) for the agent's own identity;
//   - one SubscribeToX509SVIDs per wanted workload ID of the form spiffe://<td>/ns/<ns>/sa/<sa>,
//     by the selectors the SPIRE k8s workload attestor produces for it (k8s:ns:<ns>, k8s:sa:<sa>);
//     setWanted() opens and cancels these as workloads come to and leave the node, and of what
//     such a subscription returns only the SVID of exactly that ID is kept;
//   - one SubscribeToX509Bundles for the bundles of the agent's trust domain and its federations.
// Every message is the full state of its subscription; the sink gets the merge of all of them.
//
// What a SPIRE operator must configure:
//   - the agent's admin API: `admin_socket_path = "/run/spire/admin/admin.sock"` in the agent
//     block of agent.conf (a different directory from the Workload API socket), mounted into the
//     meshauth DaemonSet; identity.spireDelegated.endpoint is then unix:///run/spire/admin/admin.sock;
//   - `authorized_delegates = ["spiffe://<td>/meshauth/node/..."]` in the agent block: the SPIFFE
//     IDs allowed to use the API. The agent attests the caller through the admin socket like any
//     workload, so meshauth needs a registration entry whose selectors match its pods, and that
//     entry's ID must be listed; otherwise every call answers PermissionDenied;
//   - registration entries for the workloads, with selectors k8s:ns:<ns> and k8s:sa:<sa> and the
//     ID spiffe://<td>/ns/<ns>/sa/<sa> (other selectors on the entry make it unmatched here).
import type { Client } from '@grpc/grpc-js';
import { SpiffeId } from '../spiffe-id.js';
import { ProviderError, type IdentityProvider, type ProviderSink, type RawBundles, type RawSvid } from '../types.js';
import type { BackoffOptions } from '../../util/backoff.js';
import { silentLogger, type Logger } from '../../util/logger.js';
import { addDerBundles } from './bundle-map.js';
import { parseGrpcEndpoint, type GrpcEndpoint } from './grpc-endpoint.js';
import {
  delegatedIdentityDefinition,
  type Selector,
  type SubscribeToX509BundlesResponse,
  type SubscribeToX509SvidsResponse,
} from './grpc-protos.js';
import { DEFAULT_STREAM_BACKOFF, ResilientStream, createIdentityClient } from './grpc-stream.js';
import type { GrpcProviderDeps } from './spiffe.js';
import type { SpireDelegatedOptions } from './spire-delegated-options.js';

/** The key of the node subscription's SVIDs; not a SPIFFE ID, so no workload can collide with it. */
const NODE_SUBSCRIPTION = 'node';
const KUBERNETES_ID_PATH = /^\/ns\/([^/]+)\/sa\/([^/]+)$/;

/** The selectors SPIRE's k8s workload attestor gives a pod of this ID's namespace and service
 *  account, or undefined when the ID is not of the spiffe://<td>/ns/<ns>/sa/<sa> form. */
export function kubernetesSelectors(id: SpiffeId): Selector[] | undefined {
  const match = KUBERNETES_ID_PATH.exec(id.path);
  if (!match) return undefined;
  return [
    { type: 'k8s', value: `ns:${match[1]}` },
    { type: 'k8s', value: `sa:${match[2]}` },
  ];
}

export class SpireDelegatedProvider implements IdentityProvider {
  readonly name = 'spire-delegated';
  readonly endpoint: GrpcEndpoint;
  private readonly logger: Logger;
  private readonly backoff: BackoffOptions;
  private sink?: ProviderSink;
  private client?: Client;
  private stopped = false;
  private wanted: readonly SpiffeId[] = [];
  private nodeStream?: ResilientStream<SubscribeToX509SvidsResponse>;
  /** Workload subscriptions by the SPIFFE ID they are for. */
  private readonly workloads = new Map<string, ResilientStream<SubscribeToX509SvidsResponse>>();
  /** The current SVIDs of each subscription, by NODE_SUBSCRIPTION or the workload's ID. */
  private readonly subscriptionSvids = new Map<string, RawSvid[]>();
  private bundleStream?: ResilientStream<SubscribeToX509BundlesResponse>;
  /** Many subscriptions answer at once (at start, after a reconnect): one merged push for all. */
  private pendingPush?: NodeJS.Immediate;

  /** Throws GrpcEndpointError when the address is malformed. */
  constructor(
    private readonly options: SpireDelegatedOptions,
    deps: GrpcProviderDeps = {},
  ) {
    this.endpoint = parseGrpcEndpoint(options.endpoint);
    this.logger = (deps.logger ?? silentLogger()).child({ provider: 'spire-delegated' });
    this.backoff = deps.backoff ?? DEFAULT_STREAM_BACKOFF;
  }

  start(sink: ProviderSink): Promise<void> {
    if (this.sink) return Promise.reject(new Error('the spire-delegated provider was already started'));
    this.sink = sink;
    this.client = createIdentityClient(this.endpoint, this.backoff);
    this.logger.info({ endpoint: this.endpoint.address }, 'connecting to the SPIRE Delegated Identity API');
    this.nodeStream = this.subscribe(NODE_SUBSCRIPTION, `SubscribeToX509SVIDs(node: ${formatSelectors(this.options.nodeSelectors)})`, this.options.nodeSelectors);
    this.bundleStream = this.subscribeToBundles();
    this.reconcileWorkloads();
    return Promise.resolve();
  }

  setWanted(ids: readonly SpiffeId[]): void {
    this.wanted = [...ids];
    if (this.sink && !this.stopped) this.reconcileWorkloads();
  }

  stop(): Promise<void> {
    this.stopped = true;
    clearImmediate(this.pendingPush);
    this.nodeStream?.stop();
    for (const stream of this.workloads.values()) stream.stop();
    this.bundleStream?.stop();
    this.client?.close();
    return Promise.resolve();
  }

  /** Opens a subscription for every wanted workload that lacks one and cancels the unwanted ones. */
  private reconcileWorkloads(): void {
    const next = new Map<string, Selector[]>();
    for (const id of this.wanted) {
      const selectors = kubernetesSelectors(id);
      // Other IDs (the node's own) come from the node subscription.
      if (selectors) next.set(id.toString(), selectors);
    }
    let removed = false;
    for (const [id, stream] of this.workloads) {
      if (next.has(id)) continue;
      stream.stop();
      this.workloads.delete(id);
      this.subscriptionSvids.delete(id);
      removed = true;
      this.logger.debug({ spiffeId: id }, 'workload subscription cancelled');
    }
    for (const [id, selectors] of next) {
      if (!this.workloads.has(id)) this.workloads.set(id, this.subscribe(id, `SubscribeToX509SVIDs(${id})`, selectors));
    }
    if (removed) this.schedulePush();
  }

  /** Subscribes to the SVIDs of the entries matching selectors (after start(), so the client
   *  exists). A workload subscription (key = the workload's ID) keeps only that ID's SVID; the
   *  node subscription keeps all it gets. */
  private subscribe(key: string, label: string, selectors: Selector[]): ResilientStream<SubscribeToX509SvidsResponse> {
    const client = this.client!;
    const { subscribeToX509Svids: method } = delegatedIdentityDefinition();
    const stream = new ResilientStream<SubscribeToX509SvidsResponse>({
      label,
      backoff: this.backoff,
      logger: this.logger,
      report: (err) => this.report(err),
      open: () => client.makeServerStreamRequest(method.path, method.requestSerialize, method.responseDeserialize, { selectors, pid: 0 }),
      onMessage: (message) => {
        let translated: ReturnType<typeof translateSvids>;
        try {
          translated = translateSvids(message);
        } catch (err) {
          this.report(new ProviderError('malformed', `${label} sent a malformed message, discarded: ${(err as Error).message}`));
          return false;
        }
        for (const { spiffeId, hint } of translated.duplicateHints) {
          this.logger.warn({ stream: label, spiffeId, hint }, 'a second SVID with the same hint; keeping the first');
        }
        const svids = key === NODE_SUBSCRIPTION ? translated.svids : translated.svids.filter((svid) => svid.claimedId === key);
        if (svids.length < translated.svids.length) {
          this.logger.debug({ stream: label, ignored: translated.svids.length - svids.length }, 'ignoring SVIDs of other IDs');
        }
        this.subscriptionSvids.set(key, svids);
        this.schedulePush();
        return true;
      },
      onPermissionDenied: () => {
        this.subscriptionSvids.set(key, []);
        this.schedulePush();
      },
    });
    stream.start();
    return stream;
  }

  private subscribeToBundles(): ResilientStream<SubscribeToX509BundlesResponse> {
    const client = this.client!;
    const { subscribeToX509Bundles: method } = delegatedIdentityDefinition();
    const stream = new ResilientStream<SubscribeToX509BundlesResponse>({
      label: 'SubscribeToX509Bundles',
      backoff: this.backoff,
      logger: this.logger,
      report: (err) => this.report(err),
      open: () => client.makeServerStreamRequest(method.path, method.requestSerialize, method.responseDeserialize, {}),
      onMessage: (message) => {
        let bundles: RawBundles;
        try {
          // The agent always holds at least its own trust domain's bundle.
          if (Object.keys(message.ca_certificates).length === 0) throw new Error('ca_certificates is empty');
          bundles = addDerBundles(new Map(), message.ca_certificates);
        } catch (err) {
          this.report(new ProviderError('malformed', `SubscribeToX509Bundles sent a malformed message, discarded: ${(err as Error).message}`));
          return false;
        }
        if (!this.stopped) this.sink?.bundles(bundles);
        return true;
      },
      onPermissionDenied: () => {
        if (!this.stopped) this.sink?.bundles(new Map());
      },
    });
    stream.start();
    return stream;
  }

  private schedulePush(): void {
    if (this.stopped || this.pendingPush) return;
    this.pendingPush = setImmediate(() => {
      this.pendingPush = undefined;
      if (!this.stopped) this.sink?.svids(this.mergedSvids());
    });
  }

  /** The node's SVIDs first (its first is the default), then each workload's, one per ID. */
  private mergedSvids(): RawSvid[] {
    const merged: RawSvid[] = [];
    const seen = new Set<string>();
    const keys = [NODE_SUBSCRIPTION, ...[...this.workloads.keys()].sort()];
    for (const key of keys) {
      for (const svid of this.subscriptionSvids.get(key) ?? []) {
        if (seen.has(svid.claimedId!)) continue;
        seen.add(svid.claimedId!);
        merged.push(svid);
      }
    }
    return merged;
  }

  private report(err: ProviderError): void {
    if (!this.stopped) this.sink?.error(err);
  }
}

/**
 * One SubscribeToX509SVIDsResponse as RawSvids. An empty list is a valid state (no entry
 * matches, e.g. not registered yet); an entry without ID, chain or key makes the message
 * malformed, and it is discarded whole. Of SVIDs sharing a hint, the first wins.
 */
function translateSvids(message: SubscribeToX509SvidsResponse): { svids: RawSvid[]; duplicateHints: { spiffeId: string; hint: string }[] } {
  const svids: RawSvid[] = [];
  const duplicateHints: { spiffeId: string; hint: string }[] = [];
  const hints = new Set<string>();
  for (const [index, withKey] of message.x509_svids.entries()) {
    const svid = withKey.x509_svid;
    if (!svid) throw new Error(`x509_svids[${index}] has no x509_svid`);
    if (!svid.id || svid.id.trust_domain === '') throw new Error(`x509_svids[${index}] has no SPIFFE ID`);
    // The API's path SHOULD start with "/"; consumers must normalise it.
    const path = svid.id.path === '' || svid.id.path.startsWith('/') ? svid.id.path : `/${svid.id.path}`;
    let id: SpiffeId;
    try {
      id = SpiffeId.parse(`spiffe://${svid.id.trust_domain}${path}`);
    } catch (err) {
      throw new Error(`x509_svids[${index}] has an invalid SPIFFE ID: ${(err as Error).message}`);
    }
    if (svid.cert_chain.length === 0 || svid.cert_chain.some((der) => der.length === 0)) {
      throw new Error(`x509_svids[${index}] (${id.toString()}) has an empty certificate chain`);
    }
    if (withKey.x509_svid_key.length === 0) throw new Error(`x509_svids[${index}] (${id.toString()}) has no private key`);
    if (svid.hint !== '') {
      if (hints.has(svid.hint)) {
        duplicateHints.push({ spiffeId: id.toString(), hint: svid.hint });
        continue;
      }
      hints.add(svid.hint);
    }
    svids.push({
      chain: svid.cert_chain,
      key: withKey.x509_svid_key,
      claimedId: id.toString(),
      ...(svid.hint !== '' && { hint: svid.hint }),
    });
  }
  return { svids, duplicateHints };
}

function formatSelectors(selectors: readonly Selector[]): string {
  return selectors.map((selector) => `${selector.type}:${selector.value}`).join(', ');
}
