// Cluster state from the Kubernetes API: one client-node ListWatch informer each for pods, nodes
// and MutualAuthPolicies, feeding a ClusterStateTracker that orders the resulting events.
//
// Informer lifecycle (per resource):
//   list (paged) → ADD callbacks for every object → watch from the list's resourceVersion with
//   bookmarks → ADDED/MODIFIED/DELETED/BOOKMARK advance the resourceVersion.
//   - clean end of a watch (server timeout): re-watch from the last resourceVersion;
//   - 410 Gone (ERROR event or HTTP status): ListWatch relists and diffs the new list against its
//     cache, so only objects that really disappeared are deleted; the tracker drops no-op updates;
//   - any other failure (refused, reset, 403, 500, ...): retry after a backoff, from the last
//     resourceVersion if there is one, otherwise with a new list.
// 'synced' is emitted once every informer has completed its first list; until then nothing is.
import {
  ADD,
  CoreV1Api,
  CustomObjectsApi,
  DELETE,
  ERROR,
  KubeConfig,
  ListWatch,
  UPDATE,
  type KubernetesListObject,
  type KubernetesObject,
  type V1Node,
  type V1Pod,
} from '@kubernetes/client-node';
import { Backoff, sleep } from '../../util/backoff.js';
import { silentLogger, type Logger } from '../../util/logger.js';
import type { ClusterEvent, ClusterSource, EndpointInfo } from '../types.js';
import { ClusterStateTracker } from './cluster-state.js';
import { nodeInfo, objectKey, podEndpoints, policyRule, wiredPodEndpoints } from './convert.js';
import { ResilientWatch } from './resilient-watch.js';
import { stripperFor } from './strip.js';
import { POLICY_GROUP, POLICY_PLURAL, POLICY_VERSION, RESOURCE_PATHS, type WatchedResource } from './resources.js';

export interface KubernetesSourceOptions {
  kubeConfig: KubeConfig;
  /** Trust domain of workload SPIFFE IDs. */
  trustDomain: string;
  logger?: Logger;
  /** Retry delays after a failed list or watch (default 500 ms doubling to 30 s). */
  backoff?: { initialMs: number; maxMs: number };
  /** Objects per list page (default 500); large clusters are listed in pages, like kubectl does. */
  pageSize?: number;
}

/** A kubeconfig file, or (without one) the pod's service account: the API server from
 *  KUBERNETES_SERVICE_HOST/PORT, its CA and the projected token, re-read as it rotates. */
export function loadKubeConfig(path?: string): KubeConfig {
  const config = new KubeConfig();
  if (path) {
    config.loadFromFile(path);
  } else {
    if (!process.env.KUBERNETES_SERVICE_HOST || !process.env.KUBERNETES_SERVICE_PORT) {
      throw new Error('not running in a Kubernetes pod (KUBERNETES_SERVICE_HOST/PORT unset): set kubernetes.kubeconfig');
    }
    config.loadFromCluster();
  }
  if (!config.getCurrentCluster()) throw new Error(`kubeconfig ${path ?? '(in-cluster)'} names no current cluster`);
  return config;
}

interface Handlers<T> {
  set: (object: T) => void;
  remove: (object: T) => void;
}

export class KubernetesSource implements ClusterSource {
  private readonly tracker = new ClusterStateTracker();
  private readonly logger: Logger;
  private readonly abort = new AbortController();
  private readonly informers: { stop(): Promise<void> }[] = [];
  private readonly listed = new Set<WatchedResource>();
  /** Nodes already reported as unusable, so a node's status updates do not repeat the warning. */
  private readonly unusableNodes = new Set<string>();
  private onEvent: ((event: ClusterEvent) => void) | undefined;
  private pods?: ListWatch<V1Pod>;
  private stopped = false;

