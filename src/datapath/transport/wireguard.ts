/**
 * WireGuard transport between nodes, keyed by the node handshake.
 *
 *   const wg = await WireGuardTransport.open({ stateDir: '/var/lib/meshauth', listenPort: 51820 });
 *   wg.publicKey;                                    // goes into this node's handshake frame
 *   await wg.upsertPeer({ nodeName, publicKey, endpoint, allowedIps: podCidrs, presharedKey });
 *   await wg.setPeers(allPeers);                     // the whole set, one `wg syncconf`
 *   await wg.removePeer(nodeName);                   // node removed, or its handshake failed
 *   await wg.peerStatus();                           // latest WireGuard handshake, bytes
 *   await wg.close();                                // the kernel interface stays up
 *
 * What binds the tunnel to the authenticating handshake: every peer carries the preshared key
 * exported from the TLS session (Noise IKpsk2 mixes it into each WireGuard handshake), and a
 * peer's public key and endpoint come only from the authenticated node frame. A wrong or missing
 * PSK on either side means no WireGuard handshake completes, so no traffic passes.
 *
 * Re-authentication replaces a peer's PSK in place (`wg set`/`wg syncconf` keep its session):
 * traffic continues on the current session keys, and the next WireGuard handshake (at the
 * latest REKEY_AFTER_TIME = 120 s later; a session never lives past 180 s) uses the new PSK.
 *
 * Routes: this module owns the routes to peers' allowed-ips (the remote pod CIDRs) through its
 * interface (`proto static`), added with a peer and removed with it (`manageRoutes: false`
 * leaves routing to the caller). Without a peer, traffic to its CIDRs follows the node's other
 * routes: keeping unauthenticated traffic out is the eBPF gate's job, not the routing table's.
 *
 * Keys never reach a command line: `wg set … private-key FILE`, `wg set … preshared-key FILE`
 * and `wg syncconf IF FILE` read them from a 0600 file on tmpfs that lives only for that one
 * command (withSecretFile; `wg` cannot read a key from a Node child's stdin, a socket). The
 * node's private key itself lives in <stateDir>/wireguard-key.pem (0600).
 *
 * Implementations: the kernel module (production) or wireguard-go (userspace, started as a
 * child in the foreground and stopped by close()). 'auto' tries `ip link add … type wireguard`
 * and falls back to wireguard-go. wireguard-go's control sockets live in /var/run/wireguard,
 * shared by all network namespaces, so interface names must be unique across namespaces.
 */
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { isIP } from 'node:net';
import { execa, type ResultPromise } from 'execa';
import type { TransportMetrics, TransportOperation } from './metrics.js';
import { silentLogger, type Logger } from '../../util/logger.js';
import { DatapathError } from '../errors.js';
import { checkDisjointOwners, parseCidr, parseCidrs, type Cidr } from './cidrs.js';
import { NetnsExec, withSecretFile } from './exec.js';
import { WireGuardKeyPair, copyKey, isWireGuardKey, type KeyInput } from './keys.js';

export type WireGuardImplementation = 'kernel' | 'userspace';

export interface WireGuardOptions {
  /** Holds the node key pair (wireguard-key.pem, 0600; the directory 0700). */
  stateDir: string;
  /** Default meshauth0. At most 15 characters. */
  interfaceName?: string;
  /** UDP port peers send to; default 51820. */
  listenPort?: number;
  /** Default 'auto': the kernel module when it is available, wireguard-go otherwise. */
  implementation?: WireGuardImplementation | 'auto';
  /** Run everything inside /run/netns/<netns> (tests put each node in its own namespace). */
  netns?: string;
  /** Default 1420 (1500 minus the WireGuard overhead over IPv6). */
  mtu?: number;
  /** Route each peer's allowed-ips through the interface; default true. */
  manageRoutes?: boolean;
  /** Default "wireguard-go" (on PATH). */
  wireguardGoPath?: string;
  logger?: Logger;
  metrics?: TransportMetrics;
}

export interface WireGuardPeer {
  /** The remote node, as the authenticated node handshake named it. */
  nodeName: string;
  /** The peer's WireGuard public key (base64), from its authenticated node frame. */
  publicKey: string;
  /** host:port ([v6]:port) to send to; absent: wait for the peer to reach this node first. */
  endpoint?: string;
  /** The remote node's pod CIDRs: the only sources accepted from it and routed to it. */
  allowedIps: string[];
  /** 32 bytes from the node handshake's TLS exporter (EXPORTER-meshauth-wireguard-psk). */
  presharedKey: KeyInput;
  /** Seconds between keepalives (e.g. 25 behind NAT); default off. */
  persistentKeepalive?: number;
}

