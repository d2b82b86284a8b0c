// A Kubernetes API server stand-in for tests, faithful to the list/watch protocol for pods, nodes
// and mutualauthpolicies (cluster-wide and per namespace):
// - list: `{kind: <Kind>List, apiVersion, metadata: {resourceVersion, continue?}, items}`, items
//   sorted by key; built-in kinds' items carry no kind/apiVersion (as the real server sends them),
//   custom resources' items do; `limit`/`continue` paging over a snapshot, whose continue token
//   expires (410) once history past its resourceVersion has been compacted;
// - watch (`?watch=true`): a chunked stream of newline-delimited `{type, object}` events starting
//   after the requested resourceVersion; no/"0" resourceVersion starts with synthetic ADDED events
//   for the current state; BOOKMARK events only with allowWatchBookmarks=true; a resourceVersion
//   older than the bounded history gets an ERROR event with a 410/Expired Status and the stream
//   ends; timeoutSeconds ends the stream cleanly;
// - resourceVersions are one global counter, as in etcd, and history is one bounded log, so
//   changes to one kind can make another kind's watch position too old;
// - field selectors (`fieldSelector=spec.nodeName=n1`, `=`, `==`, `!=`, terms joined by commas) on
//   the fields the real server supports for each kind (a subset); label selectors are refused;
// - authentication: every request must carry `Authorization: Bearer <token>` (the server's
//   token); without it the answer is 401 Unauthorized, as from an API server that does not allow
//   anonymous requests;
// - every authenticated request is recorded with the attributes RBAC authorizes it by (verb,
//   apiGroup, resource, subresource, name, namespace; or the non-resource path), derived from the
//   method and path as the API server's RequestInfo does, whether or not the test server serves it;
// - test controls: create/update/remove objects, send bookmarks, compact history, expire open
//   watches (410), end or drop open watches, end the next watches at once, fail the next
//   requests with a status.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';

export type KubeResource = 'pods' | 'nodes' | 'mutualauthpolicies';
/** The verbs RBAC rules name: GET of a collection is list, of one object get, either with
 *  watch=true watch; POST create, PUT update, PATCH patch, DELETE of one object delete, of a
 *  collection deletecollection. */
export type Verb = 'get' | 'list' | 'watch' | 'create' | 'update' | 'patch' | 'delete' | 'deletecollection';

interface ResourceType {
  kind: string;
  apiVersion: string;
  prefix: string;
  namespaced: boolean;
  /** Built-in kinds' list items come without kind/apiVersion. */
  builtIn: boolean;
}

const TYPES: Record<KubeResource, ResourceType> = {
  pods: { kind: 'Pod', apiVersion: 'v1', prefix: '/api/v1', namespaced: true, builtIn: true },
  nodes: { kind: 'Node', apiVersion: 'v1', prefix: '/api/v1', namespaced: false, builtIn: true },
  mutualauthpolicies: {
    kind: 'MutualAuthPolicy',
    apiVersion: 'meshauth.io/v1alpha1',
    prefix: '/apis/meshauth.io/v1alpha1',
    namespaced: true,
    builtIn: false,
  },
};

/** A Kubernetes object as the tests write it: anything with metadata.name (and namespace if namespaced). */
export interface KubeObject {
  metadata: { name: string; namespace?: string; resourceVersion?: string; [key: string]: unknown };
  [key: string]: unknown;
}

/** What RBAC authorizes a request to a resource by. */
export interface ResourceAttributes {
  verb: Verb;
  /** '' for the core group (/api/v1). */
  apiGroup: string;
  resource: string;
  subresource?: string;
  name?: string;
  namespace?: string;
}

export interface RequestRecord extends ResourceAttributes {
  query: Record<string, string>;
  /** performance.now() when the request arrived. */
  at: number;
}

/** A request outside /api and /apis resources (discovery, /version, /healthz...): RBAC matches
 *  its path against nonResourceURLs, its verb is the lowercase HTTP method. */
