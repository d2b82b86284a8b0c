// Two (or more) real handshake agents on loopback for the handshake tests. Each agent binds its
// own loopback address (127.0.0.N) as source and listener, so the responder's source-address
// → node resolution works as between real nodes. Certificates come from cert-forge, relative to
// the real clock, so tests can also build deliberately broken SVIDs signed by the same CA.
import { EventEmitter } from 'node:events';
import { KeyObject, randomBytes } from 'node:crypto';
import { createServer as createNetServer, connect as connectTcp, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { Registry } from 'prom-client';
import { HandshakeInitiator } from '../../src/handshake/initiator.js';
import { HandshakeResponder } from '../../src/handshake/responder.js';
import { LocalIdentities, type SvidSource } from '../../src/handshake/local-identities.js';
import { PeerValidator } from '../../src/handshake/peer-validator.js';
import { defaultNodeIdentityScheme } from '../../src/handshake/node-identity.js';
import { handshakeOptionsSchema, type HandshakeOptionsInput } from '../../src/handshake/handshake-options.js';
import { readFrame, type NodeFrame } from '../../src/handshake/frames.js';
import { TLS_BASE_OPTIONS } from '../../src/handshake/local-identities.js';
import { ALPN } from '../../src/handshake/protocol.js';
import type { AuthResult, AuthorizeRequest, PeerAddress } from '../../src/handshake/types.js';
import { TrustBundleSet } from '../../src/identity/bundle-set.js';
import { IdentityStore } from '../../src/identity/store.js';
import { SpiffeId } from '../../src/identity/spiffe-id.js';
import type { IdentityProvider, ProviderSink, RawBundles, RawSvid, Svid } from '../../src/identity/types.js';
import { HandshakeMetrics } from '../../src/handshake/handshake-metrics.js';
import { silentLogger } from '../../src/util/logger.js';
import { caSpec, forge, leafSpec, type CertSpec, type Forged } from './cert-forge.js';

export const TD = 'a.test';
const HOUR = 3_600_000;
const DAY = 24 * HOUR;

export const nodeIdOf = (nodeName: string, td = TD): SpiffeId => SpiffeId.parse(`spiffe://${td}/meshauth/node/${nodeName}`);
export const workloadId = (name: string, td = TD): SpiffeId => SpiffeId.parse(`spiffe://${td}/ns/default/sa/${name}`);

/** A root CA (cert-forge) whose validity is relative to the real clock. */
export class TestCa {
  private constructor(
    readonly trustDomain: string,
    readonly root: Forged,
  ) {}

  static async create(trustDomain = TD, label = 'root'): Promise<TestCa> {
    const now = Date.now();
    const spec = { ...caSpec(trustDomain, undefined, label), notBefore: new Date(now - 2 * DAY), notAfter: new Date(now + 30 * DAY) };
    return new TestCa(trustDomain, await forge(spec));
  }

  bundle(): Buffer[] {
    return [this.root.der];
  }

  /** A leaf for id: valid from a day ago for an hour ahead, unless overrides say otherwise. */
  async leaf(id: SpiffeId | string, overrides: Partial<CertSpec> = {}): Promise<Forged> {
    const now = Date.now();
    return forge({ ...leafSpec(id.toString(), this.root), notBefore: new Date(now - DAY), notAfter: new Date(now + HOUR), ...overrides });
  }

  async rawSvid(id: SpiffeId | string, overrides: Partial<CertSpec> = {}): Promise<RawSvid> {
    const leaf = await this.leaf(id, overrides);
    return { chain: [leaf.der], key: privateKeyDer(leaf), claimedId: id.toString() };
  }
}

export function privateKeyDer(forged: Forged): Buffer {
  return KeyObject.from(forged.keys.privateKey).export({ type: 'pkcs8', format: 'der' });
}

/** An Svid object made straight from a forged leaf, bypassing the store's validation: how a test
 *  makes an agent present a certificate no real store would accept. `id` is what the agent
 *  believes the SVID is for (its SNI); the certificate may say otherwise. */
export function unvalidatedSvid(id: SpiffeId, leaf: Forged): Svid {
  return {
    id,
    chain: [leaf.cert],
    key: KeyObject.from(leaf.keys.privateKey),
    notBefore: new Date(leaf.cert.validFrom),
    notAfter: new Date(leaf.cert.validTo),
  };
}

/** A provider the test drives: it forwards what the test pushes to the store. */
export class ManualProvider implements IdentityProvider {
  readonly name = 'file' as const;
  sink?: ProviderSink;
  start(sink: ProviderSink): Promise<void> {
    this.sink = sink;
    return Promise.resolve();
  }
  setWanted(): void {}
  async stop(): Promise<void> {}
}

/** An SvidSource holding whatever Svid objects the test gives it, valid or not. */
export class StaticSvids extends EventEmitter implements SvidSource {
  constructor(
    readonly nodeId: SpiffeId,
    private readonly svids: Svid[],
  ) {
    super();
  }
  list(): Svid[] {
    return this.svids;
  }
  wantedList(): string[] {
    return [];
  }
}

export interface AgentOptions {
  nodeName: string;
  /** 127.0.0.N: listener and source address of this agent. */
  address: string;
  ca: TestCa;
  /** Workload identities this node holds (the node identity is always added). */
  workloads?: SpiffeId[];
  /** Trust bundles; default the CA's own trust domain. */
  bundles?: RawBundles;
  /** Replaces the identity store as the source of local SVIDs (for deliberately bad SVIDs). */
  svids?: Svid[];
  /** Source address → node name; default the agents the test registered with registerNode(). */
  resolveNode?: (address: string) => string | undefined;
  authorize?: (request: AuthorizeRequest) => boolean;
  localNodeFrame?: (peerNode: string) => NodeFrame;
  settings?: HandshakeOptionsInput;
  now?: () => Date;
}

export interface TestAgent {
  nodeName: string;
  address: string;
  port: number;
  store?: IdentityStore;
  provider?: ManualProvider;
  identities: LocalIdentities;
  validator: PeerValidator;
  initiator: HandshakeInitiator;
  responder: HandshakeResponder;
  results: AuthResult[];
  registry: Registry;
  authorizeCalls: AuthorizeRequest[];
  close(): Promise<void>;
}

/** The loopback address → node name map every agent's default resolveNode reads. */
export class NodeDirectory {
  private readonly nodes = new Map<string, string>();
  register(address: string, nodeName: string): void {
    this.nodes.set(address, nodeName);
  }
  resolve = (address: string): string | undefined => this.nodes.get(address);
}

export function nodeFrameFor(nodeName: string, index = 1): NodeFrame {
  return {
    nodeName,
    wireguard: { publicKey: randomBytes(32).toString('base64'), endpoint: `127.0.0.${index}:51820` },
    podCidrs: [`10.244.${index}.0/24`, `fd00:${index}::/64`],
    ipsecSpis: [0x1000 + index],
  };
}

export async function startAgent(options: AgentOptions, directory: NodeDirectory): Promise<TestAgent> {
  const now = options.now ?? (() => new Date());
  const logger = silentLogger();
  const registry = new Registry();
  const metrics = new HandshakeMetrics(registry);
  const nodeId = nodeIdOf(options.nodeName, options.ca.trustDomain);
  const settings = handshakeOptionsSchema.parse({ listenAddress: options.address, port: 0, sourceAddress: options.address, ...options.settings });
  let store: IdentityStore | undefined;
  let provider: ManualProvider | undefined;
  let source: SvidSource;
  if (options.svids) {
    source = new StaticSvids(nodeId, options.svids);
  } else {
    provider = new ManualProvider();
    store = new IdentityStore({ provider, nodeId, clockSkewMs: 30_000, maxChainDepth: 5, logger, now });
    await store.start();
    provider.sink!.bundles(options.bundles ?? new Map([[options.ca.trustDomain, options.ca.bundle()]]));
    provider.sink!.svids(await Promise.all([nodeId, ...(options.workloads ?? [])].map((id) => options.ca.rawSvid(id))));
    source = store;
  }
  const trustBundles = store?.trustBundles ?? (bundleSetOf(options.bundles ?? new Map([[options.ca.trustDomain, options.ca.bundle()]])));
  const identities = new LocalIdentities(source, now);
  const validator = new PeerValidator({ bundles: trustBundles, clockSkewMs: 30_000, maxChainDepth: 5, cacheSize: settings.validationCacheSize, now });
  const nodeIds = defaultNodeIdentityScheme(options.ca.trustDomain);
  const results: AuthResult[] = [];
  const authorizeCalls: AuthorizeRequest[] = [];
  const onAuthenticated = (result: AuthResult): void => {
    results.push(result);
  };
  const localNodeFrame = options.localNodeFrame ?? (() => nodeFrameFor(options.nodeName, Number(options.address.split('.').at(-1))));
  const initiator = new HandshakeInitiator({ identities, validator, nodeIds, localNodeFrame, onAuthenticated, settings, logger, metrics, now });
  const responder = new HandshakeResponder({
    identities,
    validator,
    nodeIds,
    resolveNode: options.resolveNode ?? directory.resolve,
    authorize: (request) => {
      authorizeCalls.push(request);
      return options.authorize ? options.authorize(request) : true;
    },
    localNodeFrame,
    onAuthenticated,
    settings,
    logger,
    metrics,
    now,
  });
  const { port } = await responder.listen();
  directory.register(options.address, options.nodeName);
  return {
    nodeName: options.nodeName,
    address: options.address,
    port,
    ...(store && { store }),
    ...(provider && { provider }),
    identities,
    validator,
    initiator,
    responder,
    results,
    registry,
    authorizeCalls,
    async close() {
      initiator.close();
      await responder.close();
      validator.close();
      identities.close();
      await store?.stop();
    },
  };
}

function bundleSetOf(bundles: RawBundles): TrustBundleSet {
  const set = new TrustBundleSet();
  set.replace(bundles);
  return set;
}

/** The value of one labelled series of a counter or gauge (0 when absent). */
export async function metricValue(registry: Registry, name: string, labels: Record<string, string>): Promise<number> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name);
  const values = (metric?.values ?? []) as { labels: Record<string, string | number>; value: number }[];
  return values.filter((v) => Object.entries(labels).every(([k, l]) => v.labels[k] === l)).reduce((sum, v) => sum + v.value, 0);
}