  constructor(private readonly options: KubernetesSourceOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ component: 'kubernetes' });
  }

  start(onEvent: (event: ClusterEvent) => void): Promise<void> {
    if (this.onEvent) throw new Error('KubernetesSource already started');
    this.onEvent = onEvent;
    const { kubeConfig } = this.options;
    const core = kubeConfig.makeApiClient(CoreV1Api);
    const custom = kubeConfig.makeApiClient(CustomObjectsApi);
    const limit = this.options.pageSize ?? 500;

    this.pods = this.informer<V1Pod>('pods', (page) => core.listPodForAllNamespaces({ limit, _continue: page }), {
      set: (pod) => this.setPod(pod),
      remove: (pod) => this.deliver(this.tracker.removePod(objectKey(pod.metadata))),
    });
    this.informer<V1Node>('nodes', (page) => core.listNode({ limit, _continue: page }), {
      set: (node) => this.setNode(node),
      remove: (node) => this.removeNode(node.metadata?.name ?? ''),
    });
    this.informer<KubernetesObject>(
      'policies',
      (page) =>
        custom.listClusterCustomObject({ group: POLICY_GROUP, version: POLICY_VERSION, plural: POLICY_PLURAL, limit, _continue: page }) as Promise<
          KubernetesListObject<KubernetesObject>
        >,
      {
        set: (policy) => this.setPolicy(policy),
        remove: (policy) => this.deliver(this.tracker.removePolicy(objectKey(policy.metadata))),
      },
    );
    return Promise.resolve();
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.abort.abort();
    await Promise.all(this.informers.map((informer) => informer.stop()));
  }

  private informer<T extends KubernetesObject>(
    resource: WatchedResource,
    listPage: (continueToken: string | undefined) => Promise<KubernetesListObject<T>>,
    handlers: Handlers<T>,
  ): ListWatch<T> {
    const backoff = new Backoff({ initialMs: this.options.backoff?.initialMs ?? 500, maxMs: this.options.backoff?.maxMs ?? 30_000 });
    // The informer caches every object it lists or watches: only the fields the agent reads.
    const strip = stripperFor<T>(resource);
    const watch = new ResilientWatch(this.options.kubeConfig, backoff, this.abort.signal, {
      beforeWatch: () => this.listCompleted(resource),
      strip: (object) => strip(object as T),
    });
    const informer = new ListWatch<T>(RESOURCE_PATHS[resource], watch, () => listAllPages(listPage, strip), false);
    // ListWatch calls these from inside its stream handler, which swallows exceptions: never throw.
    const guard =
      (action: (object: T) => void) =>
      (object: T): void => {
        if (this.stopped) return;
        try {
          action(object);
        } catch (err) {
          this.logger.error({ resource, object: objectKey(object.metadata), err: describe(err) }, 'cannot process object');
        }
      };
    informer.on(ADD, guard(handlers.set));
    informer.on(UPDATE, guard(handlers.set));
    informer.on(DELETE, guard(handlers.remove));
    informer.on(ERROR, (err: unknown) => void this.retry(resource, informer, backoff, err));
    this.informers.push(informer);
    this.begin(resource, informer, backoff);
    return informer;
  }

  /**
   * The endpoints of a pod the CNI has just wired on `node`, from the pod informer's cache: the
   * pod object exists (scheduled, not yet Running) before its sandbox is created. Empty when the
   * informer has not seen the pod yet, or has a pod of that name with another UID.
   */
  wiredPod(pod: { namespace: string; name: string; uid?: string }, node: string, ips: readonly string[]): EndpointInfo[] {
    const object = this.pods?.get(pod.name, pod.namespace);
    if (!object || (pod.uid !== undefined && object.metadata?.uid !== pod.uid)) return [];
    try {
      return wiredPodEndpoints(object, this.options.trustDomain, node, ips);
    } catch (err) {
      this.logger.warn({ pod: `${pod.namespace}/${pod.name}`, err: describe(err) }, 'CNI-registered pod ignored');
      return [];
    }
  }

  private begin<T extends KubernetesObject>(resource: WatchedResource, informer: ListWatch<T>, backoff: Backoff): void {
    // Failures of list and watch arrive as ERROR callbacks; a rejection here is anything else.
    informer.start().catch((err: unknown) => void this.retry(resource, informer, backoff, err));
  }

  private async retry<T extends KubernetesObject>(resource: WatchedResource, informer: ListWatch<T>, backoff: Backoff, err: unknown): Promise<void> {
    if (this.stopped) return;
    const delayMs = backoff.next();
    this.logger.warn({ resource, err: describe(err), hint: hint(resource, err), retryInMs: delayMs }, 'list/watch failed; retrying');
    await sleep(delayMs, this.abort.signal);
    if (!this.stopped) this.begin(resource, informer, backoff);
  }

  private listCompleted(resource: WatchedResource): void {
    if (this.stopped || this.tracker.isSynced) return;
    this.listed.add(resource);
    if (this.listed.size === Object.keys(RESOURCE_PATHS).length) {
      this.logger.info('initial list of pods, nodes and policies complete');
      this.deliver(this.tracker.markSynced());
    }
  }

  private setPod(pod: V1Pod): void {
    const key = objectKey(pod.metadata);
    let endpoints: EndpointInfo[];
    try {
      endpoints = podEndpoints(pod, this.options.trustDomain);
    } catch (err) {
      // Fail closed: a pod we cannot read has no endpoints, hence no identity.
      this.logger.warn({ pod: key, err: describe(err) }, 'pod ignored');
      endpoints = [];
    }
    this.deliver(this.tracker.setPod(key, endpoints));
  }

  private setNode(node: V1Node): void {
    const name = node.metadata?.name ?? '';
    let info;
    try {
      info = nodeInfo(node);
    } catch (err) {
      if (!this.unusableNodes.has(name)) this.logger.warn({ node: name, err: describe(err) }, 'node skipped: peers could not reach its agent');
      this.unusableNodes.add(name);
      this.deliver(this.tracker.removeNode(name));
      return;
    }
    this.unusableNodes.delete(name);
    this.deliver(this.tracker.setNode(info));
  }

  private removeNode(name: string): void {
    this.unusableNodes.delete(name);
    this.deliver(this.tracker.removeNode(name));
  }

  private setPolicy(object: KubernetesObject): void {
    let rule;
    try {
      rule = policyRule(object);
    } catch (err) {
      // The CRD's schema should have refused it; keep the last valid version of this policy (if
      // any) rather than silently dropping a requirement.
      this.logger.error({ policy: objectKey(object.metadata), err: describe(err) }, 'MutualAuthPolicy ignored');
      return;
    }
    this.deliver(this.tracker.setPolicy(rule));
  }

  private deliver(events: ClusterEvent[]): void {
    for (const event of events) {
      try {
        this.onEvent?.(event);
      } catch (err) {
        this.logger.error({ event: event.type, err: describe(err) }, 'cluster event handler failed');
      }
    }
  }
}