export interface WireGuardPeerStatus {
  /** Undefined for a peer this process did not program (left by a previous run). */
  nodeName: string | undefined;
  publicKey: string;
  endpoint: string | undefined;
  /** When the last WireGuard handshake with the peer completed; undefined: never. */
  latestHandshake: Date | undefined;
  rxBytes: number;
  txBytes: number;
}

interface ProgrammedPeer {
  nodeName: string;
  publicKey: string;
  endpoint: string | undefined;
  allowedIps: Cidr[];
  presharedKey: Buffer;
  persistentKeepalive: number;
}

const INTERFACE_NAME = /^[A-Za-z0-9_.-]{1,15}$/;
const NODE_NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;
const ENDPOINT = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]{1,253}):(\d{1,5})$/;
const USERSPACE_START_TIMEOUT_MS = 15_000;

function checkEndpoint(endpoint: string, nodeName: string): string {
  const match = typeof endpoint === 'string' ? ENDPOINT.exec(endpoint) : null;
  const port = Number(match?.[2]);
  const host = match?.[1] ?? '';
  const bracketed = host.startsWith('[');
  if (!match || port < 1 || port > 65535 || (bracketed && isIP(host.slice(1, -1)) !== 6)) {
    throw new DatapathError(`WireGuard peer ${nodeName}: bad endpoint ${JSON.stringify(endpoint)} (expected host:port or [ipv6]:port)`);
  }
  return endpoint;
}

/** Validates a peer and takes private copies of everything, the PSK included. */
function programmedPeer(peer: WireGuardPeer, ownPublicKey: string): ProgrammedPeer {
  if (typeof peer !== 'object' || peer === null) throw new DatapathError('WireGuard peer: expected an object');
  const { nodeName } = peer;
  if (typeof nodeName !== 'string' || !NODE_NAME.test(nodeName)) throw new DatapathError(`WireGuard peer: bad node name ${JSON.stringify(nodeName)}`);
  if (typeof peer.publicKey !== 'string' || !isWireGuardKey(peer.publicKey)) {
    throw new DatapathError(`WireGuard peer ${nodeName}: public key is not 32 bytes of base64`);
  }
  if (peer.publicKey === ownPublicKey) throw new DatapathError(`WireGuard peer ${nodeName}: has this node's own public key`);
  const keepalive = peer.persistentKeepalive ?? 0;
  if (!Number.isInteger(keepalive) || keepalive < 0 || keepalive > 65535) {
    throw new DatapathError(`WireGuard peer ${nodeName}: persistentKeepalive must be 0-65535 seconds`);
  }
  return {
    nodeName,
    publicKey: peer.publicKey,
    endpoint: peer.endpoint === undefined ? undefined : checkEndpoint(peer.endpoint, nodeName),
    allowedIps: parseCidrs(peer.allowedIps, `WireGuard peer ${nodeName} allowed-ips`),
    presharedKey: copyKey(peer.presharedKey, 32, `WireGuard peer ${nodeName} preshared key`),
    persistentKeepalive: keepalive,
  };
}

/** One `[Peer]` section of a wg config; every interpolated value was validated above. */
function peerSection(peer: ProgrammedPeer): string {
  const lines = ['[Peer]', `PublicKey = ${peer.publicKey}`, `PresharedKey = ${peer.presharedKey.toString('base64')}`];
  if (peer.allowedIps.length > 0) lines.push(`AllowedIPs = ${peer.allowedIps.map((c) => c.text).join(', ')}`);
  if (peer.endpoint !== undefined) lines.push(`Endpoint = ${peer.endpoint}`);
  if (peer.persistentKeepalive > 0) lines.push(`PersistentKeepalive = ${peer.persistentKeepalive}`);
  return lines.join('\n');
}

const CHILD_OPTIONS = { stdin: 'ignore', stdout: 'pipe', stderr: 'pipe', buffer: false, reject: false, cleanup: true } as const;
type UserspaceChild = ResultPromise<typeof CHILD_OPTIONS & { env: Record<string, string> }>;