/** Resolves once check() holds, polling every 10 ms; rejects after timeoutMs. */
export async function eventually(check: () => boolean | Promise<boolean>, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Waits until the agent's responder has settled `count` connections (any result). */
export function responderSettled(agent: TestAgent, count = 1): Promise<void> {
  return eventually(async () => (await metricValue(agent.registry, 'meshauth_handshakes_total', { role: 'responder' })) >= count, `${count} responder outcomes`);
}

/** Listens on `address` (port 0) and resolves once it does. */
async function listening(server: NetServer, address: string): Promise<PeerAddress> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, address, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return { host: address, port: (server.address() as AddressInfo).port };
}

export interface FrameRecorder {
  address: PeerAddress;
  /** The JSON of the first frame the initiator sent after the TLS handshake, as it arrived. */
  frame: Promise<unknown>;
  close(): Promise<void>;
}

/**
 * A stand-in for `agent`'s responder that completes the TLS handshake with the agent's SVIDs,
 * records the first frame the initiator sends, and ends the connection without answering. What
 * a real responder does with a frame (its failure class) can look the same for quite different
 * frames; the recorder shows the bytes that actually crossed the wire.
 */
export async function frameRecorder(agent: TestAgent): Promise<FrameRecorder> {
  let record!: (frame: unknown) => void;
  let fail!: (err: unknown) => void;
  const frame = new Promise<unknown>((resolve, reject) => {
    record = resolve;
    fail = reject;
  });
  const server = createTlsServer(
    {
      ...TLS_BASE_OPTIONS,
      ALPNProtocols: [ALPN.pair, ALPN.node],
      SNICallback: (servername, callback) => callback(null, agent.identities.contextForSni(servername)),
    },
    (socket) => {
      socket.on('error', fail);
      readFrame(socket).then((payload) => {
        record(JSON.parse(payload.toString('utf8')));
        socket.end();
      }, fail);
    },
  );
  const address = await listening(server, agent.address);
  return { address, frame, close: () => new Promise((resolve) => server.close(() => resolve())) };
}

