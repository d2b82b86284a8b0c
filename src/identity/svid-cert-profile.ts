// The per-certificate facts the X509-SVID validator needs, parsed once and cached by DER
// fingerprint. Parsing is the expensive part of validation (~100 µs in Node, ~900 µs in
// @peculiar/x509 per certificate) while the same intermediates, anchors and peer leaves come
// back in every handshake, so a validation of a known chain costs only map look-ups and
// comparisons. Everything cached here is a pure function of the certificate bytes; facts that
// depend on the time or on the trust bundles are checked by the validator on each call.
import { X509Certificate, createHash, type KeyObject } from 'node:crypto';
import { LRUCache } from 'lru-cache';
// @peculiar/x509 has no class for the name-constraints extension; its own ASN.1 schema
// packages (installed as its dependencies) decode it.
import { AsnConvert } from '@peculiar/asn1-schema';
import { NameConstraints, type GeneralName, type GeneralSubtrees } from '@peculiar/asn1-x509';
import { px509 } from './x509.js';
import { SpiffeId, SpiffeIdError } from './spiffe-id.js';
import type { SvidReason } from './svid-errors.js';

export interface CertProblem {
  readonly reason: SvidReason;
  /** Names the broken rule; the validator prefixes which certificate it is about. */
  readonly message: string;
}

/** URI host and DNS subtrees of a name-constraints extension; an empty list constrains nothing. */
export interface NameConstraintSet {
  readonly permittedUriHosts: readonly string[];
  readonly excludedUriHosts: readonly string[];
  readonly permittedDns: readonly string[];
  readonly excludedDns: readonly string[];
}

const OID = {
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectAltName: '2.5.29.17',
  nameConstraints: '2.5.29.30',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
} as const;

/** Extensions this validator processes; any other extension marked critical is rejected (RFC 5280 §4.2). */
const UNDERSTOOD_EXTENSIONS = new Set<string>([
  OID.basicConstraints,
  OID.keyUsage,
  OID.extKeyUsage,
  OID.subjectAltName,
  OID.nameConstraints,
  OID.subjectKeyIdentifier,
  OID.authorityKeyIdentifier,
]);

const STRONG_HASHES = new Set(['SHA-256', 'SHA-384', 'SHA-512']);
const HASHED_SIGNATURES = new Set(['ECDSA', 'RSASSA-PKCS1-v1_5', 'RSA-PSS']);
// md2/md4/md5WithRSAEncryption: @peculiar/x509 reports unknown algorithms by OID.
const WEAK_SIGNATURE_OIDS = new Set(['1.2.840.113549.1.1.2', '1.2.840.113549.1.1.3', '1.2.840.113549.1.1.4']);
// P-521 is left out on purpose: SPIRE, Vault and the dev CA issue P-256/P-384, and a short
// allowlist keeps the handshake's verification cost predictable. RSA above 8192 bits is refused
// for the same reason (each verification would cost tens of milliseconds).
const ACCEPTED_CURVES = new Set(['prime256v1', 'secp384r1']);
const MIN_RSA_BITS = 2048;
const MAX_RSA_BITS = 8192;

const CACHE_ENTRIES = 4096;

export class CertProfile {
  /** Node's subject/issuer in its one-line-per-RDN form: a cheap pre-filter for name chaining. */
  readonly subject: string;
  readonly issuer: string;
  /** RFC 5280 self-issued: subject and issuer are the same name (does not count toward path length). */
  readonly selfIssued: boolean;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly uris: readonly string[];
  readonly dnsNames: readonly string[];
  readonly pathLength: number | undefined;
  readonly nameConstraints: NameConstraintSet | undefined;
  /** The leaf rules of X509-SVID: the SPIFFE ID when they hold, else the first broken rule. */
  readonly asLeaf: { id: SpiffeId; problem?: undefined } | { id?: undefined; problem: CertProblem };
  /** The signing-certificate rules (intermediates and trust anchors); undefined when they hold. */
  readonly asIssuer: CertProblem | undefined;
  /** Problem with the algorithm this certificate is signed with (not judged for trust anchors,
   *  whose own signature is not part of path validation). */
  readonly signatureProblem: CertProblem | undefined;
  /** Issuers whose signature over this certificate verified. Only successes are remembered:
   *  each needs a genuine CA signature, so a peer presenting junk issuers cannot grow it. */
  private readonly verifiedIssuers = new WeakSet<CertProfile>();