export interface NonResourceRequestRecord {
  verb: string;
  path: string;
}

interface HistoryEntry {
  resource: KubeResource;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: KubeObject;
  rv: number;
}

interface OpenWatch {
  resource: KubeResource;
  namespace?: string | undefined;
  fields: readonly FieldRequirement[];
  bookmarks: boolean;
  response: ServerResponse;
  timer?: NodeJS.Timeout;
}

interface Snapshot {
  rv: number;
  items: KubeObject[];
}

export interface KubeApiServerOptions {
  /** Events kept for watches that resume from a resourceVersion (default 100). */
  historyLimit?: number;
}

export class KubeApiServer {
  /** The bearer token every request must carry (clients put it in their kubeconfig user). */
  readonly token = randomUUID();
  /** Every authenticated request to a resource, served or not. */
  readonly requests: RequestRecord[] = [];
  readonly nonResourceRequests: NonResourceRequestRecord[] = [];
  /** Requests refused with 401 for a missing or wrong token. */
  unauthenticated = 0;
  /** Response body bytes sent (lists, watch events, errors): what clients cost the server. */
  bytesSent = 0;
  private readonly objects = new Map<KubeResource, Map<string, KubeObject>>(
    (Object.keys(TYPES) as KubeResource[]).map((resource) => [resource, new Map()]),
  );
  private history: HistoryEntry[] = [];
  private rv = 1;
  /** Watches from a resourceVersion below this have lost events: 410. */
  private horizon = 1;
  private readonly watches = new Set<OpenWatch>();
  private readonly snapshots = new Map<string, Snapshot>();
  private readonly failures: { verb: Verb; resource: KubeResource; status: number; remaining: number }[] = [];
  private readonly emptyWatches = new Map<KubeResource, number>();
  private readonly historyLimit: number;

  private constructor(
    private readonly server: Server,
    options: KubeApiServerOptions,
  ) {
    this.historyLimit = options.historyLimit ?? 100;
  }

