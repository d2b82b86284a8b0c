import { Counter, Gauge, type Registry } from 'prom-client';

/** The identity layer's Prometheus metrics. No label ever carries key material. */
export class IdentityMetrics {
  readonly providerErrors: Counter<'provider' | 'kind'>;
  readonly svidRejected: Counter<'provider' | 'reason'>;
  readonly bundleRejected: Counter<'provider'>;
  readonly svidExpiry: Gauge<'spiffe_id'>;
  readonly trustDomains: Gauge;

  constructor(registry: Registry) {
    const registers = [registry];
    this.providerErrors = new Counter({
      name: 'meshauth_identity_provider_errors_total',
      help: 'Failures reported by the identity provider, by kind',
      labelNames: ['provider', 'kind'],
      registers,
    });
    this.svidRejected = new Counter({
      name: 'meshauth_svid_rejected_total',
      help: 'SVIDs from the provider that failed validation and were not used, by reason',
      labelNames: ['provider', 'reason'],
      registers,
    });
    this.bundleRejected = new Counter({
      name: 'meshauth_trust_bundle_rejected_total',
      help: 'Trust bundle updates rejected (the last good bundle was kept)',
      labelNames: ['provider'],
      registers,
    });
    this.svidExpiry = new Gauge({
      name: 'meshauth_svid_expiry_timestamp_seconds',
      help: 'notAfter of each SVID held, as a Unix timestamp',
      labelNames: ['spiffe_id'],
      registers,
    });
    this.trustDomains = new Gauge({
      name: 'meshauth_trust_domains',
      help: 'Trust domains with a loaded trust bundle',
      registers,
    });
  }
}