  constructor(readonly x509: X509Certificate) {
    const parsed = new px509.X509Certificate(x509.raw);
    this.subject = x509.subject ?? '';
    this.issuer = x509.issuer ?? '';
    this.selfIssued = this.subject !== '' && this.subject === this.issuer;
    this.notBefore = parsed.notBefore;
    this.notAfter = parsed.notAfter;

    const extensions = readExtensions(parsed);
    const san = extensions.san;
    this.uris = san?.names.items.filter((name) => name.type === 'url').map((name) => name.value) ?? [];
    this.dnsNames = san?.names.items.filter((name) => name.type === 'dns').map((name) => name.value) ?? [];
    this.pathLength = extensions.basicConstraints?.pathLength;
    const nameConstraints = extensions.nameConstraints && readNameConstraints(extensions.nameConstraints);
    this.nameConstraints = nameConstraints?.set;

    const structural = extensions.problem ?? keyProblem(x509.publicKey);
    this.signatureProblem = signatureAlgorithmProblem(parsed.signatureAlgorithm);
    this.asLeaf = structural ? { problem: structural } : leafRules(parsed, extensions, this.uris);
    this.asIssuer = structural ?? issuerRules(extensions, this.uris, nameConstraints);
  }

  /** Whether issuer's key verifies this certificate's signature; successes are cached. */
  isSignedBy(issuer: CertProfile): boolean {
    if (this.verifiedIssuers.has(issuer)) return true;
    let verified: boolean;
    try {
      verified = this.x509.verify(issuer.x509.publicKey);
    } catch {
      verified = false;
    }
    if (verified) this.verifiedIssuers.add(issuer);
    return verified;
  }
}

const profilesByDer = new LRUCache<string, CertProfile>({ max: CACHE_ENTRIES });
// Long-lived X509Certificate objects (trust bundles) skip even the fingerprint.
const profilesByObject = new WeakMap<X509Certificate, CertProfile>();

/** The cached profile of a DER certificate or a parsed one; throws Error when it does not parse. */
export function certProfile(input: Buffer | X509Certificate): CertProfile {
  if (input instanceof X509Certificate) {
    const known = profilesByObject.get(input);
    if (known) return known;
    const profile = profileForDer(input.raw, () => input);
    profilesByObject.set(input, profile);
    return profile;
  }
  return profileForDer(input, () => {
    const x509 = new X509Certificate(input);
    // Node also accepts PEM and ignores bytes after the certificate; the contract is exactly one DER certificate.
    if (!x509.raw.equals(input)) throw new Error('input is not exactly one DER certificate');
    return x509;
  });
}

function profileForDer(der: Buffer, parse: () => X509Certificate): CertProfile {
  const key = createHash('sha256').update(der).digest('base64');
  let profile = profilesByDer.get(key);
  if (!profile) {
    profile = new CertProfile(parse());
    profilesByDer.set(key, profile);
  }
  return profile;
}

interface KnownExtensions {
  basicConstraints?: px509.BasicConstraintsExtension;
  keyUsage?: px509.KeyUsagesExtension;
  extKeyUsage?: px509.ExtendedKeyUsageExtension;
  san?: px509.SubjectAlternativeNameExtension;
  nameConstraints?: px509.Extension;
  /** Duplicate or unknown critical extension. */
  problem?: CertProblem;
}

function readExtensions(cert: px509.X509Certificate): KnownExtensions {
  const found: KnownExtensions = {};
  const seen = new Set<string>();
  for (const ext of cert.extensions) {
    if (seen.has(ext.type)) {
      // RFC 5280 §4.2: at most one instance of each extension. Two SANs could mean different
      // things to different parsers, so this is never guessed at.
      found.problem ??= { reason: 'duplicate_extension', message: `extension ${ext.type} appears more than once` };
    }
    seen.add(ext.type);
    if (ext.critical && !UNDERSTOOD_EXTENSIONS.has(ext.type)) {
      found.problem ??= { reason: 'unknown_critical_extension', message: `unknown critical extension ${ext.type}` };
    }
    if (ext instanceof px509.BasicConstraintsExtension) found.basicConstraints = ext;
    else if (ext instanceof px509.KeyUsagesExtension) found.keyUsage = ext;
    else if (ext instanceof px509.ExtendedKeyUsageExtension) found.extKeyUsage = ext;
    else if (ext instanceof px509.SubjectAlternativeNameExtension) found.san = ext;
    else if (ext.type === OID.nameConstraints) found.nameConstraints = ext;
  }
  return found;
}

