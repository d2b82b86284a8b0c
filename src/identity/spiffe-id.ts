// SPIFFE ID parsing per spiffe/spiffe standards/SPIFFE-ID.md. Every rejection names the rule
// it broke, because these messages reach operators through `meshauth svid verify` and logs.

const MAX_ID_BYTES = 2048;
const MAX_TRUST_DOMAIN_BYTES = 255;
const TRUST_DOMAIN_CHARS = /^[a-z0-9._-]+$/;
const PATH_SEGMENT_CHARS = /^[a-zA-Z0-9._-]+$/;

export class SpiffeIdError extends Error {
  constructor(
    readonly rule: SpiffeIdRule,
    message: string,
  ) {
    super(message);
    this.name = 'SpiffeIdError';
  }
}

export type SpiffeIdRule =
  | 'empty'
  | 'too_long'
  | 'scheme'
  | 'trust_domain_missing'
  | 'trust_domain_too_long'
  | 'trust_domain_chars'
  | 'userinfo'
  | 'port'
  | 'query'
  | 'fragment'
  | 'path_empty_segment'
  | 'path_dot_segment'
  | 'path_trailing_slash'
  | 'path_chars';

export class SpiffeId {
  private constructor(
    readonly trustDomain: string,
    /** '' for a trust-domain ID, otherwise starts with '/'. */
    readonly path: string,
  ) {}

  /** Parses and validates; throws SpiffeIdError naming the broken rule. */
  static parse(input: string): SpiffeId {
    if (input.length === 0) throw new SpiffeIdError('empty', 'SPIFFE ID is empty');
    if (Buffer.byteLength(input, 'utf8') > MAX_ID_BYTES) {
      throw new SpiffeIdError('too_long', `SPIFFE ID is longer than ${MAX_ID_BYTES} bytes`);
    }
    const prefix = 'spiffe://';
    if (!input.startsWith(prefix)) {
      throw new SpiffeIdError('scheme', 'SPIFFE ID must start with "spiffe://" (lowercase scheme)');
    }
    const rest = input.slice(prefix.length);
    // Query and fragment are checked before splitting so that "?" in the authority is named correctly.
    // Whichever delimiter comes first decides (RFC 3986): in "/a#b?c" the "?" is part of the fragment.
    const query = rest.indexOf('?');
    const fragment = rest.indexOf('#');
    if (fragment !== -1 && (query === -1 || fragment < query)) {
      throw new SpiffeIdError('fragment', 'SPIFFE ID must not contain a fragment ("#")');
    }
    if (query !== -1) throw new SpiffeIdError('query', 'SPIFFE ID must not contain a query ("?")');
    const slash = rest.indexOf('/');
    const trustDomain = slash === -1 ? rest : rest.slice(0, slash);
    const path = slash === -1 ? '' : rest.slice(slash);
    SpiffeId.checkTrustDomain(trustDomain);
    SpiffeId.checkPath(path);
    return new SpiffeId(trustDomain, path);
  }

  /** Like parse, but returns undefined instead of throwing. */
  static tryParse(input: string): SpiffeId | undefined {
    try {
      return SpiffeId.parse(input);
    } catch {
      return undefined;
    }
  }

  /** Validates a bare trust domain name ("example.org"); throws SpiffeIdError. */
  static checkTrustDomain(trustDomain: string): void {
    if (trustDomain.length === 0) throw new SpiffeIdError('trust_domain_missing', 'SPIFFE ID has no trust domain');
    if (trustDomain.includes('@')) throw new SpiffeIdError('userinfo', 'SPIFFE ID must not contain userinfo ("@")');
    if (trustDomain.includes(':')) throw new SpiffeIdError('port', 'SPIFFE ID trust domain must not contain a port (":")');
    if (Buffer.byteLength(trustDomain, 'utf8') > MAX_TRUST_DOMAIN_BYTES) {
      throw new SpiffeIdError('trust_domain_too_long', `trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`);
    }
    if (!TRUST_DOMAIN_CHARS.test(trustDomain)) {
      throw new SpiffeIdError('trust_domain_chars', 'trust domain may contain only lowercase letters, digits, ".", "-" and "_"');
    }
  }

  private static checkPath(path: string): void {
    if (path === '') return;
    if (path.endsWith('/')) throw new SpiffeIdError('path_trailing_slash', 'SPIFFE ID path must not end with "/"');
    for (const segment of path.slice(1).split('/')) {
      if (segment === '') throw new SpiffeIdError('path_empty_segment', 'SPIFFE ID path must not contain empty segments ("//")');
      if (segment === '.' || segment === '..') {
        throw new SpiffeIdError('path_dot_segment', 'SPIFFE ID path must not contain "." or ".." segments');
      }
      if (!PATH_SEGMENT_CHARS.test(segment)) {
        throw new SpiffeIdError('path_chars', 'SPIFFE ID path segments may contain only letters, digits, ".", "-" and "_"');
      }
    }
  }

  /** A trust-domain ID (no path) identifies the trust domain itself, never a workload. */
  get isTrustDomainId(): boolean {
    return this.path === '';
  }

  equals(other: SpiffeId): boolean {
    return this.trustDomain === other.trustDomain && this.path === other.path;
  }

  toString(): string {
    return `spiffe://${this.trustDomain}${this.path}`;
  }

  toJSON(): string {
    return this.toString();
  }
}
