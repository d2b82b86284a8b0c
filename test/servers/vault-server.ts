// A Vault stand-in for tests that follows Vault's documented HTTP API for the calls meshauth
// makes: Kubernetes login, token renew-self, PKI issue (from a root + intermediate, like a real
// Vault intermediate mount), the CA endpoints, Vault's `{"errors": [...]}` bodies, and
// switchable failures (permission denied, rate limit, sealed, internal error, bad gateway).
import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { KeyObject, createPrivateKey, randomBytes, webcrypto } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { px509 } from '../../src/identity/x509.js';
import { parseDuration } from '../../src/util/duration.js';

px509.cryptoProvider.set(webcrypto as unknown as Crypto);

const KEY_ALGORITHM: EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGNING_ALGORITHM: EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
// Vault's default not_before_duration.
const BACKDATE_MS = 30_000;

export type VaultEndpoint = 'login' | 'renew' | 'issue' | 'ca';
export type VaultFailure = 'forbidden' | 'rate-limited' | 'sealed' | 'internal' | 'bad-gateway';

export interface VaultTestRole {
  name?: string;
  /** Glob patterns, as Vault's allowed_uri_sans (e.g. spiffe://example.org/*). */
  allowedUriSans?: string[];
  maxTtlS?: number;
  requireCn?: boolean;
}

export interface VaultTestServerOptions {
  /** The trust domain of the root CA's SPIFFE ID. */
  trustDomain: string;
  mount?: string;
  role?: VaultTestRole;
  /** More PKI roles, each by its name (e.g. one for node identities only). */
  extraRoles?: (VaultTestRole & { name: string })[];
  kubernetes?: { mount?: string; role: string; jwt: string; tokenTtlS: number; renewable?: boolean };
  /** Serve HTTPS with a self-signed certificate for 127.0.0.1 (see `tlsCaPem`). */
  tls?: boolean;
  /** When set, every request must carry this X-Vault-Namespace, or the mounts are not found. */
  namespace?: string;
  /** What issue answers carry: the full chain (Vault ≥ 1.11), only the issuing CA (older
   *  Vault, an intermediate whose root Vault does not know), or nothing (forces /ca_chain). */
  caInIssueResponse?: 'full' | 'issuing-only' | 'none';
}

export interface IssueRecord {
  /** The PKI role the request named. */
  role: string;
  commonName?: string;
  uriSans: string[];
  ttl?: string;
  format: string;
  privateKeyFormat: string;
  excludeCnFromSans: boolean;
  serial: string;
  token: string;
}

interface Ca {
  cert: px509.X509Certificate;
  keys: CryptoKeyPair;
  pem: string;
}

interface TokenEntry {
  /** undefined: never expires. */
  expiresAt?: number;
  ttlS: number;
  renewable: boolean;
}

class VaultHttpError extends Error {
  constructor(
    readonly status: number,
    readonly errors: string[],
  ) {
    super(errors.join('; '));
  }
}

export class VaultTestServer {
  readonly calls: Record<VaultEndpoint, number> = { login: 0, renew: 0, issue: 0, ca: 0 };
  readonly issued: IssueRecord[] = [];
  /** X-Vault-Namespace of every request, in order ('' when absent). */
  readonly namespacesSeen: string[] = [];
  /** Every X-Vault-Token value received, to check which token a client used. */
  readonly tokensSeen: string[] = [];
  private readonly tokens = new Map<string, TokenEntry>();
  private failures: Array<{ endpoint: VaultEndpoint | '*'; failure: VaultFailure; remaining: number }> = [];
  private readonly mount: string;
  private readonly roleName: string;
  private address = '';

  private constructor(
    private readonly options: VaultTestServerOptions,
    private readonly root: Ca,
    private issuer: Ca,
    private readonly server: Server,
    /** PEM of the server's own TLS certificate, for the client's caFile; undefined over HTTP. */
    readonly tlsCaPem: string | undefined,
  ) {
    this.mount = options.mount ?? 'pki';
    this.roleName = options.role?.name ?? 'meshauth';
  }

