import type { NodeAuthResult } from '../handshake/types.js';
import type { NodeInfo } from '../cluster/types.js';
import type { NodeLink } from '../auth/manager.js';
import { ReauthScheduler, followerTiming, type ReauthTiming } from '../auth/scheduler.js';
import { parseCidr } from '../datapath/transport/cidrs.js';
import { Backoff } from '../util/backoff.js';
import type { Logger } from '../util/logger.js';
import type { PeerStatus } from '../control/status.js';
import type { Transport } from '../datapath/transport/transport.js';

// Failure classes that mean the peer's certificate is not (or no longer) acceptable.
const CERTIFICATE_FAILURES = new Set(['untrusted', 'expired', 'bad_certificate']);

// Longer than any handshake can take (connect + handshake timeouts), so two crossing handshakes
// always fall within it.
const CROSSING_WINDOW_MS = 15_000;

export interface PeerManagerOptions {
  localNode: string;
  transport: Transport;
  /** Runs a node handshake as initiator. */
  authenticate: (node: NodeInfo) => Promise<NodeAuthResult>;
  timing: ReauthTiming & { failureBackoff: { initialMs: number; maxMs: number }; proactiveGraceMs: number };
  logger: Logger;
  /** A link came up, was re-keyed, or went down. */
  onLinkChanged: (node: string) => void;
  onRekey?: () => void;
  now?: () => number;
}

interface Peer {
  info: NodeInfo;
  /** When a node handshake initiated by the leading node of this pair was last applied. */
  leaderAppliedAt?: number;
  /** The trust bundle changed since the link came up: a failed re-validation takes the link down. */
  revalidating?: boolean;
  link?: NodeLink & { authenticatedAt: number };
  state: PeerStatus['state'];
  lastError?: string;
  backoff?: Backoff;
  inFlight?: Promise<void>;
}

/**
 * The authenticated links to other nodes. A link exists only after a successful node handshake
 * (in either role); its transport keys come from that handshake and change with each
 * re-authentication. A node that leaves the cluster loses its transport peer and, through
 * onLinkChanged, every pair it carried.
 */
export class PeerManager {
  private readonly peers = new Map<string, Peer>();
  private readonly scheduler: ReauthScheduler<string>;
  private readonly now: () => number;
  private epoch = 0;
  private stopped = false;

  constructor(private readonly options: PeerManagerOptions) {
    this.now = options.now ?? Date.now;
    this.scheduler = new ReauthScheduler((node) => this.onDue(node), this.now);
  }

  link(node: string): NodeLink | undefined {
    const link = this.peers.get(node)?.link;
    return link && link.expiresAt > this.now() ? link : undefined;
  }

  /** The remote nodes of the cluster (the local node is ignored). */
  setNodes(nodes: readonly NodeInfo[]): void {
    const wanted = new Map(nodes.filter((n) => n.name !== this.options.localNode).map((n) => [n.name, n]));
    for (const [name, peer] of this.peers) {
      if (wanted.has(name)) continue;
      this.peers.delete(name);
      this.scheduler.cancel(name);
      if (peer.link) this.options.onLinkChanged(name);
      void this.options.transport.remove(name).catch((err: unknown) => this.options.logger.warn({ node: name, err: (err as Error).message }, 'removing the transport peer failed'));
    }
    for (const [name, info] of wanted) {
      const existing = this.peers.get(name);
      if (existing) {
        existing.info = info;
        continue;
      }
      this.peers.set(name, { info, state: 'pending' });
      if (this.options.localNode < name) this.ensure(name);
      else this.scheduler.schedule(name, this.now() + this.options.timing.proactiveGraceMs);
    }
  }

  /** A successful node handshake from either role: program the transport, then bring the link up. */
  async record(result: NodeAuthResult): Promise<void> {
    const peer = this.peers.get(result.remoteNode);
    if (!peer || this.stopped) return;
    // Two handshakes can cross (both nodes initiate at once) and finish in different orders on the
    // two sides; each side must then keep the SAME one, or their transport keys differ. Both sides
    // can tell who initiated a handshake, so the rule is: one initiated by the leading node (the
    // lower name) always applies; one initiated by the other node is dropped when a leader's
    // handshake was applied moments before.
    const leaderInitiated = (result.role === 'initiator') === this.options.localNode < result.remoteNode;
    const now = this.now();
    if (leaderInitiated) peer.leaderAppliedAt = now;
    else if (peer.leaderAppliedAt !== undefined && now - peer.leaderAppliedAt < CROSSING_WINDOW_MS) {
      this.options.logger.info({ node: result.remoteNode }, 'node handshake crossed one of the leading node: keeping the leader\'s');
      return;
    }
    // The transport routes the CIDRs the peer names in its frame into its tunnel: it may name only
    // what the cluster state assigns to it (not another node's pods, ours, or 0.0.0.0/0).
    const unassigned = unassignedCidrs(result.peerFrame.podCidrs, peer.info.podCidrs);
    if (unassigned.length > 0) {
      const message = `node ${result.remoteNode} claims pod CIDRs the cluster state does not assign to it: ${unassigned.join(', ')}`;
      this.fail(result.remoteNode, peer, 'unauthorized', new Error(message));
      return;
    }
    try {
      await this.options.transport.upsert({
        node: result.remoteNode,
        address: peer.info.address,
        frame: result.peerFrame,
        keys: result.transportKeys,
        ...(result.ownFrame.ipsecSpis?.[0] !== undefined && { localSpi: result.ownFrame.ipsecSpis[0] }),
      });
    } catch (err) {
      this.fail(result.remoteNode, peer, 'transport', err);
      return;
    }
    const rekey = peer.link !== undefined;
    peer.link = { expiresAt: result.expiresAt.getTime(), epoch: ++this.epoch, authenticatedAt: result.authenticatedAt.getTime() };
    peer.state = 'up';
    delete peer.lastError;
    delete peer.revalidating;
    peer.backoff?.reset();
    if (rekey) this.options.onRekey?.();
    const leads = this.options.localNode < result.remoteNode;
    const { fraction, jitter } = this.options.timing;
    const timing = leads ? { fraction, jitter } : followerTiming({ fraction, jitter });
    this.scheduler.schedule(result.remoteNode, this.scheduler.dueTime(peer.link.authenticatedAt, peer.link.expiresAt, timing));
    this.options.logger.info({ node: result.remoteNode, epoch: peer.link.epoch, transport: this.options.transport.kind, expiresAt: result.expiresAt.toISOString() }, rekey ? 'node link re-keyed' : 'node link up');
    this.options.onLinkChanged(result.remoteNode);
  }

