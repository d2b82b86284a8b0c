// X509-SVID validation (spiffe/spiffe standards/X509-SVID.md §4-§5 and RFC 5280 §6), run inside
// every TLS handshake. The leaf is always the first certificate: the rest are intermediates
// only, never a leaf candidate. The path is built from the leaf through presented intermediates
// (in any order) to a certificate in the bundle of the trust domain the leaf *claims*, so a CA
// of one trust domain can never vouch for another.
//
// Check order: the shape of every presented certificate, then the path (trust), then the
// validity times along the path, then the expected ID. So "expired" is only ever reported for
// a chain that is otherwise trustworthy, and "untrusted" never hides behind a time error.
import type { X509Certificate } from 'node:crypto';
import type { BundleLookup } from './bundle-set.js';
import type { SpiffeId } from './spiffe-id.js';
import { SvidError } from './svid-errors.js';
import { certProfile, type CertProblem, type CertProfile, type NameConstraintSet } from './svid-cert-profile.js';

export interface SvidValidationOptions {
  /** The time to validate at; default now. */
  now?: Date;
  /** Allowance for clock differences on both ends of every validity period; default 30 s. */
  clockSkewMs?: number;
  /** Most certificates accepted in the presented chain (leaf + intermediates; the anchor from the bundle is not counted); default 5. */
  maxChainDepth?: number;
  /** When given, the leaf's SPIFFE ID must be exactly this one. */
  expectedId?: SpiffeId | string;
}

export interface ValidatedSvid {
  id: SpiffeId;
  /** As presented, leaf first. */
  chain: X509Certificate[];
  /** Validity of the leaf. */
  notBefore: Date;
  notAfter: Date;
  /** The earliest notAfter over the verified path, trust anchor included: nothing built on this
   *  validation may outlive it. */
  earliestNotAfter: Date;
}

const DEFAULT_CLOCK_SKEW_MS = 30_000;
const DEFAULT_MAX_CHAIN_DEPTH = 5;