function keyProblem(key: KeyObject): CertProblem | undefined {
  const type = key.asymmetricKeyType;
  if (type === 'ed25519') return undefined;
  if (type === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve ?? 'unknown';
    if (ACCEPTED_CURVES.has(curve)) return undefined;
    return { reason: 'unsupported_key', message: `EC key on curve ${curve} is not accepted (P-256 and P-384 only)` };
  }
  if (type === 'rsa' || type === 'rsa-pss') {
    const bits = key.asymmetricKeyDetails?.modulusLength ?? 0;
    if (bits < MIN_RSA_BITS) return { reason: 'rsa_key_too_small', message: `RSA key of ${bits} bits is below the minimum of ${MIN_RSA_BITS}` };
    if (bits > MAX_RSA_BITS) return { reason: 'unsupported_key', message: `RSA key of ${bits} bits is above the maximum of ${MAX_RSA_BITS}` };
    return undefined;
  }
  return { reason: 'unsupported_key', message: `${type ?? 'unknown'} keys are not accepted (ECDSA P-256/P-384, Ed25519, RSA 2048-8192 only)` };
}

function signatureAlgorithmProblem(algorithm: Algorithm): CertProblem | undefined {
  const hash = (algorithm as Partial<px509.HashedAlgorithm>).hash?.name;
  if (algorithm.name === 'Ed25519') return undefined;
  if (HASHED_SIGNATURES.has(algorithm.name) && hash !== undefined && STRONG_HASHES.has(hash)) return undefined;
  const described = hash ? `${algorithm.name} with ${hash}` : algorithm.name;
  if (hash === 'SHA-1' || WEAK_SIGNATURE_OIDS.has(algorithm.name)) {
    return { reason: 'weak_signature_algorithm', message: `signed with the broken algorithm ${described}` };
  }
  return { reason: 'unsupported_signature_algorithm', message: `signed with the unsupported algorithm ${described}` };
}

function leafRules(
  cert: px509.X509Certificate,
  extensions: KnownExtensions,
  uris: readonly string[],
): { id: SpiffeId } | { problem: CertProblem } {
  const fail = (reason: SvidReason, message: string) => ({ problem: { reason, message } });
  const [uri, ...moreUris] = uris;
  if (uri === undefined) return fail('no_uri_san', 'has no URI SAN (an X509-SVID carries its SPIFFE ID as exactly one URI SAN)');
  if (moreUris.length > 0) return fail('multiple_uri_sans', `has ${uris.length} URI SANs; an X509-SVID must have exactly one`);
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(uri);
  } catch (err) {
    return fail('invalid_spiffe_id', `URI SAN "${uri}" is not a valid SPIFFE ID: ${spiffeIdMessage(err)}`);
  }
  if (id.isTrustDomainId) return fail('leaf_no_path', `SPIFFE ID ${uri} has no path; a leaf X509-SVID must name a workload`);
  if (cert.subjectName.toJSON().length === 0 && !extensions.san?.critical) {
    return fail('empty_subject_san_not_critical', 'has an empty subject, so its SAN extension must be critical (RFC 5280 §4.2.1.6)');
  }
  if (extensions.basicConstraints?.ca) return fail('leaf_is_ca', 'is a CA certificate (cA=true); a leaf X509-SVID must have cA=false');
  const keyUsage = extensions.keyUsage;
  if (!keyUsage) return fail('leaf_key_usage_missing', 'has no key usage extension');
  if (!keyUsage.critical) return fail('leaf_key_usage_not_critical', 'key usage extension is not marked critical');
  if (!(keyUsage.usages & px509.KeyUsageFlags.digitalSignature)) {
    return fail('leaf_no_digital_signature', 'key usage lacks digitalSignature');
  }
  if (keyUsage.usages & px509.KeyUsageFlags.keyCertSign) return fail('leaf_key_cert_sign', 'key usage has keyCertSign, which a leaf must not have');
  if (keyUsage.usages & px509.KeyUsageFlags.cRLSign) return fail('leaf_crl_sign', 'key usage has cRLSign, which a leaf must not have');
  const eku = extensions.extKeyUsage?.usages;
  if (eku && !(eku.includes(OID.serverAuth) && eku.includes(OID.clientAuth))) {
    return fail('eku_missing_server_or_client_auth', 'extended key usage must include both serverAuth and clientAuth');
  }
  return { id };
}

