import { connect, type TLSSocket } from 'node:tls';
import type { SpiffeId } from '../identity/spiffe-id.js';
import type { ValidatedSvid } from '../identity/svid-validator.js';
import { Backoff, sleep } from '../util/backoff.js';
import { buildAuthResult, exportSecrets, type HandshakeSecrets } from './auth-result.js';
import { HandshakeFailure, classifySocketError } from './failure.js';
import { acceptedPeerFrame, checkedOwnFrame, decodeVerdict, encodeVerdict, readFrame, type NodeFrame } from './frames.js';
import { TLS_BASE_OPTIONS, type LocalIdentity } from './local-identities.js';
import { ALPN, DEFAULT_PORT, RETRYABLE_FAILURES, kindOfAlpn, type HandshakeKind } from './protocol.js';
import { Semaphore } from './semaphore.js';
import { sniForIdentity } from './sni.js';
import type { AuthResult, NodeAuthResult, PairAuthResult, PeerAddress } from './types.js';
import type { HandshakeRoleOptions } from './role-options.js';

export type InitiatorOptions = HandshakeRoleOptions;

export interface PairRequest {
  /** The local workload identity to present. */
  localId: SpiffeId;
  /** The exact identity the responder must present. */
  remoteId: SpiffeId;
  /** The node the target runs on (recorded in the result). */
  remoteNode: string;
  address: PeerAddress;
}

export interface NodeRequest {
  remoteNode: string;
  address: PeerAddress;
}

interface Plan {
  kind: HandshakeKind;
  localId: SpiffeId;
  remoteId: SpiffeId;
  remoteNode: string;
  host: string;
  port: number;
}

/**
 * The initiator: runs handshakes to peer agents on behalf of local identities. Concurrent
 * requests for the same pair and address share one handshake; retryable failures are retried
 * with backoff; at most maxConcurrentInitiations handshakes run at once. Every attempt is
 * counted; each successful handshake reaches the sink once, however many callers awaited it.
 */
export class HandshakeInitiator {
  private readonly inFlight = new Map<string, Promise<AuthResult>>();
  private readonly slots: Semaphore;
  private readonly sockets = new Set<TLSSocket>();
  private readonly stopping = new AbortController();
  private readonly now: () => Date;

  constructor(private readonly options: InitiatorOptions) {
    this.slots = new Semaphore(options.settings.maxConcurrentInitiations);
    this.now = options.now ?? (() => new Date());
  }

  authenticatePair(request: PairRequest): Promise<PairAuthResult> {
    const plan = { kind: 'pair' as const, localId: request.localId, remoteId: request.remoteId, remoteNode: request.remoteNode, ...endpoint(request.address) };
    return this.singleflight(plan) as Promise<PairAuthResult>;
  }

  authenticateNode(request: NodeRequest): Promise<NodeAuthResult> {
    const localId = this.options.identities.nodeId;
    const remoteId = this.options.nodeIds.idFor(request.remoteNode);
    const plan = { kind: 'node' as const, localId, remoteId, remoteNode: request.remoteNode, ...endpoint(request.address) };
    return this.singleflight(plan) as Promise<NodeAuthResult>;
  }

  /** Aborts retries and open handshakes; pending calls reject. */
  close(): void {
    this.stopping.abort();
    for (const socket of this.sockets) socket.destroy();
  }

  private singleflight(plan: Plan): Promise<AuthResult> {
    const key = [plan.kind, plan.localId.toString(), plan.remoteId.toString(), plan.host, plan.port].join('|');
    const existing = this.inFlight.get(key);
    if (existing) return existing;
    this.options.metrics?.inFlight.inc({ role: 'initiator' });
    const run = this.withRetries(plan).finally(() => {
      this.inFlight.delete(key);
      this.options.metrics?.inFlight.dec({ role: 'initiator' });
    });
    this.inFlight.set(key, run);
    return run;
  }

  private async withRetries(plan: Plan): Promise<AuthResult> {
    const { retry } = this.options.settings;
    const backoff = new Backoff({ initialMs: retry.initialBackoff, maxMs: retry.maxBackoff });
    for (let attempt = 1; ; attempt++) {
      if (this.stopping.signal.aborted) throw new HandshakeFailure('refused', 'the initiator is stopping');
      try {
        const { result, seconds } = await this.slots.run(async () => {
          const startedAt = performance.now();
          const result = await this.attempt(plan);
          return { result, seconds: (performance.now() - startedAt) / 1000 };
        });
        this.options.metrics?.success(plan.kind, 'initiator', seconds);
        this.deliver(result);
        return result;
      } catch (err) {
        const failure = classifySocketError(err, true);
        this.options.metrics?.failure(plan.kind, 'initiator', failure.failureClass);
        const retrying = attempt < retry.attempts && RETRYABLE_FAILURES.has(failure.failureClass) && !this.stopping.signal.aborted;
        this.options.logger.info(
          { kind: plan.kind, localId: plan.localId.toString(), remoteId: plan.remoteId.toString(), remoteNode: plan.remoteNode, peer: `${plan.host}:${plan.port}`, failure: failure.failureClass, detail: failure.detail, peerReported: failure.peerReported, attempt, retrying },
          'handshake failed',
        );
        if (!retrying) throw failure;
        await sleep(backoff.next(), this.stopping.signal);
      }
    }
  }

