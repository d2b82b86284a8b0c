import { mkdir } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import type { Registry } from 'prom-client';
import { AuthCache, type AuthMap } from '../auth/cache.js';
import { AuthManager, type PairAuthentication } from '../auth/manager.js';
import { MemoryAuthMap } from '../auth/memory-map.js';
import { NumericIds } from '../auth/numeric-ids.js';
import type { KeyedPair, PairKey } from '../auth/types.js';
import { staticSnapshot } from '../cluster/static-source.js';
import { ClusterState } from '../cluster/state.js';
import type { EndpointInfo, NodeInfo } from '../cluster/types.js';
import { nodeIdentity, type Config } from '../config/config.js';
import { Datapath } from '../datapath/gate/datapath.js';
import type { Signal } from '../datapath/gate/layout.js';
import { HandshakeFailure } from '../handshake/failure.js';
import type { NodeFrame } from '../handshake/frames.js';
import { HandshakeInitiator } from '../handshake/initiator.js';
import { LocalIdentities } from '../handshake/local-identities.js';
import { defaultNodeIdentityScheme } from '../handshake/node-identity.js';
import { PeerValidator } from '../handshake/peer-validator.js';
import { DEFAULT_PORT } from '../handshake/protocol.js';
import { HandshakeResponder } from '../handshake/responder.js';
import type { AuthResult, AuthorizeRequest, PairAuthResult } from '../handshake/types.js';
import { createProvider } from '../identity/providers/index.js';
import { SpiffeId } from '../identity/spiffe-id.js';
import { IdentityStore } from '../identity/store.js';
import type { AgentMetrics } from './agent-metrics.js';
import { registerAgentMetrics, type AgentMetricFamilies } from './metric-families.js';
import { createRegistry } from '../metrics/registry.js';
import { MetricsServer } from '../metrics/server.js';
import type { Logger } from '../util/logger.js';
import { ControlServer } from '../control/server.js';
import { GateInterfaces } from './gate-interfaces.js';
import { CniService } from './cni-service.js';
import { PodBindings, type PodBinding } from './pod-bindings.js';
import { PeerManager } from './peers.js';
import { NodePlanner } from './node-planner.js';
import type { NodePlan } from './plan.js';
import { PlanWriter } from './plan-writer.js';
import { removeStaleGateEntries } from './pinned-state.js';
import { addReservedPeers, type ReservedAddresses } from './reserved-plan.js';
import { emptyPlan, ReservedEntries } from './reserved-delta.js';
import type { AgentStatus } from '../control/status.js';
import { assembleNodeFrame, type Transport } from '../datapath/transport/transport.js';
import { createTransport } from '../datapath/transport/factory.js';
import { gateArrival, type GateArrival } from './gate-arrival.js';
import { mapCapacities } from '../datapath/gate/loader.js';

export interface AgentDependencies {
  logger: Logger;
  /** The payload transport; default: the one the config's transport section selects. */
  transport?: Transport;
}

/**
 * The meshauth agent: wires provider → identity store → handshake → auth cache → datapath, fed
 * by cluster state (static config or Kubernetes), observable through metrics and the control
 * socket. Stopping it leaves the datapath enforcing: the gate stays attached and its maps pinned.
 */
export class Agent {
  private readonly registry: Registry;
  private readonly families: AgentMetricFamilies;
  private readonly metrics: AgentMetrics;
  private readonly state: ClusterState;
  private planner!: NodePlanner;
  private planWriter?: PlanWriter;
  /** Whether a plan has been applied since the start (the first one is the complete state). */
  private planned = false;
  /** The gate config last written, as JSON: written again only when it changes. */
  private appliedGateConfig?: string;
  private readonly reservedEntries = new ReservedEntries();
  private replanQueued = false;
  /** How the gate checks other nodes' packets arrived (set once the transport is up). */
  private gateArrival: GateArrival = { transport: 'unset', wireguardIfindex: 0 };
  private gateInterfaces?: GateInterfaces;
  private readonly pods: PodBindings;
  private readonly cni: CniService;
  /** Kubernetes only: the pod of a CNI registration, from the informer, before it runs. */
  private wiredPod?: (pod: { namespace: string; name: string; uid?: string }, ips: readonly string[]) => EndpointInfo[];
  private readonly startedAt = new Date();
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly closers: (() => Promise<void> | void)[] = [];
  private store!: IdentityStore;
  private ids!: NumericIds;
  private datapath?: Datapath;
  private cache!: AuthCache;
  private auth!: AuthManager;
  private peers!: PeerManager;
  private responder!: HandshakeResponder;
  private initiator!: HandshakeInitiator;
  private transport: Transport;
  private metricsServer?: MetricsServer;
  private controlServer?: ControlServer;
  private listening?: { port: number };

