import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

/** Label values of meshauth_handshakes_total: kind is 'unknown' when a connection failed
 *  before ALPN chose one; reason is 'ok' on success, else the failure class. */
export type HandshakeKindLabel = 'pair' | 'node' | 'unknown';

/** The handshake layer's Prometheus metrics. Labels carry no identities or key material, so their
 *  cardinality is fixed: kind × role × result × reason. */
export class HandshakeMetrics {
  readonly handshakes: Counter<'kind' | 'role' | 'result' | 'reason'>;
  readonly duration: Histogram<'kind' | 'role'>;
  readonly inFlight: Gauge<'role'>;
  readonly rejectedConnections: Counter<'limit'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.handshakes = new Counter({
      name: 'meshauth_handshakes_total',
      help: 'Handshake attempts by kind, role, result (success|failure) and reason (ok or the failure class)',
      labelNames: ['kind', 'role', 'result', 'reason'],
      registers,
    });
    this.duration = new Histogram({
      name: 'meshauth_handshake_duration_seconds',
      help: 'Duration of successful handshakes, from TCP connect (initiator) or accept (responder) to the recorded result',
      labelNames: ['kind', 'role'],
      buckets: [0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 1],
      registers,
    });
    this.inFlight = new Gauge({
      name: 'meshauth_handshakes_in_flight',
      help: 'Handshakes in progress: open responder connections, and initiator attempts (initiator also counts those queued for a slot)',
      labelNames: ['role'],
      registers,
    });
    this.rejectedConnections = new Counter({
      name: 'meshauth_handshake_connections_rejected_total',
      help: 'Connections the responder refused because an admission limit was hit: before TLS, for a peer node (rate, per_source, max_connections) or a source that is no node\'s (non_node_rate, non_node_per_source, non_node_max_connections); during TLS, a handshake for a wanted SVID beyond what one peer may hold waiting (svid_wait_per_source)',
      labelNames: ['limit'],
      registers,
    });
  }

  failure(kind: HandshakeKindLabel, role: 'initiator' | 'responder', reason: string): void {
    this.handshakes.inc({ kind, role, result: 'failure', reason });
  }

  success(kind: HandshakeKindLabel, role: 'initiator' | 'responder', seconds: number): void {
    this.handshakes.inc({ kind, role, result: 'success', reason: 'ok' });
    this.duration.observe({ kind, role }, seconds);
  }
}