  /**
   * Node identities live in one trust domain. When its bundle is unloaded every link goes down at
   * once; when it changes every link is re-authenticated now, and a link whose peer no longer
   * validates goes down (with its pairs) instead of living on until its scheduled re-authentication.
   */
  onBundleChange(change: { removed: readonly string[]; changed: readonly string[] }, nodeTrustDomain: string): void {
    if (change.removed.includes(nodeTrustDomain)) {
      for (const [node, peer] of this.peers) {
        if (peer.link) this.takeDown(node, peer, 'the trust bundle of node identities was unloaded');
        this.ensure(node);
      }
    } else if (change.changed.includes(nodeTrustDomain)) {
      for (const [node, peer] of this.peers) {
        if (!peer.link) continue;
        peer.revalidating = true;
        this.ensure(node);
      }
    }
  }

  status(): PeerStatus[] {
    return [...this.peers.entries()].map(([node, peer]) => ({
      node,
      address: peer.info.address,
      transport: this.options.transport.kind,
      state: this.link(node) ? 'up' : peer.state === 'up' ? 'pending' : peer.state,
      epoch: peer.link?.epoch ?? 0,
      ...(peer.link && { lastAuthenticatedAt: new Date(peer.link.authenticatedAt).toISOString(), expiresAt: new Date(peer.link.expiresAt).toISOString() }),
      ...(peer.lastError && { lastError: peer.lastError }),
    }));
  }

  /** Waits for node handshakes in flight (tests and shutdown). */
  async settled(): Promise<void> {
    const pending = [...this.peers.values()].flatMap((peer) => (peer.inFlight ? [peer.inFlight] : []));
    await Promise.allSettled(pending);
  }

  stop(): void {
    this.stopped = true;
    this.scheduler.stop();
  }

  private onDue(node: string): void {
    const peer = this.peers.get(node);
    if (!peer) return;
    // An expired link is down: its pairs go with it until a new handshake succeeds.
    if (peer.link && peer.link.expiresAt <= this.now()) this.takeDown(node, peer, 'the link expired', 'pending');
    this.ensure(node);
  }

  private ensure(node: string): void {
    const peer = this.peers.get(node);
    if (!peer || peer.inFlight || this.stopped) return;
    peer.inFlight = this.options
      .authenticate(peer.info)
      .then((result) => this.record(result))
      .catch((err: unknown) => this.fail(node, peer, (err as { failureClass?: string }).failureClass ?? 'protocol', err))
      .finally(() => delete peer.inFlight);
  }

  /** The link is gone: its pairs leave the datapath, its transport peer is removed. */
  private takeDown(node: string, peer: Peer, reason: string, state: PeerStatus['state'] = 'failed'): void {
    delete peer.link;
    delete peer.revalidating;
    peer.state = state;
    this.options.logger.warn({ node, reason }, 'node link down');
    this.options.onLinkChanged(node);
    void this.options.transport.remove(node).catch((err: unknown) => this.options.logger.warn({ node, err: (err as Error).message }, 'removing the transport peer failed'));
  }

  private fail(node: string, peer: Peer, failureClass: string, err: unknown): void {
    if (this.stopped || this.peers.get(node) !== peer) return;
    // After a trust-bundle change, a peer whose certificate no longer validates is not kept.
    if (peer.revalidating && peer.link && CERTIFICATE_FAILURES.has(failureClass)) this.takeDown(node, peer, `re-validation after a trust-bundle change failed: ${failureClass}`);
    peer.lastError = failureClass;
    if (!this.link(node)) peer.state = 'failed';
    peer.backoff ??= new Backoff(this.options.timing.failureBackoff);
    const delay = peer.backoff.next();
    this.options.logger.warn({ node, failureClass, err: (err as Error).message, retryInMs: delay }, 'node authentication failed');
    // A live link keeps its scheduled re-authentication unless the retry comes sooner.
    const due = this.scheduler.dueAt(node);
    if (due === undefined || due > this.now() + delay) this.scheduler.schedule(node, this.now() + delay);
  }
}

/** The claimed CIDRs that are not among the assigned ones (compared in canonical form). */
function unassignedCidrs(claimed: readonly string[], assigned: readonly string[]): string[] {
  const canonical = (text: string) => {
    try {
      return parseCidr(text, 'pod CIDR').text;
    } catch {
      return undefined;
    }
  };
  const allowed = new Set(assigned.map(canonical).filter((text) => text !== undefined));
  return claimed.filter((text) => {
    const cidr = canonical(text);
    return cidr === undefined || !allowed.has(cidr);
  });
}