  private constructor(
    private config: Config,
    private readonly deps: AgentDependencies,
  ) {
    this.registry = createRegistry();
    this.families = registerAgentMetrics(this.registry, {
      datapathCounters: () => this.datapath?.counters(),
      onCollectError: (err) => deps.logger.warn({ err: (err as Error).message }, 'reading the datapath counters failed'),
    });
    this.metrics = this.families.agent;
    this.state = new ClusterState(config.nodeName);
    const hostNetns = config.datapath.netns !== undefined ? { hostNetns: config.datapath.netns } : {};
    this.pods = new PodBindings({ spoolDir: config.cni.spoolDir, ...hostNetns, logger: deps.logger });
    this.cni = new CniService({
      pods: this.pods,
      state: this.state,
      ...hostNetns,
      replanNow: () => {
        if (this.state.isSynced) this.applyPlan();
      },
      reloadStatic: () => {
        if (!this.config.kubernetes.enabled) this.state.replaceAll(staticSnapshot(this.config.cluster));
      },
      podPairs: (ips) => this.podPairs(ips),
      pairOutcome: (pair) => {
        const state = this.auth.stateOf(pair);
        if (!state) return undefined;
        if (state.state === 'authenticated') return 'authenticated';
        return state.state === 'failed' && state.lastError === 'unauthorized' ? 'refused' : 'waiting';
      },
      ...(config.kubernetes.enabled && {
        identify: (binding: PodBinding) => (binding.pod && this.wiredPod ? this.wiredPod(binding.pod, binding.ips) : []),
      }),
      metrics: this.families.cni,
      logger: deps.logger,
    });
    this.transport =
      deps.transport ?? createTransport(config.transport, config.stateDir, deps.logger, this.families.transport, () => this.state.nodes.get(config.nodeName));
  }

  static async start(config: Config, deps: AgentDependencies): Promise<Agent> {
    const agent = new Agent(config, deps);
    try {
      await agent.startParts();
    } catch (err) {
      await agent.stop();
      throw err;
    }
    return agent;
  }

  /** The port the handshake responder listens on (resolved when the config says 0). */
  get responderPort(): number {
    return this.listening?.port ?? 0;
  }

  get metricsPort(): number | undefined {
    return this.metricsServer?.port;
  }