  static async start(options: KubeApiServerOptions = {}): Promise<KubeApiServer> {
    const server = createServer((req, res) => instance.handle(req, res));
    const instance = new KubeApiServer(server, options);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', resolve);
    });
    return instance;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  get resourceVersion(): string {
    return String(this.rv);
  }

  // ---- test controls ----

  create(resource: KubeResource, object: KubeObject): KubeObject {
    const key = this.key(resource, object);
    const store = this.store(resource);
    if (store.has(key)) throw new Error(`${resource} ${key} already exists`);
    const stored = this.stamp(resource, {
      ...structuredClone(object),
      metadata: { ...structuredClone(object.metadata), uid: randomUUID(), creationTimestamp: new Date().toISOString() },
    });
    store.set(key, stored);
    this.record(resource, 'ADDED', stored);
    return structuredClone(stored);
  }

  /** Replaces an object (keeping uid and creationTimestamp), like a PUT. */
  update(resource: KubeResource, object: KubeObject): KubeObject {
    const key = this.key(resource, object);
    const store = this.store(resource);
    const old = store.get(key);
    if (!old) throw new Error(`${resource} ${key} does not exist`);
    const stored = this.stamp(resource, {
      ...structuredClone(object),
      metadata: { ...structuredClone(object.metadata), uid: old.metadata.uid, creationTimestamp: old.metadata.creationTimestamp },
    });
    store.set(key, stored);
    this.record(resource, 'MODIFIED', stored);
    return structuredClone(stored);
  }

  remove(resource: KubeResource, name: string, namespace?: string): void {
    const key = namespace ? `${namespace}/${name}` : name;
    const store = this.store(resource);
    const old = store.get(key);
    if (!old) throw new Error(`${resource} ${key} does not exist`);
    store.delete(key);
    // The DELETED event carries the last state at the deletion's resourceVersion.
    this.record(resource, 'DELETED', this.stamp(resource, structuredClone(old)));
  }

  get(resource: KubeResource, name: string, namespace?: string): KubeObject | undefined {
    const object = this.store(resource).get(namespace ? `${namespace}/${name}` : name);
    return object && structuredClone(object);
  }

  /** A BOOKMARK at the current resourceVersion on every open watch that asked for bookmarks. */
  bookmark(): void {
    for (const watch of this.watches) {
      if (!watch.bookmarks) continue;
      const type = TYPES[watch.resource];
      this.send(watch, { type: 'BOOKMARK', object: { kind: type.kind, apiVersion: type.apiVersion, metadata: { resourceVersion: this.resourceVersion } } });
    }
  }

  /** Forgets all history, like an etcd compaction: resuming from any older resourceVersion is 410. */
  compact(): void {
    this.history = [];
    this.horizon = this.rv;
  }

  /** What the watch cache does when a watcher falls behind: ERROR 410 Expired, then the stream ends. */
  expireWatches(resource?: KubeResource): void {
    for (const watch of [...this.watches]) {
      if (resource && watch.resource !== resource) continue;
      this.send(watch, { type: 'ERROR', object: expiredStatus(`too old resource version (current ${this.rv})`) });
      this.finish(watch);
    }
  }

  /** Ends every open watch cleanly (as the server's watch timeout does). */
  endWatches(resource?: KubeResource): void {
    for (const watch of [...this.watches]) if (!resource || watch.resource === resource) this.finish(watch);
  }

  /** Cuts every open watch's connection without ending the response. */
  dropWatches(resource?: KubeResource): void {
    for (const watch of [...this.watches]) {
      if (resource && watch.resource !== resource) continue;
      this.watches.delete(watch);
      clearTimeout(watch.timer);
      watch.response.socket?.destroy();
    }
  }

  /** The next `count` requests of this verb and resource fail with `status`. */
  failNext(verb: Verb, resource: KubeResource, status: number, count = 1): void {
    this.failures.push({ verb, resource, status, remaining: count });
  }

  /** The next `count` watches of this resource are accepted and ended at once, without an event. */
  endNextWatchesAtOnce(resource: KubeResource, count: number): void {
    this.emptyWatches.set(resource, count);
  }

  clearFailures(): void {
    this.failures.length = 0;
  }

  openWatches(resource?: KubeResource): number {
    return [...this.watches].filter((watch) => !resource || watch.resource === resource).length;
  }

  requestCount(verb: Verb, resource?: KubeResource): number {
    return this.requests.filter((request) => request.verb === verb && (!resource || request.resource === resource)).length;
  }

  async close(): Promise<void> {
    for (const watch of [...this.watches]) this.finish(watch);
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // ---- protocol ----

  private handle(req: IncomingMessage, res: ServerResponse): void {
    if (req.headers.authorization !== `Bearer ${this.token}`) {
      this.unauthenticated += 1;
      return this.status(res, 401, 'Unauthorized', 'Unauthorized');
    }
    const url = new URL(req.url ?? '/', 'http://localhost');
    const query = Object.fromEntries(url.searchParams);
    const watching = query.watch === 'true' || query.watch === '1';
    const attributes = resourceAttributes(req.method ?? 'GET', url.pathname, watching);
    if (!attributes) {
      this.nonResourceRequests.push({ verb: (req.method ?? 'GET').toLowerCase(), path: url.pathname });
      return this.status(res, 404, 'NotFound', `the server could not find the requested resource (${url.pathname})`);
    }
    this.requests.push({ ...attributes, query, at: performance.now() });
    const route = this.route(url.pathname);
    if (!route) return this.status(res, 404, 'NotFound', `the server could not find the requested resource (${url.pathname})`);
    if (req.method !== 'GET') return this.status(res, 405, 'MethodNotAllowed', `${req.method} is not supported by the test server`);
    const verb = attributes.verb;
    const failure = this.failures.find((entry) => entry.verb === verb && entry.resource === route.resource && entry.remaining > 0);
    if (failure) {
      failure.remaining -= 1;
      return this.status(res, failure.status, reasonFor(failure.status), `injected failure ${failure.status}`);
    }
    if (query.labelSelector) return this.status(res, 400, 'BadRequest', 'label selectors are not implemented by the test server');
    let fields: FieldRequirement[] = [];
    try {
      fields = parseFieldSelector(route.resource, query.fieldSelector ?? '');
    } catch (err) {
      return this.status(res, 400, 'BadRequest', (err as Error).message);
    }
    const empty = this.emptyWatches.get(route.resource) ?? 0;
    if (watching && empty > 0) {
      this.emptyWatches.set(route.resource, empty - 1);
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end();
      return;
    }
    if (watching) this.watch(res, route.resource, route.namespace, fields, query);
    else this.list(res, route.resource, route.namespace, fields, query);
  }

  private route(path: string): { resource: KubeResource; namespace?: string } | undefined {
    for (const [resource, type] of Object.entries(TYPES) as [KubeResource, ResourceType][]) {
      if (!path.startsWith(`${type.prefix}/`)) continue;
      const rest = path.slice(type.prefix.length + 1).split('/');
      if (rest.length === 1 && rest[0] === resource) return { resource };
      if (type.namespaced && rest.length === 3 && rest[0] === 'namespaces' && rest[2] === resource && rest[1]) {
        return { resource, namespace: rest[1] };
      }
    }
    return undefined;
  }

  private list(res: ServerResponse, resource: KubeResource, namespace: string | undefined, fields: readonly FieldRequirement[], query: Record<string, string>): void {
    const type = TYPES[resource];
    let snapshot: Snapshot;
    let offset = 0;
    if (query.continue) {
      const token = this.snapshots.get(query.continue);
      if (!token) return this.status(res, 400, 'BadRequest', 'invalid continue token');
      if (token.rv < this.horizon) {
        return this.status(res, 410, 'Expired', 'The provided continue parameter is too old to display a consistent list result.');
      }
      snapshot = token;
      offset = Number(query.continue.split(':')[1]);
    } else {
      const items = [...this.store(resource).entries()]
        .filter(([, object]) => (!namespace || object.metadata.namespace === namespace) && selects(fields, object))
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([, object]) => structuredClone(object));
      snapshot = { rv: this.rv, items };
    }
    const limit = query.limit ? Number(query.limit) : 0;
    const end = limit > 0 ? Math.min(snapshot.items.length, offset + limit) : snapshot.items.length;
    const metadata: Record<string, unknown> = { resourceVersion: String(snapshot.rv) };
    if (end < snapshot.items.length) {
      const token = `${randomUUID()}:${end}`;
      this.snapshots.set(token, snapshot);
      metadata.continue = token;
      metadata.remainingItemCount = snapshot.items.length - end;
    }
    const items = snapshot.items.slice(offset, end).map((object) => {
      if (!type.builtIn) return object;
      const { kind: _kind, apiVersion: _apiVersion, ...rest } = object;
      return rest;
    });
    this.json(res, 200, { kind: `${type.kind}List`, apiVersion: type.apiVersion, metadata, items });
  }

  private watch(
    res: ServerResponse,
    resource: KubeResource,
    namespace: string | undefined,
    fields: readonly FieldRequirement[],
    query: Record<string, string>,
  ): void {
    const requested = query.resourceVersion ?? '';
    const from = requested === '' || requested === '0' ? undefined : Number(requested);
    if (from !== undefined && (!Number.isInteger(from) || from < 0)) {
      return this.status(res, 400, 'BadRequest', `invalid resourceVersion "${requested}"`);
    }
    res.writeHead(200, { 'Content-Type': 'application/json', 'Cache-Control': 'no-cache, private' });
    res.flushHeaders();
    const watch: OpenWatch = { resource, namespace, fields, bookmarks: query.allowWatchBookmarks === 'true', response: res };
    if (from !== undefined && from < this.horizon) {
      this.send(watch, { type: 'ERROR', object: expiredStatus(`too old resource version: ${from} (${this.horizon})`) });
      res.end();
      return;
    }
    if (from === undefined) {
      for (const object of this.store(resource).values()) {
        if ((!namespace || object.metadata.namespace === namespace) && selects(fields, object)) this.send(watch, { type: 'ADDED', object: structuredClone(object) });
      }
    } else {
      for (const entry of this.history) {
        if (entry.rv > from && this.matches(watch, entry)) this.send(watch, { type: entry.type, object: structuredClone(entry.object) });
      }
    }
    this.watches.add(watch);
    res.on('close', () => {
      this.watches.delete(watch);
      clearTimeout(watch.timer);
    });
    const timeoutSeconds = Number(query.timeoutSeconds ?? 0);
    if (timeoutSeconds > 0) watch.timer = setTimeout(() => this.finish(watch), timeoutSeconds * 1000);
  }

  private record(resource: KubeResource, type: HistoryEntry['type'], object: KubeObject): void {
    const entry: HistoryEntry = { resource, type, object: structuredClone(object), rv: this.rv };
    this.history.push(entry);
    while (this.history.length > this.historyLimit) {
      const evicted = this.history.shift();
      if (evicted) this.horizon = evicted.rv;
    }
    for (const watch of this.watches) if (this.matches(watch, entry)) this.send(watch, { type, object: structuredClone(object) });
  }

  private matches(watch: OpenWatch, entry: HistoryEntry): boolean {
    // As the API server's watch cache: an object that stops matching the field selector is sent as
    // DELETED, one that starts matching as ADDED; here every event is judged by its new state
    // alone, which is the same for objects whose selected fields never change (a pod's node).
    return entry.resource === watch.resource && (!watch.namespace || entry.object.metadata.namespace === watch.namespace) && selects(watch.fields, entry.object);
  }

  /** Sets kind, apiVersion and a fresh resourceVersion. */
  private stamp(resource: KubeResource, object: KubeObject): KubeObject {
    this.rv += 1;
    const type = TYPES[resource];
    return { ...object, kind: type.kind, apiVersion: type.apiVersion, metadata: { ...object.metadata, resourceVersion: String(this.rv) } };
  }

  private key(resource: KubeResource, object: KubeObject): string {
    const { name, namespace } = object.metadata;
    if (!name) throw new Error('object without metadata.name');
    if (TYPES[resource].namespaced !== Boolean(namespace)) {
      throw new Error(`${resource} ${TYPES[resource].namespaced ? 'need' : 'must not have'} metadata.namespace`);
    }
    return namespace ? `${namespace}/${name}` : name;
  }

  private store(resource: KubeResource): Map<string, KubeObject> {
    const store = this.objects.get(resource);
    if (!store) throw new Error(`unknown resource ${resource}`);
    return store;
  }

  private send(watch: OpenWatch, event: { type: string; object: unknown }): void {
    if (watch.response.writableEnded || watch.response.destroyed) return;
    const line = `${JSON.stringify(event)}\n`;
    this.bytesSent += Buffer.byteLength(line);
    watch.response.write(line);
  }

  private finish(watch: OpenWatch): void {
    this.watches.delete(watch);
    clearTimeout(watch.timer);
    if (!watch.response.writableEnded) watch.response.end();
  }

  private status(res: ServerResponse, code: number, reason: string, message: string): void {
    this.json(res, code, { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason, code });
  }

  private json(res: ServerResponse, code: number, body: unknown): void {
    const text = JSON.stringify(body);
    this.bytesSent += Buffer.byteLength(text);
    res.writeHead(code, { 'Content-Type': 'application/json' });
    res.end(text);
  }
}

