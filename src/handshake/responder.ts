import { createServer as createNetServer, type AddressInfo, type Server as NetServer, type Socket } from 'node:net';
import { createServer as createTlsServer, TLSSocket, type SecureContext, type Server as TlsServer } from 'node:tls';
import type { ValidatedSvid } from '../identity/svid-validator.js';
import type { HandshakeKindLabel } from './handshake-metrics.js';
import { buildAuthResult, exportSecrets } from './auth-result.js';
import { HandshakeFailure, classifySocketError } from './failure.js';
import { acceptedPeerFrame, checkedOwnFrame, decodeVerdict, encodeVerdict, readFrame } from './frames.js';
import { TLS_BASE_OPTIONS, type LocalIdentity } from './local-identities.js';
import { ALPN, kindOfAlpn, type HandshakeKind } from './protocol.js';
import { SourceAdmission, normalizeAddress, sourceKey, type AdmissionDecision, type AdmissionSource } from './source-admission.js';
import { TokenBuckets } from './token-buckets.js';
import type { AuthResult, AuthorizeRequest } from './types.js';
import type { HandshakeRoleOptions } from './role-options.js';

export interface ResponderOptions extends HandshakeRoleOptions {
  /** The node a source address belongs to (node InternalIP → node name); undefined → refused. */
  resolveNode: (address: string) => string | undefined;
  /** May this remote identity authenticate to this local identity? Fails closed if it throws; a
   *  thrown HandshakeFailure refuses with its own class (a 'refused' is retried by the initiator). */
  authorize: (request: AuthorizeRequest) => boolean;
}

interface Connection {
  readonly raw: Socket;
  readonly source: string;
  /** The node or address its admission was charged to. */
  readonly admitted: AdmissionSource;
  readonly acceptedAt: number;
  readonly deadline: NodeJS.Timeout;
  kind: HandshakeKindLabel;
  secured: boolean;
  settled: boolean;
}

// How often connections still in the TLS handshake are checked against the byte cap.
const BYTE_CAP_SWEEP_MS = 100;
/**
 * How long a handshake for an identity this node wants but is still being issued waits for its
 * SVID (under the handshake timeout, which still bounds the whole handshake).
 */
const WANTED_IDENTITY_WAIT_MS = 2000;
/** Handshakes one peer may hold waiting for wanted SVIDs; beyond that they are refused at once,
 *  so that no peer can take the waiting room (LocalIdentities bounds it for all) from the others. */
const WANTED_IDENTITY_WAITERS_PER_PEER = 16;

/** The rejection counter's label for each admission refusal, by kind of source. */
const REJECTION_LABEL: Record<AdmissionSource['kind'], Record<Exclude<AdmissionDecision, 'admit'>, string>> = {
  peer: { rate: 'rate', per_source: 'per_source', max_open: 'max_connections' },
  other: { rate: 'non_node_rate', per_source: 'non_node_per_source', max_open: 'non_node_max_connections' },
};

/**
 * The responder: one TCP listener for both kinds of handshake. Connections are admitted per
 * source address before any TLS work, handed to a TLS server that presents the SVID the SNI
 * names, and then run the post-handshake exchange of docs/protocol.md. Every admitted connection
 * ends in exactly one outcome (metrics, logs, and on success the sink) and is closed by the
 * deadline at the latest.
 */
export class HandshakeResponder {
  private readonly listener: NetServer;
  private readonly tls: TlsServer;
  private readonly admission: SourceAdmission;
  private readonly connections = new Map<string, Connection>();
  /** Node handshakes accepted, per peer node: each one re-keys the transport to it. */
  private readonly nodeHandshakes = new TokenBuckets(16_384);
  /** Handshakes held for a wanted SVID, by admission key. */
  private readonly waitingBySource = new Map<string, number>();
  private readonly now: () => Date;
  private sweepTimer?: NodeJS.Timeout;