  private async startParts(): Promise<void> {
    const { config, deps } = this;
    const logger = deps.logger;
    await mkdir(config.stateDir, { recursive: true, mode: 0o700 });
    this.ids = await NumericIds.load(join(config.stateDir, 'numeric-ids.json'));
    this.planner = new NodePlanner({ localNode: config.nodeName, ids: this.ids, defaultMode: config.cluster.policy.default });

    // Datapath first: enforcement continues from the pinned maps while everything else starts.
    let map: AuthMap = new MemoryAuthMap();
    if (config.datapath.enabled) {
      this.datapath = await Datapath.open({
        pinDir: config.datapath.pinDir,
        attach: config.datapath.attach,
        capacities: mapCapacities(config.datapath.capacities, config.auth.cacheSize),
        logger,
      });
      this.closers.push(() => this.datapath?.close());
      map = this.datapath;
      this.planWriter = new PlanWriter(this.datapath, this.families.plan, logger);
      const gateInterfaces = new GateInterfaces({
        datapath: this.datapath,
        ...(config.datapath.netns !== undefined && { netns: config.datapath.netns }),
        logger,
        onResolved: () => this.queueReplan(),
        onStaleBindings: (count) => this.metrics.staleEntries('interfaces', count),
      });
      this.gateInterfaces = gateInterfaces;
      // Waits for attaches in flight: one finishing after stop would pin a program into a pin
      // directory that an uninstall right after the stop is removing.
      this.closers.push(() => {
        gateInterfaces.stop();
        return gateInterfaces.settled();
      });
    } else {
      logger.warn('datapath disabled: pairs are authenticated and tracked, but no traffic is gated');
    }
    this.cache = new AuthCache({ map, ids: this.ids, capacity: config.auth.cacheSize, logger });
    const restored = this.cache.restore();

    // Identity.
    const nodeId = SpiffeId.parse(nodeIdentity(config));
    this.store = new IdentityStore({
      provider: createProvider(config.identity, { ...config, nodeId: nodeId.toString() }, logger),
      nodeId,
      clockSkewMs: config.identity.clockSkew,
      maxChainDepth: config.identity.maxChainDepth,
      logger,
      metrics: this.families.identity,
    });
    this.closers.push(() => this.store.stop());
    await this.store.start();

    await this.transport.start();
    this.closers.push(() => this.transport.close());
    if (this.datapath) this.gateArrival = await gateArrival(config, logger);

    // Handshake.
    const identities = new LocalIdentities(this.store);
    const validator = new PeerValidator({
      bundles: this.store.trustBundles,
      clockSkewMs: config.identity.clockSkew,
      maxChainDepth: config.identity.maxChainDepth,
      cacheSize: config.handshake.validationCacheSize,
    });
    this.closers.push(() => validator.close());
    const nodeIds = defaultNodeIdentityScheme(config.trustDomain);
    const common = {
      identities,
      validator,
      nodeIds,
      localNodeFrame: (peer: string) => this.localNodeFrame(peer),
      onAuthenticated: (result: AuthResult) => this.onResponderResult(result),
      settings: config.handshake,
      logger,
      metrics: this.families.handshake,
    };
    this.initiator = new HandshakeInitiator({ ...common, onAuthenticated: () => {} });
    this.closers.push(() => this.initiator.close());
    this.responder = new HandshakeResponder({
      ...common,
      resolveNode: (address) => this.state.nodeByAddress(address)?.name,
      authorize: (request) => this.authorize(request),
    });
    this.closers.push(() => this.responder.close());
    this.listening = await this.responder.listen();

    // Node links and pairs.
    const timing = {
      fraction: config.auth.reauthFraction,
      jitter: config.auth.reauthJitter,
      failureBackoff: { initialMs: config.auth.failureBackoff.initial, maxMs: config.auth.failureBackoff.max },
      proactiveGraceMs: config.auth.proactiveGrace,
    };
    this.peers = new PeerManager({
      localNode: config.nodeName,
      transport: this.transport,
      authenticate: (node) => this.initiator.authenticateNode({ remoteNode: node.name, address: { host: node.address, port: node.port ?? DEFAULT_PORT } }),
      timing,
      logger,
      onLinkChanged: (node) => this.auth.onNodeLinkChanged(node),
      onRekey: () => this.metrics.transportRekey(),
    });
    this.closers.push(() => this.peers.stop());
    this.auth = new AuthManager({
      cache: this.cache,
      localNode: config.nodeName,
      authenticate: (pair) => this.authenticatePair(pair),
      authenticateLocal: (pair) => this.authenticateLocalPair(pair),
      nodeLink: (node) => this.peers.link(node),
      timing,
      proactive: () => this.config.auth.proactive,
      logger,
      onReauth: (trigger) => {
        if (trigger === 'reauth' || trigger === 'rotation' || trigger === 'bundle-change' || trigger === 'restored') this.metrics.reauth(trigger);
      },
      onSignalHandled: (status) => this.metrics.signal(status),
    });
    this.closers.push(() => this.auth.stop());
    this.auth.adoptRestored(restored);

    // Identity events reach the pairs they concern.
    this.store.on('svid', (svid) => {
      if (!svid.id.equals(nodeId)) this.auth.onLocalSvid(svid.id.toString());
    });
    this.store.on('bundles', (change) => {
      this.auth.onBundleChange(change);
      this.peers.onBundleChange(change, nodeId.trustDomain);
    });

    // Datapath signals: on-demand authentication.
    if (this.datapath) {
      const unsubscribe = this.datapath.onSignal((signal) => this.onSignal(signal));
      this.closers.push(unsubscribe);
    }

    // Pods the CNI plugin registered, also while no agent ran: their bindings are in the first plan.
    const spool = await this.pods.loadSpool();
    this.families.cni.spoolRejected.inc(spool.rejected);
    for (const pod of spool.loaded) logger.info({ containerId: pod.containerId, pod: pod.owner, ips: pod.ips, interface: pod.bound.name }, 'pod registered from the CNI spool');

    // Cluster state. Nothing is applied (and so nothing garbage-collected) before the source's
    // initial sync: until then the pinned maps keep enforcing what they held.
    this.state.on('changed', (event) => {
      this.planner.apply(event);
      this.queueReplan();
    });
    this.state.on('rejected', (rejection) => {
      this.families.plan.rejected.inc({ reason: rejection.reason });
      logger.warn(rejection, rejection.reason === 'node_address_conflict' ? 'two nodes claim one address: handshakes from it are refused' : 'endpoint refused: its IP is not in its node\'s pod CIDRs');
    });
    await this.startClusterSource();

    const reconcile = setInterval(() => this.reconcile(), config.auth.reconcileInterval);
    const gauges = setInterval(() => this.updateGauges(), 1000);
    reconcile.unref();
    gauges.unref();
    this.timers.push(reconcile, gauges);

    if (config.metrics.enabled) {
      this.metricsServer = await MetricsServer.start({
        host: config.metrics.address,
        port: config.metrics.port,
        registry: this.registry,
        readiness: () => this.readiness(),
        logger,
      });
      this.closers.push(() => this.metricsServer?.close());
    }
    this.controlServer = await ControlServer.start({ socketPath: config.control.socket, status: () => this.status(), cni: this.cni, logger });
    this.closers.push(() => this.controlServer?.close());
    logger.info(
      {
        node: config.nodeName,
        nodeId: nodeId.toString(),
        provider: config.identity.provider,
        port: this.responderPort,
        restored: restored.length,
        gate: this.datapath ? await this.datapath.hookMode() : 'off',
      },
      'agent started',
    );
  }