function issuerRules(
  extensions: KnownExtensions,
  uris: readonly string[],
  nameConstraints: { critical: boolean; unsupported?: string } | undefined,
): CertProblem | undefined {
  if (!extensions.basicConstraints?.ca) {
    return { reason: 'signing_cert_not_ca', message: 'signs certificates but is not a CA (basic constraints cA=true is required)' };
  }
  if (!extensions.keyUsage || !(extensions.keyUsage.usages & px509.KeyUsageFlags.keyCertSign)) {
    return { reason: 'signing_cert_no_key_cert_sign', message: 'signs certificates but its key usage lacks keyCertSign' };
  }
  for (const uri of uris) {
    if (!/^spiffe:/i.test(uri)) continue;
    let id: SpiffeId;
    try {
      id = SpiffeId.parse(uri);
    } catch (err) {
      return { reason: 'invalid_spiffe_id', message: `URI SAN "${uri}" is not a valid SPIFFE ID: ${spiffeIdMessage(err)}` };
    }
    if (!id.isTrustDomainId) {
      return { reason: 'signing_cert_id_has_path', message: `is a signing certificate whose SPIFFE ID ${uri} has a path` };
    }
  }
  // Fail closed: a CA restricted by constraints we cannot evaluate must not be trusted at all.
  if (nameConstraints?.critical && nameConstraints.unsupported) {
    return { reason: 'name_constraints_unsupported', message: `has critical name constraints that cannot be evaluated (${nameConstraints.unsupported})` };
  }
  return undefined;
}

function spiffeIdMessage(err: unknown): string {
  return err instanceof SpiffeIdError ? `${err.message} (${err.rule})` : String(err);
}

/** Decodes the URI and DNS subtrees; anything else is reported as unsupported (and ignored
 *  only when the extension is not critical). */
function readNameConstraints(ext: px509.Extension): { set: NameConstraintSet; critical: boolean; unsupported?: string } {
  const decoded = AsnConvert.parse(ext.value, NameConstraints);
  const unsupported = new Set<string>();
  const split = (subtrees: GeneralSubtrees | undefined) => {
    const uriHosts: string[] = [];
    const dns: string[] = [];
    for (const subtree of subtrees ?? []) {
      // RFC 5280 §4.2.1.10: minimum must be 0 and maximum absent; other values are not evaluated.
      if (subtree.minimum !== 0 || subtree.maximum !== undefined) unsupported.add('minimum/maximum distance');
      const base = subtree.base;
      if (base.uniformResourceIdentifier !== undefined) uriHosts.push(base.uniformResourceIdentifier.toLowerCase());
      else if (base.dNSName !== undefined) dns.push(base.dNSName.toLowerCase());
      else unsupported.add(generalNameKind(base));
    }
    return { uriHosts, dns };
  };
  const permitted = split(decoded.permittedSubtrees);
  const excluded = split(decoded.excludedSubtrees);
  return {
    set: {
      permittedUriHosts: permitted.uriHosts,
      excludedUriHosts: excluded.uriHosts,
      permittedDns: permitted.dns,
      excludedDns: excluded.dns,
    },
    critical: ext.critical,
    ...(unsupported.size > 0 ? { unsupported: [...unsupported].sort().join(', ') } : {}),
  };
}

function generalNameKind(name: GeneralName): string {
  if (name.directoryName) return 'directoryName';
  if (name.iPAddress !== undefined) return 'iPAddress';
  if (name.rfc822Name !== undefined) return 'rfc822Name';
  if (name.otherName) return 'otherName';
  if (name.registeredID !== undefined) return 'registeredID';
  return 'unknown name form';
}