  static async start(options: VaultTestServerOptions): Promise<VaultTestServer> {
    const root = await makeCa(options.trustDomain, undefined, 'meshauth test root');
    const issuer = await makeCa(options.trustDomain, root, 'meshauth test intermediate 1');
    let server: Server;
    let tlsCaPem: string | undefined;
    // The handler needs the instance, which needs the server: close over a holder.
    const holder: { self?: VaultTestServer } = {};
    const handler = (req: IncomingMessage, res: ServerResponse): void => void holder.self?.handle(req, res);
    if (options.tls) {
      const tls = await makeServerCertificate();
      server = createHttpsServer({ cert: tls.certPem, key: tls.keyPem }, handler);
      tlsCaPem = tls.certPem;
    } else {
      server = createHttpServer(handler);
    }
    const self = new VaultTestServer(options, root, issuer, server, tlsCaPem);
    holder.self = self;
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    self.address = `${options.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
    return self;
  }

  get url(): string {
    return this.address;
  }

  /** The root CA (DER): what a bundle for the trust domain must hold. */
  get rootDer(): Buffer {
    return Buffer.from(this.root.cert.rawData);
  }

  /** The current issuing (intermediate) CA (DER). */
  get issuerDer(): Buffer {
    return Buffer.from(this.issuer.cert.rawData);
  }

  /** A token Vault accepts, as if created with `vault token create`. */
  addToken(token: string, options: { ttlS?: number; renewable?: boolean } = {}): void {
    const ttlS = options.ttlS ?? 0;
    this.tokens.set(token, { ttlS, renewable: options.renewable ?? false, expiresAt: ttlS > 0 ? Date.now() + ttlS * 1000 : undefined });
  }

  /** Revokes every token, as `vault token revoke` would. */
  revokeAllTokens(): void {
    this.tokens.clear();
  }

  /** Makes the next `times` requests to `endpoint` (or to every endpoint) fail. */
  fail(endpoint: VaultEndpoint | '*', failure: VaultFailure, times = Number.POSITIVE_INFINITY): void {
    this.failures.push({ endpoint, failure, remaining: times });
  }

  heal(): void {
    this.failures = [];
  }

  /** Replaces the issuing intermediate (same root), as an issuer rotation in Vault does. */
  async rotateIssuer(): Promise<void> {
    this.issuer = await makeCa(this.options.trustDomain, this.root, `meshauth test intermediate ${randomBytes(4).toString('hex')}`);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const path = new URL(req.url ?? '/', 'http://vault').pathname.replace(/^\/v1\//, '');
      const namespace = header(req, 'x-vault-namespace');
      this.namespacesSeen.push(namespace ?? '');
      const token = header(req, 'x-vault-token');
      if (token !== undefined) this.tokensSeen.push(token);
      const endpoint = this.endpointOf(req.method ?? 'GET', path);
      if (!endpoint || (this.options.namespace !== undefined && namespace !== this.options.namespace)) {
        throw new VaultHttpError(404, [`no handler for route "${path}". route entry not found.`]);
      }
      this.calls[endpoint]++;
      this.injectFailure(endpoint, path, res);
      if (res.headersSent) return;
      const body = req.method === 'POST' || req.method === 'PUT' ? await readJson(req) : {};
      switch (endpoint) {
        case 'login':
          return sendJson(res, 200, this.login(body));
        case 'renew':
          return sendJson(res, 200, this.renewSelf(token));
        case 'issue':
          return sendJson(res, 200, await this.issue(path, body, token));
        case 'ca':
          return this.serveCa(path, res);
      }
    } catch (err) {
      if (err instanceof VaultHttpError) return sendJson(res, err.status, { errors: err.errors });
      sendJson(res, 500, { errors: [`internal error: ${(err as Error).message}`] });
    }
  }

  private endpointOf(method: string, path: string): VaultEndpoint | undefined {
    const write = method === 'POST' || method === 'PUT';
    const k8sMount = this.options.kubernetes?.mount ?? 'kubernetes';
    if (write && this.options.kubernetes && path === `auth/${k8sMount}/login`) return 'login';
    if (write && path === 'auth/token/renew-self') return 'renew';
    if (write && path.startsWith(`${this.mount}/issue/`)) return 'issue';
    if (method === 'GET' && [`${this.mount}/ca`, `${this.mount}/ca/pem`, `${this.mount}/ca_chain`].includes(path)) return 'ca';
    return undefined;
  }

  private injectFailure(endpoint: VaultEndpoint, path: string, res: ServerResponse): void {
    const failure = this.failures.find((entry) => (entry.endpoint === '*' || entry.endpoint === endpoint) && entry.remaining > 0);
    if (!failure) return;
    failure.remaining--;
    switch (failure.failure) {
      case 'forbidden':
        throw new VaultHttpError(403, ['permission denied']);
      case 'rate-limited':
        throw new VaultHttpError(429, [`request path "${path}": rate limit quota exceeded`]);
      case 'sealed':
        throw new VaultHttpError(503, ['Vault is sealed']);
      case 'internal':
        throw new VaultHttpError(500, ['internal error']);
      case 'bad-gateway':
        // What a load balancer in front of Vault answers: no Vault error body.
        res.writeHead(502, { 'Content-Type': 'text/html' }).end('<html><body><h1>502 Bad Gateway</h1></body></html>');
    }
  }

  private login(body: Record<string, unknown>): object {
    const k8s = this.options.kubernetes as NonNullable<VaultTestServerOptions['kubernetes']>;
    if (typeof body.role !== 'string' || body.role === '') throw new VaultHttpError(400, ['missing role']);
    if (typeof body.jwt !== 'string' || body.jwt === '') throw new VaultHttpError(400, ['missing jwt']);
    if (body.role !== k8s.role) throw new VaultHttpError(400, [`invalid role name "${body.role}"`]);
    if (body.jwt !== k8s.jwt) throw new VaultHttpError(403, ['permission denied']);
    const token = `hvs.${randomBytes(18).toString('base64url')}`;
    this.addToken(token, { ttlS: k8s.tokenTtlS, renewable: k8s.renewable ?? true });
    return secretResponse({ auth: this.authBlock(token, { role: k8s.role, service_account_name: 'meshauth' }) });
  }

  private renewSelf(token: string | undefined): object {
    const entry = this.validToken(token);
    if (!entry.renewable) throw new VaultHttpError(400, ['lease is not renewable']);
    if (entry.ttlS > 0) entry.expiresAt = Date.now() + entry.ttlS * 1000;
    return secretResponse({ auth: this.authBlock(token as string, null) });
  }

  private authBlock(token: string, metadata: Record<string, string> | null): object {
    const entry = this.tokens.get(token) as TokenEntry;
    return {
      client_token: token,
      accessor: randomBytes(12).toString('base64url'),
      policies: ['default', 'meshauth-issuer'],
      token_policies: ['default', 'meshauth-issuer'],
      metadata,
      lease_duration: entry.ttlS,
      renewable: entry.renewable,
      entity_id: '',
      token_type: 'service',
      orphan: true,
    };
  }

  private validToken(token: string | undefined): TokenEntry {
    const entry = token === undefined ? undefined : this.tokens.get(token);
    if (!entry || (entry.expiresAt !== undefined && Date.now() >= entry.expiresAt)) throw new VaultHttpError(403, ['permission denied']);
    return entry;
  }

  private async issue(path: string, body: Record<string, unknown>, token: string | undefined): Promise<object> {
    this.validToken(token);
    const role = path.slice(`${this.mount}/issue/`.length);
    const roleOptions = role === this.roleName ? (this.options.role ?? {}) : this.options.extraRoles?.find((extra) => extra.name === role);
    if (!roleOptions) throw new VaultHttpError(400, [`unknown role: ${role}`]);
    const commonName = typeof body.common_name === 'string' && body.common_name !== '' ? body.common_name : undefined;
    if (commonName === undefined && (roleOptions.requireCn ?? true)) {
      throw new VaultHttpError(400, ['the common_name field is required, or must be provided in a CSR with "use_csr_common_name" set to true, unless "require_cn" is set to false']);
    }
    const uriSans = listParam(body.uri_sans);
    for (const uri of uriSans) {
      if (!(roleOptions.allowedUriSans ?? []).some((pattern) => globMatch(pattern, uri))) {
        throw new VaultHttpError(400, [`URI Subject Alternative Name ${uri} not allowed by this role`]);
      }
    }
    const format = typeof body.format === 'string' && body.format !== '' ? body.format : 'pem';
    if (!['pem', 'der', 'pem_bundle'].includes(format)) throw new VaultHttpError(400, [`unknown format: ${format}`]);
    const privateKeyFormat = typeof body.private_key_format === 'string' && body.private_key_format !== '' ? body.private_key_format : 'der';
    if (!['der', 'pem', 'pkcs8'].includes(privateKeyFormat)) throw new VaultHttpError(400, [`unknown private_key_format: ${privateKeyFormat}`]);
    const excludeCnFromSans = body.exclude_cn_from_sans === true;

    const maxTtlS = roleOptions.maxTtlS ?? 86_400;
    const requestedTtlS = ttlSeconds(body.ttl) ?? maxTtlS;
    const warnings: string[] = [];
    if (requestedTtlS > maxTtlS) warnings.push(`TTL of "${requestedTtlS}s" exceeded the effective max_ttl of "${maxTtlS}s"; TTL value is capped accordingly`);
    const notAfter = new Date(Date.now() + Math.min(requestedTtlS, maxTtlS) * 1000);

    const leafKeys = (await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify']));
    const serialHex = serialNumber();
    const sans: px509.JsonGeneralName[] = uriSans.map((value) => ({ type: 'url', value }));
    if (commonName !== undefined && !excludeCnFromSans) sans.push({ type: 'dns', value: commonName });
    const extensions: px509.Extension[] = [
      new px509.BasicConstraintsExtension(false, undefined, true),
      new px509.KeyUsagesExtension(
        px509.KeyUsageFlags.digitalSignature | px509.KeyUsageFlags.keyAgreement | px509.KeyUsageFlags.keyEncipherment,
        true,
      ),
      new px509.ExtendedKeyUsageExtension([px509.ExtendedKeyUsage.serverAuth, px509.ExtendedKeyUsage.clientAuth], false),
      await px509.SubjectKeyIdentifierExtension.create(leafKeys.publicKey),
      await px509.AuthorityKeyIdentifierExtension.create(this.issuer.keys.publicKey),
    ];
    // Like Go's x509: with an empty subject the SAN extension is critical.
    if (sans.length > 0) extensions.push(new px509.SubjectAlternativeNameExtension(sans, commonName === undefined));
    const leaf = await px509.X509CertificateGenerator.create({
      serialNumber: serialHex,
      subject: commonName === undefined ? '' : `CN=${commonName}`,
      issuer: this.issuer.cert.subjectName,
      notBefore: new Date(Date.now() - BACKDATE_MS),
      notAfter,
      signingAlgorithm: SIGNING_ALGORITHM,
      publicKey: leafKeys.publicKey,
      signingKey: this.issuer.keys.privateKey,
      extensions,
    });
    const key = KeyObject.from(leafKeys.privateKey);
    const serial = serialHex.match(/../g)?.join(':') ?? serialHex;
    this.issued.push({ role, commonName, uriSans, ttl: typeof body.ttl === 'string' ? body.ttl : undefined, format, privateKeyFormat, excludeCnFromSans, serial, token: token as string });

    const encodeCert = (cert: px509.X509Certificate): string => (format === 'der' ? Buffer.from(cert.rawData).toString('base64') : cert.toString('pem'));
    const keyType = privateKeyFormat === 'pkcs8' ? 'pkcs8' : 'sec1';
    const privateKey = format === 'der' ? key.export({ type: keyType, format: 'der' }).toString('base64') : (key.export({ type: keyType, format: 'pem' }) as string);
    const caMode = this.options.caInIssueResponse ?? 'full';
    const caChain = caMode === 'full' ? [this.issuer, this.root] : caMode === 'issuing-only' ? [this.issuer] : [];
    const certificate = format === 'pem_bundle' ? `${privateKey}\n${leaf.toString('pem')}\n${this.issuer.pem}` : encodeCert(leaf);
    return secretResponse({
      data: {
        certificate,
        ...(caMode === 'none' ? {} : { issuing_ca: encodeCert(this.issuer.cert) }),
        ca_chain: caChain.map((ca) => encodeCert(ca.cert)),
        private_key: privateKey,
        private_key_type: 'ec',
        serial_number: serial,
        expiration: Math.floor(notAfter.getTime() / 1000),
      },
      warnings: warnings.length > 0 ? warnings : null,
    });
  }

  private serveCa(path: string, res: ServerResponse): void {
    if (path.endsWith('/ca')) {
      res.writeHead(200, { 'Content-Type': 'application/pkix-cert' }).end(Buffer.from(this.issuer.cert.rawData));
      return;
    }
    const pem = path.endsWith('/ca_chain') ? `${this.issuer.pem}\n${this.root.pem}\n` : `${this.issuer.pem}\n`;
    res.writeHead(200, { 'Content-Type': 'application/pem-certificate-chain' }).end(pem);
  }
}

/** A CA certificate: self-signed root when parent is undefined, else an intermediate. */
async function makeCa(trustDomain: string, parent: Ca | undefined, name: string): Promise<Ca> {
  const keys = (await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify']));
  const subject = `O=meshauth tests, CN=${name}`;
  const now = Date.now();
  const cert = await px509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject,
    issuer: parent ? parent.cert.subjectName : subject,
    notBefore: new Date(now - 3_600_000),
    notAfter: new Date(now + 365 * 86_400_000),
    signingAlgorithm: SIGNING_ALGORITHM,
    publicKey: keys.publicKey,
    signingKey: parent ? parent.keys.privateKey : keys.privateKey,
    extensions: [
      new px509.BasicConstraintsExtension(true, parent ? 0 : undefined, true),
      new px509.KeyUsagesExtension(px509.KeyUsageFlags.keyCertSign | px509.KeyUsageFlags.cRLSign, true),
      new px509.SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${trustDomain}` }]),
      await px509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ...(parent ? [await px509.AuthorityKeyIdentifierExtension.create(parent.keys.publicKey)] : []),
    ],
  });
  return { cert, keys, pem: cert.toString('pem') };
}