export interface ConnectionCounter {
  address: PeerAddress;
  /** Connections accepted so far, not counting the probes this call makes. */
  accepted(): Promise<number>;
  close(): Promise<void>;
}

/**
 * A bare TCP listener that counts the connections it accepts: where a test points an initiator
 * that must not connect at all. accepted() first makes a connection of its own and waits until
 * the listener has taken it: the kernel hands over connections in the order they were
 * established, so any connection attempted before the call has been counted by then.
 */
export async function connectionCounter(address: string): Promise<ConnectionCounter> {
  const seen: string[] = [];
  const probes = new Set<string>();
  const server = createNetServer((socket) => {
    seen.push(`${socket.remoteAddress}:${socket.remotePort}`);
    socket.on('error', () => {});
    socket.destroy();
  });
  const listen = await listening(server, address);
  return {
    address: listen,
    async accepted() {
      const probe = await new Promise<Socket>((resolve, reject) => {
        const socket = connectTcp({ host: listen.host, port: listen.port! }, () => resolve(socket));
        socket.on('error', reject);
      });
      const key = `${probe.localAddress}:${probe.localPort}`;
      probes.add(key);
      await eventually(() => seen.includes(key), 'the probe connection to be accepted');
      probe.destroy();
      return seen.filter((connection) => !probes.has(connection)).length;
    },
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