export class WireGuardTransport {
  private readonly peers = new Map<string, ProgrammedPeer>();
  /** Canonical CIDR text of every route this module holds on the interface. */
  private readonly routes = new Set<string>();
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  private constructor(
    private readonly exec: NetnsExec,
    private readonly keys: WireGuardKeyPair,
    readonly interfaceName: string,
    readonly listenPort: number,
    readonly implementation: WireGuardImplementation,
    private readonly manageRoutes: boolean,
    private readonly logger: Logger,
    private child: UserspaceChild | undefined,
    private readonly metrics: TransportMetrics | undefined,
  ) {}

  /** This node's WireGuard public key (base64), for its handshake frame. */
  get publicKey(): string {
    return this.keys.publicKey;
  }

  /**
   * Creates (or adopts, after a restart) the interface and sets its private key and port.
   * Peers left by a previous run keep working until setPeers() replaces the set.
   */
  static async open(options: WireGuardOptions): Promise<WireGuardTransport> {
    const interfaceName = options.interfaceName ?? 'meshauth0';
    if (!INTERFACE_NAME.test(interfaceName)) throw new DatapathError(`bad WireGuard interface name ${JSON.stringify(interfaceName)} (1-15 of A-Z a-z 0-9 _ . -)`);
    const listenPort = options.listenPort ?? 51820;
    if (!Number.isInteger(listenPort) || listenPort < 1 || listenPort > 65535) throw new DatapathError(`bad WireGuard listen port ${listenPort}`);
    const mtu = options.mtu ?? 1420;
    if (!Number.isInteger(mtu) || mtu < 1280 || mtu > 65535) throw new DatapathError(`bad WireGuard MTU ${mtu} (1280-65535)`);
    const wanted = options.implementation ?? 'auto';
    if (!['kernel', 'userspace', 'auto'].includes(wanted)) throw new DatapathError(`bad WireGuard implementation ${JSON.stringify(wanted)}`);
    const logger = options.logger ?? silentLogger();
    const exec = new NetnsExec(options.netns);
    const keys = await WireGuardKeyPair.loadOrCreate(options.stateDir);

    let implementation = await existingImplementation(exec, interfaceName);
    let child: UserspaceChild | undefined;
    let createdKernelLink = false;
    if (implementation !== undefined) {
      if (wanted !== 'auto' && wanted !== implementation) {
        throw new DatapathError(`interface ${interfaceName} exists as ${implementation} WireGuard, but ${wanted} was asked for`);
      }
      logger.info({ interface: interfaceName, implementation }, 'adopting existing WireGuard interface');
    } else {
      const addKernel = ['link', 'add', interfaceName, 'type', 'wireguard'];
      const added = wanted === 'userspace' ? undefined : await exec.attempt('ip', addKernel);
      if (added?.exitCode === 0) {
        implementation = 'kernel';
        createdKernelLink = true;
      } else if (wanted === 'kernel' && added) {
        throw exec.failure('ip', addKernel, added);
      } else {
        if (added) logger.info({ interface: interfaceName, reason: added.stderr.trim() }, 'no kernel WireGuard, starting wireguard-go');
        implementation = 'userspace';
        // Wrapped: a child process is a thenable, and awaiting it would wait for its exit.
        ({ child } = await startUserspace(exec, interfaceName, options.wireguardGoPath ?? 'wireguard-go', logger));
      }
    }

    const transport = new WireGuardTransport(exec, keys, interfaceName, listenPort, implementation, options.manageRoutes ?? true, logger, child, options.metrics);
    try {
      await withSecretFile(`${keys.revealPrivateKey()}\n`, (file) => exec.run('wg', ['set', interfaceName, 'listen-port', String(listenPort), 'private-key', file]));
      await exec.run('ip', ['link', 'set', 'dev', interfaceName, 'mtu', String(mtu), 'up']);
      if (transport.manageRoutes) for (const cidr of await transport.listOwnRoutes()) transport.routes.add(cidr);
    } catch (err) {
      // Leave nothing half-configured behind: a link this call created goes again.
      if (child) await transport.stopChild();
      else if (createdKernelLink) await exec.attempt('ip', ['link', 'del', 'dev', interfaceName]);
      throw err;
    }
    logger.info({ interface: interfaceName, implementation, listenPort, publicKey: keys.publicKey }, 'WireGuard interface ready');
    return transport;
  }