  constructor(private readonly options: ResponderOptions) {
    const { settings } = options;
    this.now = options.now ?? (() => new Date());
    this.admission = new SourceAdmission({
      peers: {
        ratePerSecond: settings.rateLimit.perSecond,
        burst: settings.rateLimit.burst,
        maxOpenPerSource: settings.rateLimit.maxOpenPerSource,
        maxOpen: settings.maxConnections,
      },
      others: {
        ratePerSecond: settings.nonNodeSources.perSecond,
        burst: settings.nonNodeSources.burst,
        maxOpenPerSource: settings.nonNodeSources.maxOpenPerSource,
        maxOpen: settings.nonNodeSources.maxOpen,
      },
    });
    const answerSni = (socket: unknown, servername: string, answer: (context: SecureContext | undefined) => void): void => this.answerSni(socket, servername, answer);
    // Never listens itself: it gets the connections the admission step lets through.
    this.tls = createTlsServer({
      ...TLS_BASE_OPTIONS,
      requestCert: true,
      // Chains are checked by validateX509Svid after the handshake; OpenSSL only proves key possession.
      rejectUnauthorized: false,
      ALPNProtocols: [ALPN.pair, ALPN.node],
      // No context for an unknown name: the default context has no certificate, so OpenSSL aborts
      // with a handshake_failure alert, which initiators read as unknown_identity. A name this
      // node wants but holds no SVID for yet waits a moment for it (see answerSni). Node calls
      // this with the TLS socket as `this`, which names the connection.
      SNICallback(this: unknown, servername, callback) {
        answerSni(this, servername, (context) => callback(null, context));
      },
      handshakeTimeout: settings.handshakeTimeout,
    });
    this.tls.on('secureConnection', (socket) => this.onSecure(socket));
    this.tls.on('tlsClientError', (err, socket) => this.onTlsError(err, socket));
    this.listener = createNetServer({ noDelay: true }, (raw) => this.onConnection(raw));
    // A backstop only: admission keeps each class within its own budget, so this is never hit.
    this.listener.maxConnections = settings.maxConnections + settings.nonNodeSources.maxOpen;
    this.listener.on('drop', () => options.metrics?.rejectedConnections.inc({ limit: 'max_connections' }));
  }

  /** Starts listening on settings.listenAddress:settings.port (port 0 picks a free one). */
  async listen(): Promise<AddressInfo> {
    await new Promise<void>((resolve, reject) => {
      this.listener.once('error', reject);
      this.listener.listen(this.options.settings.port, this.options.settings.listenAddress, () => {
        this.listener.off('error', reject);
        resolve();
      });
    });
    this.listener.on('error', (err) => this.options.logger.error({ err }, 'handshake listener error'));
    this.sweepTimer = setInterval(() => this.enforceByteCap(), BYTE_CAP_SWEEP_MS);
    this.sweepTimer.unref();
    const address = this.listener.address() as AddressInfo;
    this.options.logger.info({ address: address.address, port: address.port }, 'handshake responder listening');
    return address;
  }