/** A self-signed TLS server certificate for 127.0.0.1. */
async function makeServerCertificate(): Promise<{ certPem: string; keyPem: string }> {
  const keys = (await webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify']));
  const cert = await px509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: 'CN=vault test server',
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 86_400_000),
    signingAlgorithm: SIGNING_ALGORITHM,
    keys,
    extensions: [
      new px509.BasicConstraintsExtension(true, undefined, true),
      new px509.KeyUsagesExtension(px509.KeyUsageFlags.digitalSignature | px509.KeyUsageFlags.keyCertSign, true),
      new px509.ExtendedKeyUsageExtension([px509.ExtendedKeyUsage.serverAuth]),
      new px509.SubjectAlternativeNameExtension([{ type: 'ip', value: '127.0.0.1' }]),
    ],
  });
  const keyPem = createPrivateKey({
    key: Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)),
    format: 'der',
    type: 'pkcs8',
  }).export({ type: 'pkcs8', format: 'pem' }) as string;
  return { certPem: cert.toString('pem'), keyPem };
}

function secretResponse(fields: { data?: object; auth?: object; warnings?: string[] | null }): object {
  return {
    request_id: webcrypto.randomUUID(),
    lease_id: '',
    renewable: false,
    lease_duration: 0,
    data: fields.data ?? null,
    wrap_info: null,
    warnings: fields.warnings ?? null,
    auth: fields.auth ?? null,
  };
}