  /** Node names of the peers this process has programmed. */
  nodeNames(): string[] {
    return [...this.peers.keys()].sort();
  }

  /**
   * Makes `peers` the complete peer set in one `wg syncconf` (unchanged peers keep their sessions;
   * changed PSKs, endpoints and allowed-ips are updated in place; others are removed, including
   * peers left by a previous run), then reconciles the routes.
   */
  async setPeers(peers: readonly WireGuardPeer[]): Promise<void> {
    const programmed = peers.map((peer) => programmedPeer(peer, this.publicKey));
    const names = new Set<string>();
    const publicKeys = new Set<string>();
    for (const peer of programmed) {
      if (names.has(peer.nodeName)) throw new DatapathError(`WireGuard peers: node ${peer.nodeName} listed twice`);
      if (publicKeys.has(peer.publicKey)) throw new DatapathError(`WireGuard peers: public key of ${peer.nodeName} used by another node too`);
      names.add(peer.nodeName);
      publicKeys.add(peer.publicKey);
    }
    checkDisjointOwners(programmed.map((p) => ({ owner: p.nodeName, cidrs: p.allowedIps })), 'WireGuard allowed-ips');
    return this.serialized('sync', async () => {
      // syncconf, like setconf, resets the interface's private key and port unless the config
      // names them; set to the values they already have, the kernel keeps every session.
      const device = ['[Interface]', `PrivateKey = ${this.keys.revealPrivateKey()}`, `ListenPort = ${this.listenPort}`].join('\n');
      const config = [device, ...programmed.map(peerSection)].join('\n\n');
      await withSecretFile(`${config}\n`, (file) => this.exec.run('wg', ['syncconf', this.interfaceName, file]));
      const removed = [...this.peers.keys()].filter((name) => !names.has(name));
      this.replacePeers(programmed);
      await this.reconcileRoutes();
      this.logger.info({ interface: this.interfaceName, peers: programmed.length, removed }, 'WireGuard peers synchronized');
    });
  }

  /** Adds or updates one peer (new PSK after a re-authentication, new endpoint or CIDRs). */
  async upsertPeer(peer: WireGuardPeer): Promise<void> {
    const next = programmedPeer(peer, this.publicKey);
    const operation = (): TransportOperation => {
      const known = this.peers.get(next.nodeName);
      if (!known) return 'add';
      return known.publicKey !== next.publicKey || !known.presharedKey.equals(next.presharedKey) ? 'rekey' : 'update';
    };
    return this.serialized(operation, async () => {
      const others = [...this.peers.values()].filter((p) => p.nodeName !== next.nodeName);
      const clash = others.find((p) => p.publicKey === next.publicKey);
      if (clash) throw new DatapathError(`WireGuard peer ${next.nodeName}: public key already used by node ${clash.nodeName}`);
      checkDisjointOwners([...others, next].map((p) => ({ owner: p.nodeName, cidrs: p.allowedIps })), 'WireGuard allowed-ips');
      const previous = this.peers.get(next.nodeName);
      const args = ['set', this.interfaceName];
      // A node that changed its key pair: the old peer goes in the same call.
      if (previous && previous.publicKey !== next.publicKey) args.push('peer', previous.publicKey, 'remove');
      args.push('peer', next.publicKey, 'allowed-ips', next.allowedIps.map((c) => c.text).join(','));
      args.push('persistent-keepalive', next.persistentKeepalive > 0 ? String(next.persistentKeepalive) : 'off');
      if (next.endpoint !== undefined) args.push('endpoint', next.endpoint);
      await withSecretFile(`${next.presharedKey.toString('base64')}\n`, (file) => this.exec.run('wg', [...args, 'preshared-key', file]));
      this.replacePeers([...others, next]);
      await this.reconcileRoutes();
      this.logger.info(
        { interface: this.interfaceName, node: next.nodeName, publicKey: next.publicKey, endpoint: next.endpoint, allowedIps: next.allowedIps.map((c) => c.text) },
        previous ? 'WireGuard peer updated' : 'WireGuard peer added',
      );
    });
  }