  /** Stops listening, closes every open connection and resolves once they are all closed. */
  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
    // The callback runs once every connection is gone (with an error if it never listened).
    const closed = new Promise<void>((resolve) => this.listener.close(() => resolve()));
    for (const connection of this.connections.values()) connection.raw.destroy();
    await closed;
  }

  /**
   * The context for an SNI. One this node wants but holds no SVID for yet is waited for, by a
   * peer's handshake only (a source that is no node's can only be refused) and by at most
   * WANTED_IDENTITY_WAITERS_PER_PEER of one peer's at a time.
   */
  private answerSni(socket: unknown, servername: string, answer: (context: SecureContext | undefined) => void): void {
    const { identities, logger, metrics } = this.options;
    const held = identities.contextForSni(servername);
    if (held) return answer(held);
    const connection = socket instanceof TLSSocket ? this.connections.get(connectionKey(socket)) : undefined;
    if (connection?.admitted.kind !== 'peer') return answer(undefined);
    const key = sourceKey(connection.admitted);
    const waiting = this.waitingBySource.get(key) ?? 0;
    if (waiting >= WANTED_IDENTITY_WAITERS_PER_PEER) {
      metrics?.rejectedConnections.inc({ limit: 'svid_wait_per_source' });
      return answer(undefined);
    }
    this.waitingBySource.set(key, waiting + 1);
    identities
      .awaitContextForSni(servername, WANTED_IDENTITY_WAIT_MS)
      .then(answer)
      .catch((err: unknown) => logger.warn({ err: (err as Error).message }, 'answering a held handshake failed'))
      .finally(() => {
        const left = (this.waitingBySource.get(key) ?? 1) - 1;
        if (left > 0) this.waitingBySource.set(key, left);
        else this.waitingBySource.delete(key);
      });
  }

  private onConnection(raw: Socket): void {
    const source = normalizeAddress(raw.remoteAddress);
    // The node is resolved at accept: peers and other sources draw on separate budgets.
    const node = this.options.resolveNode(source);
    const admitted: AdmissionSource = node === undefined ? { kind: 'other', address: source } : { kind: 'peer', node };
    const decision = this.admission.admit(admitted);
    if (decision !== 'admit') {
      this.options.metrics?.rejectedConnections.inc({ limit: REJECTION_LABEL[admitted.kind][decision] });
      raw.destroy();
      return;
    }
    const key = connectionKey(raw);
    const connection: Connection = {
      raw,
      source,
      admitted,
      acceptedAt: performance.now(),
      deadline: setTimeout(() => {
        this.settle(connection, new HandshakeFailure('timeout', `no outcome within ${this.options.settings.handshakeTimeout} ms`));
        raw.destroy();
      }, this.options.settings.handshakeTimeout),
      kind: 'unknown',
      secured: false,
      settled: false,
    };
    this.connections.set(key, connection);
    this.options.metrics?.inFlight.inc({ role: 'responder' });
    // Errors surface on the TLS socket; the raw one only needs a listener so none is unhandled.
    raw.on('error', () => {});
    raw.once('close', () => {
      clearTimeout(connection.deadline);
      this.connections.delete(key);
      this.admission.release(admitted);
      this.options.metrics?.inFlight.dec({ role: 'responder' });
      if (!connection.settled) this.settle(connection, new HandshakeFailure(connection.secured ? 'protocol' : 'refused', 'connection closed before an outcome'));
    });
    this.tls.emit('connection', raw);
  }

  private onTlsError(err: Error, socket: TLSSocket): void {
    const connection = this.connections.get(connectionKey(socket));
    if (!connection) return;
    const failure = classifySocketError(err, false);
    // Our only certificate-less context is the default one, served for SNI names we hold no SVID for.
    const unknownName = (err as NodeJS.ErrnoException).code === 'ERR_SSL_NO_SUITABLE_SIGNATURE_ALGORITHM';
    this.settle(connection, unknownName ? new HandshakeFailure('unknown_identity', 'no local identity for the requested SNI', { cause: err }) : failure);
  }

  private onSecure(socket: TLSSocket): void {
    const connection = this.connections.get(connectionKey(socket));
    socket.on('error', () => {}); // read through readFrame and the close handler
    if (!connection || connection.settled) {
      socket.destroy();
      return;
    }
    connection.secured = true;
    this.respond(connection, socket).then(
      (result) => {
        this.settle(connection, result);
        try {
          this.options.onAuthenticated(result);
        } catch (err) {
          this.options.logger.error({ err }, 'authentication sink failed');
        }
      },
      (err: unknown) => {
        const failure = err instanceof HandshakeFailure ? err : new HandshakeFailure('protocol', (err as Error).message, { cause: err });
        // Tell the initiator why, unless it is the one who refused.
        if (!failure.peerReported && socket.writable) socket.end(encodeVerdict({ verdict: 'reject', reason: failure.failureClass }));
        else socket.destroy();
        this.settle(connection, failure);
      },
    );
  }

  /** Checks the initiator, reads its verdict, answers with ours. Resolves with this side's result. */
  private async respond(connection: Connection, socket: TLSSocket): Promise<AuthResult> {
    const kind = kindOfAlpn(socket.alpnProtocol);
    if (!kind) throw new HandshakeFailure('protocol', 'no meshauth ALPN protocol was negotiated');
    connection.kind = kind;
    if (socket.isSessionReused()) throw new HandshakeFailure('protocol', 'resumed TLS session');
    if (connection.raw.bytesRead > this.options.settings.maxPreHandshakeBytes) throw this.byteCapFailure();
    const local = this.presentedIdentity(socket, kind, connection.acceptedAt);
    const peer = this.options.validator.validatePeer(socket, 'initiator');
    const remoteNode = this.authorizePeer(kind, local, peer, connection.source);
    if (kind === 'node') this.limitNodeHandshakes(remoteNode);
    const secrets = exportSecrets(socket, kind, 'responder');

    const peerFrame = acceptedPeerFrame(kind, decodeVerdict(await readFrame(socket)), remoteNode, 'initiator');
    const ownFrame = kind === 'node' ? checkedOwnFrame(() => this.options.localNodeFrame(remoteNode), this.options.nodeIds.nodeNameOf(local.id)) : undefined;
    const result = buildAuthResult({
      kind,
      role: 'responder',
      local,
      peer,
      remoteNode,
      secrets,
      ...(peerFrame && { peerFrame }),
      ...(ownFrame && { ownFrame }),
      now: this.now(),
      maxTtlMs: this.options.settings.maxTtl,
    });
    socket.end(encodeVerdict({ verdict: 'accept', ...(ownFrame && { node: ownFrame }) }));
    return result;
  }

  /** The local identity whose certificate this handshake presented, if it may serve this kind. */
  private presentedIdentity(socket: TLSSocket, kind: HandshakeKind, acceptedAt: number): LocalIdentity {
    const local = this.options.identities.presentedFor(socket, acceptedAt);
    if (!local) throw new HandshakeFailure('unknown_identity', 'the presented local identity is no longer held');
    if (local.isNode !== (kind === 'node')) {
      throw new HandshakeFailure('unknown_identity', `${local.id.toString()} is ${local.isNode ? 'the node identity' : 'a workload identity'}, not usable for ${kind} handshakes`);
    }
    return local;
  }

  /** The initiator's node, once its source address, certificate and the policy agree. */
  private authorizePeer(kind: HandshakeKind, local: LocalIdentity, peer: ValidatedSvid, source: string): string {
    const remoteNode = this.options.resolveNode(source);
    if (remoteNode === undefined) throw new HandshakeFailure('unauthorized', `source address ${source} belongs to no known node`);
    if (kind === 'node') {
      const certNode = this.options.nodeIds.nodeNameOf(peer.id);
      if (certNode !== remoteNode) {
        throw new HandshakeFailure('unauthorized', `${peer.id.toString()} is not the node identity of ${remoteNode} (source ${source})`);
      }
    }
    let allowed = false;
    try {
      allowed = this.options.authorize({ kind, remoteId: peer.id, localId: local.id, remoteNode });
    } catch (err) {
      // The hook's own refusal, with the class it chose (e.g. 'refused': try again shortly).
      if (err instanceof HandshakeFailure) throw err;
      this.options.logger.error({ err }, 'authorization hook failed; refusing');
    }
    if (!allowed) throw new HandshakeFailure('unauthorized', `${peer.id.toString()} may not authenticate to ${local.id.toString()}`);
    return remoteNode;
  }

  /** Refuses (retryably) a peer's node handshake beyond its rate, before it re-keys anything. */
  private limitNodeHandshakes(remoteNode: string): void {
    const { perMinute, burst } = this.options.settings.nodeHandshakes;
    if (this.nodeHandshakes.take(remoteNode, { ratePerSecond: perMinute / 60, burst })) return;
    this.options.metrics?.rejectedConnections.inc({ limit: 'node_handshake_rate' });
    throw new HandshakeFailure('refused', `node ${remoteNode} re-authenticated its link more than ${perMinute} times a minute`);
  }

  private enforceByteCap(): void {
    for (const connection of this.connections.values()) {
      if (connection.secured || connection.settled) continue;
      if (connection.raw.bytesRead > this.options.settings.maxPreHandshakeBytes) {
        this.settle(connection, this.byteCapFailure());
        connection.raw.destroy();
      }
    }
  }

  private byteCapFailure(): HandshakeFailure {
    return new HandshakeFailure('protocol', `more than ${this.options.settings.maxPreHandshakeBytes} bytes before the handshake completed`);
  }

  /** Records the one outcome of a connection; later outcomes of the same connection are ignored. */
  private settle(connection: Connection, outcome: AuthResult | HandshakeFailure): void {
    if (connection.settled) return;
    connection.settled = true;
    const { metrics, logger } = this.options;
    if (outcome instanceof HandshakeFailure) {
      metrics?.failure(connection.kind, 'responder', outcome.failureClass);
      // Failures before TLS completes are what scanners and floods produce: keep them out of info logs.
      const level = connection.secured ? 'info' : 'debug';
      logger[level]({ kind: connection.kind, source: connection.source, failure: outcome.failureClass, detail: outcome.detail, peerReported: outcome.peerReported }, 'handshake refused');
      return;
    }
    metrics?.success(outcome.kind, 'responder', (performance.now() - connection.acceptedAt) / 1000);
    logger.debug(
      { kind: outcome.kind, localId: outcome.localId.toString(), remoteId: outcome.remoteId.toString(), remoteNode: outcome.remoteNode, expiresAt: outcome.expiresAt.toISOString() },
      'handshake authenticated',
    );
  }
}

/** The TCP 4-tuple: the same for the raw socket and the TLS socket wrapping it. */
function connectionKey(socket: Socket): string {
  return `${socket.remoteAddress}|${socket.remotePort}|${socket.localAddress}|${socket.localPort}`;
}