/** Namespace subresources: /api/v1/namespaces/<name>/status is the namespace's, not a resource in it. */
const NAMESPACE_SUBRESOURCES = new Set(['status', 'finalize']);

/**
 * The RBAC attributes of a request, as the API server's RequestInfoFactory derives them:
 * /api/v1/... (core group) or /apis/<group>/<version>/..., then [namespaces/<ns>/]<resource>
 * [/<name>[/<subresource>]]. Undefined for a non-resource path (discovery and the like).
 */
function resourceAttributes(method: string, path: string, watching: boolean): ResourceAttributes | undefined {
  const parts = path.split('/').filter((part) => part !== '');
  let apiGroup: string;
  let rest: string[];
  if (parts[0] === 'api' && parts.length >= 3) [apiGroup, rest] = ['', parts.slice(2)];
  else if (parts[0] === 'apis' && parts.length >= 4) [apiGroup, rest] = [parts[1]!, parts.slice(3)];
  else return undefined;
  let namespace: string | undefined;
  if (rest[0] === 'namespaces' && rest.length > 1) {
    namespace = rest[1];
    if (rest.length > 2 && !NAMESPACE_SUBRESOURCES.has(rest[2]!)) rest = rest.slice(2);
  }
  const [resource = '', name, subresource] = rest;
  const verbs: Record<string, Verb> = { POST: 'create', PUT: 'update', PATCH: 'patch' };
  let verb: Verb;
  if (method === 'GET' || method === 'HEAD') verb = watching ? 'watch' : name === undefined ? 'list' : 'get';
  else if (method === 'DELETE') verb = name === undefined ? 'deletecollection' : 'delete';
  // Any other method keeps its lowercase name as the verb, as in the API server: no rule here grants it.
  else verb = verbs[method] ?? (method.toLowerCase() as Verb);
  return {
    verb,
    apiGroup,
    resource,
    ...(subresource !== undefined && { subresource }),
    ...(name !== undefined && { name }),
    ...(namespace !== undefined && { namespace }),
  };
}