  /** Removes a node's peer and its routes; false when there was none. */
  removePeer(nodeName: string): Promise<boolean> {
    return this.serialized('remove', async () => {
      const previous = this.peers.get(nodeName);
      if (!previous) return false;
      await this.exec.run('wg', ['set', this.interfaceName, 'peer', previous.publicKey, 'remove']);
      this.replacePeers([...this.peers.values()].filter((p) => p.nodeName !== nodeName));
      await this.reconcileRoutes();
      this.logger.info({ interface: this.interfaceName, node: nodeName }, 'WireGuard peer removed');
      return true;
    });
  }

  /** Per-peer state from `wg show` (no keys are read back). */
  async peerStatus(): Promise<WireGuardPeerStatus[]> {
    const show = (what: string) => this.exec.run('wg', ['show', this.interfaceName, what]);
    const [handshakes, transfer, endpoints] = await Promise.all([show('latest-handshakes'), show('transfer'), show('endpoints')]);
    const rows = (text: string) => new Map(text.split('\n').filter(Boolean).map((line) => {
      const [key = '', ...rest] = line.split('\t');
      return [key, rest] as const;
    }));
    const transferByKey = rows(transfer);
    const endpointByKey = rows(endpoints);
    const nodeByKey = new Map([...this.peers.values()].map((p) => [p.publicKey, p.nodeName]));
    return [...rows(handshakes)].map(([publicKey, [seconds = '0']]) => {
      const [rx = '0', tx = '0'] = transferByKey.get(publicKey) ?? [];
      const endpoint = endpointByKey.get(publicKey)?.[0];
      return {
        nodeName: nodeByKey.get(publicKey),
        publicKey,
        endpoint: endpoint === undefined || endpoint === '(none)' ? undefined : endpoint,
        latestHandshake: seconds === '0' ? undefined : new Date(Number(seconds) * 1000),
        rxBytes: Number(rx),
        txBytes: Number(tx),
      };
    });
  }

  /**
   * Lets go of the interface. A kernel interface stays up with its peers (traffic keeps flowing
   * while the agent restarts); a userspace one ends with its wireguard-go process.
   */
  async close(): Promise<void> {
    await this.queue;
    if (this.closed) return;
    this.closed = true;
    await this.stopChild();
    for (const peer of this.peers.values()) peer.presharedKey.fill(0);
    this.peers.clear();
  }

  /** Deletes the interface, its peers and routes (and stops wireguard-go). */
  async destroy(): Promise<void> {
    const child = this.child;
    await this.close();
    if (!child) await this.exec.attempt('ip', ['link', 'del', 'dev', this.interfaceName]);
    this.routes.clear();
    this.logger.info({ interface: this.interfaceName }, 'WireGuard interface removed');
  }

  private replacePeers(next: readonly ProgrammedPeer[]): void {
    const kept = new Set(next);
    for (const peer of this.peers.values()) if (!kept.has(peer)) peer.presharedKey.fill(0);
    this.peers.clear();
    for (const peer of next) this.peers.set(peer.nodeName, peer);
  }

  /**
   * Routes on the interface = the union of the peers' allowed-ips. Every wanted route is
   * replaced each time (idempotent), which also restores routes the kernel dropped when the
   * interface went down.
   */
  private async reconcileRoutes(): Promise<void> {
    if (!this.manageRoutes) return;
    const wanted = new Set([...this.peers.values()].flatMap((p) => p.allowedIps.map((c) => c.text)));
    const stale = [...this.routes].filter((cidr) => !wanted.has(cidr));
    if (stale.length > 0) {
      // -force: a route the kernel already dropped is no error here.
      await this.exec.ipBatch(stale.map((cidr) => `route del ${cidr} dev ${this.interfaceName}`), { force: true });
      for (const cidr of stale) this.routes.delete(cidr);
    }
    if (wanted.size > 0) {
      const result = await this.exec.ipBatch([...wanted].map((cidr) => `route replace ${cidr} dev ${this.interfaceName} proto static`));
      if (result.exitCode !== 0) throw this.exec.failure('ip', ['-batch', '-'], result);
      for (const cidr of wanted) this.routes.add(cidr);
    }
  }

  private async listOwnRoutes(): Promise<string[]> {
    const found: string[] = [];
    for (const family of ['-4', '-6']) {
      const text = await this.exec.run('ip', [family, '-j', 'route', 'show', 'dev', this.interfaceName, 'proto', 'static']);
      for (const route of JSON.parse(text || '[]') as { dst?: string }[]) {
        if (route.dst && route.dst !== 'default') found.push(parseCidr(route.dst, 'existing route').text);
      }
    }
    return found;
  }