  private async startClusterSource(): Promise<void> {
    if (this.config.kubernetes.enabled) {
      // Loaded only when used: the Kubernetes client is large, and agents without it start faster.
      const { KubernetesSource, loadKubeConfig } = await import('../cluster/kubernetes/source.js');
      const source = new KubernetesSource({
        kubeConfig: loadKubeConfig(this.config.kubernetes.kubeconfig),
        trustDomain: this.config.kubernetes.trustDomain ?? this.config.trustDomain,
        logger: this.deps.logger,
      });
      this.wiredPod = (pod, ips) => source.wiredPod(pod, this.config.nodeName, ips);
      this.closers.push(() => source.stop());
      await source.start((event) => this.state.apply(event));
    } else {
      this.state.replaceAll(staticSnapshot(this.config.cluster));
    }
  }

  /** SIGHUP: re-applies the static cluster section of a new config. Other changes need a restart. */
  reload(config: Config): void {
    const restartOnly = (['nodeName', 'trustDomain', 'stateDir', 'identity', 'handshake', 'transport', 'datapath', 'metrics', 'control', 'kubernetes'] as const).filter(
      (key) => JSON.stringify(config[key]) !== JSON.stringify(this.config[key]),
    );
    if (restartOnly.length > 0) this.deps.logger.warn({ keys: restartOnly }, 'these config changes take effect only after a restart');
    // The cluster section and the proactive switch apply at once; the rest waits for a restart.
    this.config = { ...this.config, cluster: config.cluster, auth: { ...this.config.auth, proactive: config.auth.proactive } };
    this.planner.setDefaultMode(config.cluster.policy.default);
    if (!this.config.kubernetes.enabled) this.state.replaceAll(staticSnapshot(config.cluster));
    // Also when the state is unchanged: the default, the exemptions and the reserved ranges are config.
    this.queueReplan();
    this.deps.logger.info('configuration reloaded');
  }

  /** Graceful stop: everything closes, the datapath keeps enforcing. */
  async stop(): Promise<void> {
    for (const timer of this.timers) clearInterval(timer);
    for (const close of this.closers.reverse()) {
      try {
        await close();
      } catch (err) {
        this.deps.logger.warn({ err: (err as Error).message }, 'error while stopping');
      }
    }
    this.closers.length = 0;
  }