/** Validates an X509-SVID chain (leaf first); throws SvidError naming the broken rule. */
export function validateX509Svid(
  chain: readonly (Buffer | X509Certificate)[],
  bundles: BundleLookup,
  options: SvidValidationOptions = {},
): ValidatedSvid {
  const maxChainDepth = options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH;
  if (chain.length === 0) throw new SvidError('empty_chain', 'the certificate chain is empty');
  if (chain.length > maxChainDepth) {
    throw new SvidError('chain_too_long', `the chain has ${chain.length} certificates; at most ${maxChainDepth} (leaf and intermediates) are accepted`);
  }
  const labels = new Map<CertProfile, string>();
  const presented = chain.map((input, index) => {
    const label = index === 0 ? 'leaf' : `intermediate ${index}`;
    let profile: CertProfile;
    try {
      profile = certProfile(input);
    } catch (err) {
      throw new SvidError('malformed_certificate', `${label} does not parse: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
    }
    if (!labels.has(profile)) labels.set(profile, label);
    return profile;
  });
  const [leaf, ...intermediates] = presented as [CertProfile, ...CertProfile[]];

  const leafVerdict = leaf.asLeaf;
  if (leafVerdict.problem) throw certificateError('leaf', leafVerdict.problem);
  if (leaf.signatureProblem) throw certificateError('leaf', leaf.signatureProblem);
  for (const intermediate of intermediates) {
    const problem = intermediate.asIssuer ?? intermediate.signatureProblem;
    if (problem) throw certificateError(labels.get(intermediate) ?? 'intermediate', problem);
  }

  const id = leafVerdict.id;
  const anchorCerts = bundles.get(id.trustDomain);
  if (!anchorCerts || anchorCerts.length === 0) {
    throw new SvidError('no_bundle_for_trust_domain', `no trust bundle for trust domain ${id.trustDomain} (claimed by ${id.toString()})`);
  }
  const search = new PathSearch(intermediates, labels, {
    nowMs: (options.now ?? new Date()).getTime(),
    skewMs: options.clockSkewMs ?? DEFAULT_CLOCK_SKEW_MS,
  });
  const anchors = search.anchorProfiles(anchorCerts);
  const path = search.find(leaf, anchors) ?? search.failure(id.trustDomain);

  if (options.expectedId !== undefined && options.expectedId.toString() !== id.toString()) {
    throw new SvidError('unexpected_id', `leaf SPIFFE ID is ${id.toString()}, expected ${options.expectedId.toString()}`);
  }
  let earliestNotAfter = leaf.notAfter;
  for (const cert of path) if (cert.notAfter < earliestNotAfter) earliestNotAfter = cert.notAfter;
  return {
    id,
    chain: chain.map((input, index) => (Buffer.isBuffer(input) ? presented[index]!.x509 : input)),
    // Copies: the cached certificate facts must not be changeable through a result.
    notBefore: new Date(leaf.notBefore),
    notAfter: new Date(leaf.notAfter),
    earliestNotAfter: new Date(earliestNotAfter),
  };
}

function certificateError(label: string, problem: CertProblem): SvidError {
  return new SvidError(problem.reason, `${label}: ${problem.message}`);
}

/**
 * Depth-first search for a path leaf → presented intermediates → bundle certificate that passes
 * every RFC 5280 check. Only presented certificates are used, each at most once, so the search
 * is bounded by the chain-depth limit. When no path exists, the first problem met explains why.
 */
class PathSearch {
  private firstProblem: SvidError | undefined;

  constructor(
    private readonly intermediates: readonly CertProfile[],
    private readonly labels: Map<CertProfile, string>,
    private readonly time: { nowMs: number; skewMs: number },
  ) {}

  anchorProfiles(certs: readonly X509Certificate[]): CertProfile[] {
    const anchors: CertProfile[] = [];
    for (const cert of certs) {
      try {
        const profile = certProfile(cert);
        anchors.push(profile);
        this.labels.set(profile, `trust anchor "${oneLine(profile.subject)}"`);
      } catch (err) {
        // A bundle certificate we cannot read is not trusted; others in the bundle still may be.
        this.record(new SvidError('malformed_certificate', `trust anchor does not parse: ${err instanceof Error ? err.message : String(err)}`));
      }
    }
    return anchors;
  }

  find(leaf: CertProfile, anchors: readonly CertProfile[]): CertProfile[] | undefined {
    return this.extend([leaf], this.intermediates, anchors);
  }

  failure(trustDomain: string): never {
    throw this.firstProblem ?? new SvidError('no_path_to_trust_anchor', `no path from the leaf to a trust anchor of trust domain ${trustDomain}`);
  }

  private extend(path: CertProfile[], unused: readonly CertProfile[], anchors: readonly CertProfile[]): CertProfile[] | undefined {
    const child = path[path.length - 1]!;
    for (const anchor of anchors) {
      if (!this.namedIssuer(anchor, child)) continue;
      if (anchor.asIssuer) {
        this.record(certificateError(this.label(anchor), anchor.asIssuer));
        continue;
      }
      if (!this.issued(anchor, child)) continue;
      const complete = [...path, anchor];
      const problem = this.pathProblem(complete);
      if (!problem) return complete;
      this.record(problem);
    }
    for (const candidate of unused) {
      if (!this.namedIssuer(candidate, child) || !this.issued(candidate, child)) continue;
      const found = this.extend([...path, candidate], unused.filter((other) => other !== candidate), anchors);
      if (found) return found;
    }
    return undefined;
  }

  /** Name chaining: Node's name strings are the fast path, OpenSSL's canonical comparison the fallback. */
  private namedIssuer(parent: CertProfile, child: CertProfile): boolean {
    return parent.subject === child.issuer || child.x509.checkIssued(parent.x509);
  }

  /** OpenSSL's issuer check (canonical names, key identifiers, key usage), then the signature. */
  private issued(parent: CertProfile, child: CertProfile): boolean {
    if (!child.x509.checkIssued(parent.x509)) return false;
    if (child.isSignedBy(parent)) return true;
    this.record(new SvidError('bad_signature', `the signature on ${this.label(child)} does not verify with the key of ${this.label(parent)}`));
    return false;
  }

  /** Checks that depend on the whole path (leaf first, anchor last) and on the time. */
  private pathProblem(path: readonly CertProfile[]): SvidError | undefined {
    for (let i = 1; i < path.length; i++) {
      const ca = path[i]!;
      if (ca.pathLength !== undefined) {
        const below = path.slice(1, i).filter((cert) => !cert.selfIssued).length;
        if (below > ca.pathLength) {
          return new SvidError(
            'path_length_exceeded',
            `${this.label(ca)} allows ${ca.pathLength} intermediate(s) below it (pathLenConstraint) but the path has ${below}`,
          );
        }
      }
      if (ca.nameConstraints) {
        // RFC 5280 §6.1.3: constraints apply to every later certificate except self-issued intermediates.
        for (let j = 0; j < i; j++) {
          const cert = path[j]!;
          if (j > 0 && cert.selfIssued) continue;
          const violation = nameConstraintViolation(cert, ca.nameConstraints);
          if (violation) {
            return new SvidError('name_constraints_violated', `${this.label(cert)} name ${violation} is outside the name constraints of ${this.label(ca)}`);
          }
        }
      }
    }
    const { nowMs, skewMs } = this.time;
    for (const cert of path) {
      if (nowMs < cert.notBefore.getTime() - skewMs) {
        return new SvidError('not_yet_valid', `${this.label(cert)} is not valid before ${cert.notBefore.toISOString()}`);
      }
      if (nowMs > cert.notAfter.getTime() + skewMs) {
        return new SvidError('expired', `${this.label(cert)} expired at ${cert.notAfter.toISOString()}`);
      }
    }
    return undefined;
  }

  private record(problem: SvidError): void {
    this.firstProblem ??= problem;
  }

  private label(cert: CertProfile): string {
    return this.labels.get(cert) ?? `certificate "${oneLine(cert.subject)}"`;
  }
}

/** The first SAN of cert that the constraints reject, quoted for the message. */
function nameConstraintViolation(cert: CertProfile, constraints: NameConstraintSet): string | undefined {
  for (const uri of cert.uris) {
    const host = uriHost(uri);
    if (!allowed(host, constraints.permittedUriHosts, constraints.excludedUriHosts, uriHostMatches)) return `"${uri}"`;
  }
  for (const dns of cert.dnsNames) {
    if (!allowed(dns.toLowerCase(), constraints.permittedDns, constraints.excludedDns, dnsNameMatches)) return `"${dns}"`;
  }
  return undefined;
}

function allowed(
  name: string | undefined,
  permitted: readonly string[],
  excluded: readonly string[],
  matches: (name: string, constraint: string) => boolean,
): boolean {
  if (permitted.length === 0 && excluded.length === 0) return true;
  // RFC 5280 §4.2.1.10: a URI without a host cannot be checked against host constraints: reject.
  if (name === undefined) return false;
  if (permitted.length > 0 && !permitted.some((constraint) => matches(name, constraint))) return false;
  return !excluded.some((constraint) => matches(name, constraint));
}

function uriHost(uri: string): string | undefined {
  try {
    const host = new URL(uri).hostname.toLowerCase();
    return host === '' ? undefined : host;
  } catch {
    return undefined;
  }
}

/** URI constraints name a host exactly, or with a leading "." any host below that domain. */
function uriHostMatches(host: string, constraint: string): boolean {
  if (constraint === '') return true;
  return constraint.startsWith('.') ? host.endsWith(constraint) : host === constraint;
}

/** DNS constraints match the name itself and any subdomain; with a leading "." only subdomains. */
function dnsNameMatches(name: string, constraint: string): boolean {
  if (constraint === '') return true;
  if (constraint.startsWith('.')) return name.endsWith(constraint);
  return name === constraint || name.endsWith(`.${constraint}`);
}

function oneLine(name: string): string {
  return name.replace(/\n/g, ', ');
}