function sendJson(res: ServerResponse, status: number, body: object): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) }).end(text);
}

function header(req: IncomingMessage, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.trim() === '') return {};
  try {
    const parsed = JSON.parse(text) as unknown;
    if (parsed !== null && typeof parsed === 'object' && !Array.isArray(parsed)) return parsed as Record<string, unknown>;
  } catch (err) {
    throw new VaultHttpError(400, [`failed to parse JSON input: ${(err as Error).message}`]);
  }
  throw new VaultHttpError(400, ['failed to parse JSON input: not an object']);
}

/** Vault list parameters: a comma-delimited string or a JSON array. */
function listParam(value: unknown): string[] {
  const items = Array.isArray(value) ? value.map(String) : typeof value === 'string' ? value.split(',') : [];
  return items.map((item) => item.trim()).filter((item) => item !== '');
}

/** Vault TTLs: seconds as a number or digits, or a duration string ("90s", "1h"). */
function ttlSeconds(value: unknown): number | undefined {
  if (typeof value === 'number') return value;
  if (typeof value !== 'string' || value === '') return undefined;
  if (/^\d+$/.test(value)) return Number(value);
  try {
    return Math.floor(parseDuration(value) / 1000);
  } catch {
    throw new VaultHttpError(400, [`error converting input ${value} for field "ttl": time: invalid duration "${value}"`]);
  }
}

/** Glob match as Vault's allowed_uri_sans: `*` matches any run of characters. */
function globMatch(pattern: string, value: string): boolean {
  const regex = new RegExp(`^${pattern.split('*').map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
  return regex.test(value);
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0] ?? 0) & 0x7f;
  return bytes.toString('hex');
}