  status(): AgentStatus {
    const health = this.store.health();
    const counters = this.datapath?.counters();
    return {
      nodeName: this.config.nodeName,
      nodeId: this.store.nodeId.toString(),
      provider: health.provider,
      ready: this.readiness().ready,
      startedAt: this.startedAt.toISOString(),
      identities: this.store.list().map((svid) => ({
        spiffeId: svid.id.toString(),
        node: svid.id.equals(this.store.nodeId),
        notAfter: svid.notAfter.toISOString(),
        serial: svid.chain[0]!.serialNumber.toLowerCase(),
      })),
      pairs: this.auth.status(),
      peers: this.peers.status(),
      ...(counters && {
        datapath: {
          counters: Object.fromEntries(Object.entries(counters).map(([name, value]) => [name, value.toString()])),
          authEntries: this.cache.size,
          authCapacity: this.cache.capacity,
          remoteArrival: this.gateArrival.transport === 'wireguard' || this.gateArrival.transport === 'ipsec' ? this.gateArrival.transport : 'unchecked',
        },
      }),
    };
  }

  /** Waits until handshakes in flight have settled (tests). */
  async settled(): Promise<void> {
    await this.gateInterfaces?.settled();
    await this.peers.settled();
    await this.auth.settled();
  }

  private readiness(): { ready: true } | { ready: false; reason: string } {
    const health = this.store.health();
    if (!health.ready) return { ready: false, reason: `no node SVID or trust bundle yet${health.lastError ? ` (${health.lastError.kind}: ${health.lastError.message})` : ''}` };
    if (!this.state.isSynced) return { ready: false, reason: 'cluster state not synced yet' };
    return { ready: true };
  }

  private queueReplan(): void {
    if (this.replanQueued) return;
    this.replanQueued = true;
    // Coalesces a burst of cluster events into one plan; event order within the burst is kept
    // by the state itself (an IP's old owner is gone before its new owner appears).
    queueMicrotask(() => {
      this.replanQueued = false;
      if (this.state.isSynced) this.applyPlan();
    });
  }

  /**
   * Applies what changed in the plan since the last time; the first time, the complete plan. Only
   * changed entries reach the datapath, and the numeric-id file is written only when a number was
   * allocated or released.
   */
  private applyPlan(): void {
    const first = !this.planned;
    this.planned = true;
    const locals = this.planner.localEndpoints();
    const found = this.gateInterfaces?.interfacesOf(locals, (ip) => this.pods.interfaceOf(ip));
    const interfaceOf = (endpoint: EndpointInfo) => found?.get(endpoint.ip) ?? this.pods.interfaceOf(endpoint.ip) ?? endpoint.interface;
    const delta = this.planner.delta(interfaceOf);
    // The reserved peers' part is small: computed whole, and only its differences written.
    const reserved = emptyPlan();
    addReservedPeers(reserved, this.state, this.ids, this.config.cluster.policy.default, this.config.cluster.policy.exempt, this.reservedAddresses());
    const reservedDelta = this.reservedEntries.delta(reserved, (prefix) => this.planner.holds(prefix));
    if (found) this.metrics.setUngatedEndpoints(locals.filter((endpoint) => !found.has(endpoint.ip)).length);
    // A registered pod whose identity is not known yet (its informer has not seen it run) is gated
    // from the start, with no identity bound: its traffic meets the default mode until it is.
    for (const name of this.pods.interfaceNames()) if (!delta.interfaces.has(name)) delta.interfaces.set(name, []);
    if (first || delta.nodesChanged) this.peers.setNodes([...this.state.nodes.values()].filter((node) => node.name !== this.config.nodeName));
    // Pairs first: entries of removed endpoints, identities, nodes or policy leave the map before
    // any address is re-mapped to a new identity.
    this.auth.changeDesired(delta.pairs.added, delta.pairs.removed);
    if (this.datapath) {
      // The gate's config is written whole (the datapath needs the node and arrival settings with
      // every update), and only when it changed.
      const gateConfig = {
        defaultMode: this.config.cluster.policy.default === 'required' ? ('require' as const) : ('allow' as const),
        localNode: this.ids.node(this.config.nodeName),
        ...this.gateArrival,
      };
      const gateConfigKey = JSON.stringify(gateConfig);
      if (gateConfigKey !== this.appliedGateConfig) {
        this.datapath.setConfig(gateConfig);
        this.appliedGateConfig = gateConfigKey;
      }
      // The planner's writes first: a reserved entry for an address an endpoint left follows its deletion.
      this.planWriter?.write({
        ipcache: { set: [...delta.ipcache.set, ...reservedDelta.ipcache.set], deleted: [...delta.ipcache.deleted, ...reservedDelta.ipcache.deleted] },
        policy: { set: [...delta.policy.set, ...reservedDelta.policy.set], deleted: [...delta.policy.deleted, ...reservedDelta.policy.deleted] },
      });
      // The first delta is the complete plan: what the pinned maps hold beyond it, and beyond the
      // reserved entries, is stale.
      if (first) this.removeStaleGateEntries(this.datapath, this.completePlan(interfaceOf, reserved));
      this.gateInterfaces?.apply(delta.interfaces);
    }
    this.store.setWanted(delta.localIdentities.map((id) => SpiffeId.parse(id)));
    // Numbers are freed only now that no entry in any map uses them; at the first plan also those a
    // previous run left that the restored entries no longer need.
    this.planner.releaseUnused(first);
    void this.ids.save().catch((err: unknown) => this.deps.logger.error({ err: (err as Error).message }, 'saving the identity numbering failed'));
  }