function expiredStatus(message: string): Record<string, unknown> {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason: 'Expired', code: 410 };
}

function reasonFor(status: number): string {
  const reasons: Record<number, string> = {
    401: 'Unauthorized',
    403: 'Forbidden',
    404: 'NotFound',
    410: 'Expired',
    429: 'TooManyRequests',
    500: 'InternalError',
    503: 'ServiceUnavailable',
  };
  return reasons[status] ?? 'Unknown';
}

/** One term of a field selector: `path=value`, `path==value` or `path!=value`. */
interface FieldRequirement {
  path: string[];
  value: string;
  equal: boolean;
}

/** The fields the API server lets each resource be selected by (a subset of the real server's, enough for the agent). */
const SELECTABLE_FIELDS: Record<KubeResource, readonly string[]> = {
  pods: ['metadata.name', 'metadata.namespace', 'spec.nodeName', 'status.phase'],
  nodes: ['metadata.name'],
  mutualauthpolicies: ['metadata.name', 'metadata.namespace'],
};

function parseFieldSelector(resource: KubeResource, selector: string): FieldRequirement[] {
  if (selector === '') return [];
  return selector.split(',').map((term) => {
    const match = /^([^=!]+)(==|=|!=)(.*)$/.exec(term);
    if (!match) throw new Error(`invalid field selector term "${term}"`);
    const [, field = '', operator, value = ''] = match;
    if (!SELECTABLE_FIELDS[resource].includes(field)) throw new Error(`field label not supported: ${field}`);
    return { path: field.split('.'), value, equal: operator !== '!=' };
  });
}

function selects(fields: readonly FieldRequirement[], object: KubeObject): boolean {
  return fields.every(({ path, value, equal }) => {
    let current: unknown = object;
    for (const part of path) current = typeof current === 'object' && current !== null ? (current as Record<string, unknown>)[part] : undefined;
    const text = typeof current === 'string' || typeof current === 'number' || typeof current === 'boolean' ? String(current) : '';
    return (text === value) === equal;
  });
}