/** Follows continue tokens; every page of one list shares the first page's resourceVersion. */
async function listAllPages<T extends KubernetesObject>(
  listPage: (continueToken: string | undefined) => Promise<KubernetesListObject<T>>,
  strip: (object: T) => T,
): Promise<KubernetesListObject<T>> {
  const first = await listPage(undefined);
  const items = first.items.map(strip);
  let next = continueToken(first);
  while (next) {
    const page = await listPage(next);
    for (const item of page.items) items.push(strip(item));
    next = continueToken(page);
  }
  return { ...first, items };
}

/** Typed clients name it `_continue`; custom-object lists are plain JSON with `continue`. */
function continueToken(list: KubernetesListObject<KubernetesObject>): string | undefined {
  const metadata: { _continue?: string; continue?: string } | undefined = list.metadata;
  return metadata?._continue || metadata?.continue || undefined;
}

/** HTTP status of a failed list (ApiException.code) or watch (statusCode), if any. */
function statusOf(err: unknown): number | undefined {
  const { statusCode, code } = (err ?? {}) as { statusCode?: unknown; code?: unknown };
  const status = statusCode ?? code;
  return typeof status === 'number' ? status : undefined;
}

/** One line: the status and the API server's message (ApiException's own message spans lines). */
function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const body = (err as { body?: unknown }).body;
  const serverMessage = typeof body === 'object' && body !== null ? (body as { message?: unknown }).message : undefined;
  const message = typeof serverMessage === 'string' ? serverMessage : (err.message.split('\n')[0] ?? '');
  const status = statusOf(err);
  const errno = (err as { code?: unknown }).code;
  if (status !== undefined) return `${status}: ${message}`;
  return typeof errno === 'string' ? `${errno}: ${message}` : message;
}

function hint(resource: WatchedResource, err: unknown): string | undefined {
  const status = statusOf(err);
  if (status === 401 || status === 403) return 'the agent needs get/list/watch on pods, nodes and mutualauthpolicies (deploy/rbac.yaml)';
  if (status === 404 && resource === 'policies') return 'is the MutualAuthPolicy CRD installed? (deploy/crd-mutualauthpolicy.yaml)';
  return undefined;
}
