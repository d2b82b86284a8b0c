// Why an X509-SVID was rejected. The reason names the exact rule (metrics label, logs, CLI); the
// failure class is the coarse kind a TLS peer is told about (bad_certificate, unknown CA,
// certificate expired) and what dashboards group by.

export type SvidFailureClass = 'bad_certificate' | 'untrusted' | 'expired';

const REASON_CLASSES = {
  // The shape of the chain and of each certificate.
  empty_chain: 'bad_certificate',
  chain_too_long: 'bad_certificate',
  malformed_certificate: 'bad_certificate',
  duplicate_extension: 'bad_certificate',
  unknown_critical_extension: 'bad_certificate',
  weak_signature_algorithm: 'bad_certificate',
  unsupported_signature_algorithm: 'bad_certificate',
  unsupported_key: 'bad_certificate',
  rsa_key_too_small: 'bad_certificate',
  // The leaf (X509-SVID §4 and §5).
  no_uri_san: 'bad_certificate',
  multiple_uri_sans: 'bad_certificate',
  invalid_spiffe_id: 'bad_certificate',
  leaf_no_path: 'bad_certificate',
  empty_subject_san_not_critical: 'bad_certificate',
  leaf_is_ca: 'bad_certificate',
  leaf_key_usage_missing: 'bad_certificate',
  leaf_key_usage_not_critical: 'bad_certificate',
  leaf_no_digital_signature: 'bad_certificate',
  leaf_key_cert_sign: 'bad_certificate',
  leaf_crl_sign: 'bad_certificate',
  eku_missing_server_or_client_auth: 'bad_certificate',
  unexpected_id: 'bad_certificate',
  // Signing certificates: intermediates and the trust anchor the path ends at.
  signing_cert_not_ca: 'bad_certificate',
  signing_cert_no_key_cert_sign: 'bad_certificate',
  signing_cert_id_has_path: 'bad_certificate',
  // RFC 5280 path validation against the claimed trust domain's bundle.
  no_bundle_for_trust_domain: 'untrusted',
  no_path_to_trust_anchor: 'untrusted',
  bad_signature: 'untrusted',
  path_length_exceeded: 'untrusted',
  name_constraints_violated: 'untrusted',
  name_constraints_unsupported: 'untrusted',
  // Validity periods (with the clock-skew allowance) of every certificate on the path.
  not_yet_valid: 'expired',
  expired: 'expired',
} as const satisfies Record<string, SvidFailureClass>;

export type SvidReason = keyof typeof REASON_CLASSES;

/** Every reason, e.g. to pre-register metric label values. */
export const SVID_REASONS = Object.keys(REASON_CLASSES) as readonly SvidReason[];

export function failureClassOf(reason: SvidReason): SvidFailureClass {
  return REASON_CLASSES[reason];
}

export class SvidError extends Error {
  readonly failureClass: SvidFailureClass;

  constructor(
    readonly reason: SvidReason,
    message: string,
    options?: { cause?: unknown },
  ) {
    // One line, always: the message is printed by the CLI and logged as a single field.
    super(message.replace(/\s*[\r\n]+\s*/g, ' '), options);
    this.name = 'SvidError';
    this.failureClass = REASON_CLASSES[reason];
  }
}