  /** The planner's complete plan with the reserved entries it does not shadow (an endpoint's own address wins). */
  private completePlan(interfaceOf: (endpoint: EndpointInfo) => string | undefined, reserved: NodePlan): NodePlan {
    const plan = this.planner.plan(interfaceOf);
    for (const [prefix, entry] of reserved.ipcache) if (!plan.ipcache.has(prefix)) plan.ipcache.set(prefix, entry);
    for (const [id, entry] of reserved.policy) plan.policy.set(id, entry);
    return plan;
  }

  /** The first complete plan of this process: what the pinned maps hold beyond it is stale. */
  private removeStaleGateEntries(datapath: Datapath, plan: NodePlan): void {
    const removed = removeStaleGateEntries(datapath, { ipcache: plan.ipcache.keys(), policy: [...plan.policy.values()].map((policy) => policy.key) });
    this.metrics.staleEntries('ipcache', removed.ipcache);
    this.metrics.staleEntries('policy', removed.policy);
    if (removed.ipcache + removed.policy > 0) this.deps.logger.info(removed, 'gate entries of what went while the agent was down removed');
  }

  /**
   * The config's ranges and addresses, and this host's own addresses: those of the agent's network
   * namespace, unless the gate runs in another one (datapath.netns, tests and the demo). Link-local
   * IPv6 addresses are left out: every link has the same ones.
   */
  private reservedAddresses(): ReservedAddresses {
    const { cluster, datapath } = this.config;
    const own =
      datapath.netns === undefined
        ? Object.values(networkInterfaces())
            .flatMap((addresses) => addresses ?? [])
            .filter((address) => !address.internal && !(address.family === 'IPv6' && address.address.toLowerCase().startsWith('fe80:')))
            .map((address) => address.address)
        : [];
    return { serviceCidrs: cluster.serviceCidrs, podCidrs: cluster.podCidrs, apiServers: cluster.apiServers, hostAddresses: [...cluster.hostAddresses, ...own] };
  }

  private localNodeFrame(peer: string): NodeFrame {
    const self = this.state.nodes.get(this.config.nodeName);
    return assembleNodeFrame(this.config.nodeName, self?.podCidrs ?? [], this.transport, peer);
  }

  private authorize(request: AuthorizeRequest): boolean {
    if (request.kind === 'node') return this.state.nodes.has(request.remoteNode);
    const pair: PairKey = { localId: request.localId.toString(), remoteId: request.remoteId.toString(), remoteNode: request.remoteNode };
    // Only pairs policy requires, between endpoints that exist where they claim to run, carried
    // by an authenticated node link.
    if (!this.auth.isDesired(pair)) return false;
    // Each side of a node handshake brings the link up on its own (after programming the
    // transport): a peer that was quicker may ask for a pair before our side is up. That passes
    // in a moment, so it is a refusal the initiator retries, not a policy denial.
    if (this.peers.link(request.remoteNode) === undefined) throw new HandshakeFailure('refused', `no authenticated link to node ${request.remoteNode} yet`);
    return true;
  }