  private deliver(result: AuthResult): void {
    try {
      this.options.onAuthenticated(result);
    } catch (err) {
      this.options.logger.error({ err }, 'authentication sink failed');
    }
  }

  /** One connection: TCP connect, TLS handshake, verdict exchange. */
  private attempt(plan: Plan): Promise<AuthResult> {
    // A call queued for a slot while the initiator was closed must not connect any more.
    if (this.stopping.signal.aborted) return Promise.reject(new HandshakeFailure('refused', 'the initiator is stopping'));
    const local = this.options.identities.get(plan.localId);
    if (!local) return Promise.reject(new HandshakeFailure('unknown_identity', `no SVID held for the local identity ${plan.localId.toString()}`));
    const { connectTimeout, handshakeTimeout } = this.options.settings;
    return new Promise<AuthResult>((resolve, reject) => {
      let secured = false;
      let settled = false;
      const socket = connect({
        ...TLS_BASE_OPTIONS,
        host: plan.host,
        port: plan.port,
        ...(this.options.settings.sourceAddress !== undefined && { localAddress: this.options.settings.sourceAddress }),
        servername: sniForIdentity(plan.remoteId),
        ALPNProtocols: [ALPN[plan.kind]],
        secureContext: local.context,
        // The responder's chain is checked by validateX509Svid against the exact expected ID.
        rejectUnauthorized: false,
      });
      socket.setNoDelay(true);
      this.sockets.add(socket);
      const settle = (): boolean => {
        if (settled) return false;
        settled = true;
        clearTimeout(timer);
        return true;
      };
      const fail = (err: unknown): void => {
        if (!settle()) return;
        socket.destroy();
        reject(classifySocketError(err, secured));
      };
      let timer = setTimeout(() => fail(new HandshakeFailure('timeout', `TCP connect not done after ${connectTimeout} ms`)), connectTimeout);
      socket.once('connect', () => {
        clearTimeout(timer);
        timer = setTimeout(() => fail(new HandshakeFailure('timeout', `handshake not done after ${handshakeTimeout} ms`)), handshakeTimeout);
      });
      socket.on('error', fail);
      socket.once('close', () => {
        this.sockets.delete(socket);
        if (!settled) fail(new HandshakeFailure(secured ? 'protocol' : 'refused', 'connection closed before an outcome'));
      });
      socket.once('secureConnect', () => {
        secured = true;
        this.exchange(socket, plan, local).then((result) => {
          if (settle()) resolve(result);
        }, fail);
      });
    });
  }

  /** After the TLS handshake: validate the responder, send our verdict, read theirs. */
  private async exchange(socket: TLSSocket, plan: Plan, local: LocalIdentity): Promise<AuthResult> {
    if (kindOfAlpn(socket.alpnProtocol) !== plan.kind) throw new HandshakeFailure('protocol', `responder did not select ${ALPN[plan.kind]}`);
    if (socket.isSessionReused()) throw new HandshakeFailure('protocol', 'resumed TLS session');
    let peer: ValidatedSvid;
    let ownFrame: NodeFrame | undefined;
    let secrets: HandshakeSecrets;
    try {
      peer = this.options.validator.validatePeer(socket, 'responder', plan.remoteId);
      ownFrame = plan.kind === 'node' ? checkedOwnFrame(() => this.options.localNodeFrame(plan.remoteNode), this.options.nodeIds.nodeNameOf(local.id)) : undefined;
      secrets = exportSecrets(socket, plan.kind, 'initiator');
    } catch (err) {
      // Tell the responder why, so that it records nothing and counts the right class.
      const failure = err instanceof HandshakeFailure ? err : new HandshakeFailure('protocol', (err as Error).message, { cause: err });
      socket.end(encodeVerdict({ verdict: 'reject', reason: failure.failureClass }));
      throw failure;
    }
    socket.write(encodeVerdict({ verdict: 'accept', ...(ownFrame && { node: ownFrame }) }));
    const peerFrame = acceptedPeerFrame(plan.kind, decodeVerdict(await readFrame(socket)), plan.remoteNode, 'responder');
    socket.end();
    return buildAuthResult({
      kind: plan.kind,
      role: 'initiator',
      local,
      peer,
      remoteNode: plan.remoteNode,
      secrets,
      ...(peerFrame && { peerFrame }),
      ...(ownFrame && { ownFrame }),
      now: this.now(),
      maxTtlMs: this.options.settings.maxTtl,
    });
  }
}

function endpoint(address: PeerAddress): { host: string; port: number } {
  return { host: address.host, port: address.port ?? DEFAULT_PORT };
}