  /** Runs after every earlier change (one at a time), timed and counted when metrics are on. */
  private serialized<T>(operation: TransportOperation | (() => TransportOperation), change: () => Promise<T>): Promise<T> {
    const run = this.queue.then(() => {
      if (this.closed) throw new DatapathError(`WireGuard interface ${this.interfaceName} is closed`);
      if (!this.metrics) return change();
      return this.metrics.observe('wireguard', typeof operation === 'function' ? operation() : operation, change, () => this.peers.size);
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async stopChild(): Promise<void> {
    const child = this.child;
    if (!child) return;
    this.child = undefined;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await child;
    clearTimeout(timer);
  }
}

/** 'kernel' / 'userspace' for an existing WireGuard interface, undefined when there is none. */
async function existingImplementation(exec: NetnsExec, interfaceName: string): Promise<WireGuardImplementation | undefined> {
  const result = await exec.attempt('ip', ['-d', '-j', 'link', 'show', 'dev', interfaceName]);
  if (result.exitCode !== 0) {
    if (/does not exist/i.test(result.stderr)) return undefined;
    throw exec.failure('ip', ['-d', '-j', 'link', 'show', 'dev', interfaceName], result);
  }
  const [link] = JSON.parse(result.stdout) as { linkinfo?: { info_kind?: string } }[];
  const kind = link?.linkinfo?.info_kind;
  if (kind === 'wireguard') return 'kernel';
  // A tun device answering on wireguard-go's control socket.
  if (kind === 'tun' && (await exec.attempt('wg', ['show', interfaceName, 'listen-port'])).exitCode === 0) return 'userspace';
  throw new DatapathError(`interface ${interfaceName} exists and is not a WireGuard interface (kind ${kind ?? 'unknown'})`);
}

/** __SO_ACCEPTCON in /proc/net/unix: the socket is listening. */
const UNIX_ACCEPTCON = 0x10000;

/**
 * Whether wireguard-go's control socket is listening, read from /proc/PID/net/unix (the view of
 * the child's own network namespace). Unknown (no pid, no file) counts as not yet.
 */
async function uapiListening(pid: number | undefined, interfaceName: string): Promise<boolean> {
  if (pid === undefined) return false;
  const table = await readFile(`/proc/${pid}/net/unix`, 'utf8').catch(() => '');
  const path = `/var/run/wireguard/${interfaceName}.sock`;
  // Num RefCount Protocol Flags Type St Inode Path
  return table.split('\n').some((line) => {
    const fields = line.trim().split(/\s+/);
    return fields[7] === path && (Number.parseInt(fields[3] ?? '0', 16) & UNIX_ACCEPTCON) !== 0;
  });
}

/** Starts wireguard-go in the foreground (inside the namespace) and waits for its control socket. */
async function startUserspace(exec: NetnsExec, interfaceName: string, binary: string, logger: Logger): Promise<{ child: UserspaceChild }> {
  const [file, args] = exec.argv(binary, [interfaceName]);
  const child: UserspaceChild = execa(file, args, { ...CHILD_OPTIONS, env: { WG_PROCESS_FOREGROUND: '1', LOG_LEVEL: 'error' } });
  const output: string[] = [];
  const collect = (chunk: Buffer) => {
    output.push(chunk.toString('utf8'));
    if (output.length > 50) output.shift();
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  let exited = false;
  void child.then(({ exitCode, signal }) => {
    exited = true;
    logger.info({ interface: interfaceName, exitCode, signal }, 'wireguard-go exited');
  });
  const deadline = Date.now() + USERSPACE_START_TIMEOUT_MS;
  while (!exited) {
    // Not `wg show` until then: wg unlinks a control socket that refuses its connection, which is
    // what a socket bound but not yet listening does, and wireguard-go then fails to start.
    if ((await uapiListening(child.pid, interfaceName)) && (await exec.attempt('wg', ['show', interfaceName, 'listen-port'])).exitCode === 0) return { child };
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      await child;
      break;
    }
    await sleep(25);
  }
  const result = await child;
  const detail = output.join('').trim() || result.shortMessage;
  throw new DatapathError(`wireguard-go ${interfaceName} did not start: ${detail}`);
}