  private async authenticatePair(pair: PairKey): Promise<PairAuthentication> {
    const node = this.state.nodes.get(pair.remoteNode);
    if (!node) throw new HandshakeFailure('unauthorized', `node ${pair.remoteNode} is not known`);
    if (!this.peers.link(pair.remoteNode)) throw new HandshakeFailure('refused', `no authenticated link to node ${pair.remoteNode} yet`);
    const result = await this.initiator.authenticatePair({
      localId: SpiffeId.parse(pair.localId),
      remoteId: SpiffeId.parse(pair.remoteId),
      remoteNode: pair.remoteNode,
      address: addressOf(node),
    });
    return toPairAuthentication(result);
  }

  /** Both identities live on this node: their SVIDs, validated by the store, are the proof. */
  private authenticateLocalPair(pair: PairKey): PairAuthentication | undefined {
    const local = this.store.get(pair.localId);
    const remote = this.store.get(pair.remoteId);
    if (!local || !remote) return undefined;
    const now = Date.now();
    return {
      ...pair,
      authenticatedAt: now,
      expiresAt: Math.min(local.notAfter.getTime(), remote.notAfter.getTime(), now + this.config.handshake.maxTtl),
      localNotAfter: local.notAfter.getTime(),
      remoteNotAfter: remote.notAfter.getTime(),
    };
  }

  private onResponderResult(result: AuthResult): void {
    if (result.kind === 'node') {
      void this.peers.record(result);
      return;
    }
    this.auth.record(toPairAuthentication(result), 'responder');
  }

  private onSignal(signal: Signal): void {
    const localId = this.ids.identityName(signal.localIdentity);
    const remoteId = this.ids.identityName(signal.remoteIdentity);
    const remoteNode = this.ids.nodeName(signal.remoteNode);
    if (!localId || !remoteId || !remoteNode) return this.metrics.signal('unresolved');
    this.auth.onSignal({ localId, remoteId, remoteNode });
  }

  private reconcile(): void {
    const repaired = this.cache.reconcile();
    if (repaired > 0) this.deps.logger.warn({ repaired }, 'auth map drift repaired');
    // A pod's interface deleted, or its name taken by a new interface: that binding no longer holds.
    void this.pods
      .recheck()
      .then((stale) => this.cni.revokeStale(stale))
      .catch((err: unknown) => this.deps.logger.warn({ err: (err as Error).message }, 're-checking the pod interfaces failed'));
  }

  /** The desired pairs of the local endpoints at these addresses (either side). */
  private podPairs(ips: readonly string[]): KeyedPair[] {
    const identities = new Set<string>();
    for (const ip of ips) {
      const endpoint = this.state.endpointByIp(ip);
      if (endpoint?.node === this.config.nodeName) identities.add(endpoint.spiffeId);
    }
    if (identities.size === 0 || !this.planned) return [];
    return this.planner.desiredPairs().filter(
      (pair) => identities.has(pair.localId) || (pair.remoteNode === this.config.nodeName && identities.has(pair.remoteId)),
    );
  }

  private updateGauges(): void {
    this.metrics.setPairs(this.auth.counts());
    const peers = { up: 0, pending: 0, failed: 0 };
    for (const peer of this.peers.status()) peers[peer.state]++;
    this.metrics.setPeers(peers);
    this.metrics.setAuthMap(this.cache.size, this.cache.capacity);
  }
}

function addressOf(node: NodeInfo): { host: string; port: number } {
  return { host: node.address, port: node.port ?? DEFAULT_PORT };
}

function toPairAuthentication(result: PairAuthResult): PairAuthentication {
  return {
    localId: result.localId.toString(),
    remoteId: result.remoteId.toString(),
    remoteNode: result.remoteNode,
    authenticatedAt: result.authenticatedAt.getTime(),
    expiresAt: result.expiresAt.getTime(),
    localNotAfter: result.localNotAfter.getTime(),
    remoteNotAfter: result.remoteNotAfter.getTime(),
  };
}
