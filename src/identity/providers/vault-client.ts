// A small client for the parts of the Vault (and OpenBao) HTTP API meshauth uses: Kubernetes
// login, token renewal, PKI issuance and the CA chain. Built on node:http/https rather than
// fetch because a private CA for Vault's own certificate is a plain `ca` option there.
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { z } from 'zod';
import { ProviderError, type ProviderErrorKind } from '../types.js';

// A Vault response larger than this is not one of ours; refuse rather than buffer it.
const MAX_RESPONSE_BYTES = 4 * 1024 * 1024;

/** A failed Vault call. `status` is absent when no HTTP response arrived; `vaultErrors` is
 *  Vault's own `{"errors": [...]}` text, already included in the message. */
export class VaultError extends ProviderError {
  constructor(
    kind: ProviderErrorKind,
    message: string,
    readonly status?: number,
    readonly vaultErrors: readonly string[] = [],
    options?: { cause?: unknown },
  ) {
    super(kind, message, options);
    this.name = 'VaultError';
  }
}

export interface VaultClientOptions {
  /** Base address, e.g. https://vault.example:8200 */
  address: string;
  /** Vault Enterprise namespace (X-Vault-Namespace). */
  namespace?: string;
  /** PEM CA certificate(s) for Vault's TLS certificate; default: the system roots. */
  ca?: string;
  timeoutMs: number;
}

/** What a login or a renewal yields. The token is a secret: never log it. */
export interface VaultAuth {
  clientToken: string;
  /** 0 = the token does not expire. */
  leaseDurationS: number;
  renewable: boolean;
}

export interface IssueRequest {
  commonName?: string;
  uriSans: string[];
  ttlS: number;
}

const authResponseSchema = z.object({
  auth: z.object({
    client_token: z.string().min(1),
    lease_duration: z.number().int().nonnegative(),
    renewable: z.boolean(),
  }),
});

const issueResponseSchema = z.object({
  data: z.object({
    certificate: z.string().min(1),
    issuing_ca: z.string().optional(),
    ca_chain: z.array(z.string()).nullish(),
    private_key: z.string().min(1),
    private_key_type: z.string().optional(),
    serial_number: z.string(),
    expiration: z.number().optional(),
  }),
});
export type IssueData = z.infer<typeof issueResponseSchema>['data'];

interface CallOptions {
  token?: string;
  body?: unknown;
  signal: AbortSignal;
  /** Values that must never appear in an error message (the token, the JWT). */
  secrets?: string[];
  /** A login or token call: every refusal (4xx but 429) is an 'auth' error, not only 401/403. */
  authEndpoint?: boolean;
}

export class VaultClient {
  private readonly base: URL;
  private readonly agent: HttpAgent;
  private readonly send: typeof httpRequest;

  constructor(private readonly options: VaultClientOptions) {
    this.base = new URL(options.address.endsWith('/') ? options.address : `${options.address}/`);
    if (this.base.protocol === 'https:') {
      this.agent = new HttpsAgent({ keepAlive: true, ...(options.ca ? { ca: options.ca } : {}) });
      this.send = httpsRequest;
    } else if (this.base.protocol === 'http:') {
      this.agent = new HttpAgent({ keepAlive: true });
      this.send = httpRequest;
    } else {
      throw new ProviderError('invalid_argument', `vault address ${options.address} must be http:// or https://`);
    }
  }

  /** POST /v1/auth/<mount>/login with the service-account JWT. */
  async kubernetesLogin(mount: string, role: string, jwt: string, signal: AbortSignal): Promise<VaultAuth> {
    const body = await this.call('POST', `auth/${mount}/login`, { body: { role, jwt }, signal, secrets: [jwt], authEndpoint: true });
    return parseAuth(body, `auth/${mount}/login`);
  }

  /** POST /v1/auth/token/renew-self: extends the calling token's lease. */
  async renewSelf(token: string, signal: AbortSignal): Promise<VaultAuth> {
    const body = await this.call('POST', 'auth/token/renew-self', { token, body: {}, signal, secrets: [token], authEndpoint: true });
    return parseAuth(body, 'auth/token/renew-self');
  }

  /** POST /v1/<mount>/issue/<role>: a fresh key and certificate, PEM, key as PKCS#8. */
  async issue(mount: string, role: string, request: IssueRequest, token: string, signal: AbortSignal): Promise<IssueData> {
    const path = `${mount}/issue/${role}`;
    const body = await this.call('POST', path, {
      token,
      signal,
      secrets: [token],
      body: {
        ...(request.commonName === undefined ? {} : { common_name: request.commonName }),
        uri_sans: request.uriSans.join(','),
        ttl: `${request.ttlS}s`,
        format: 'pem',
        private_key_format: 'pkcs8',
        // The CN is a label for humans; an X509-SVID carries exactly one URI SAN and no name
        // derived from the CN.
        exclude_cn_from_sans: true,
      },
    });
    const parsed = issueResponseSchema.safeParse(body);
    if (!parsed.success) throw malformed(path, parsed.error);
    return parsed.data.data;
  }

  /** The mount's CA chain as PEM: GET /v1/<mount>/ca_chain, falling back to /ca/pem when the
   *  chain is empty (a mount whose issuer was imported without its parents). Unauthenticated. */
  async caChainPem(mount: string, signal: AbortSignal): Promise<string> {
    const chain = await this.callText('GET', `${mount}/ca_chain`, { signal });
    if (chain.includes('-----BEGIN CERTIFICATE-----')) return chain;
    return this.callText('GET', `${mount}/ca/pem`, { signal });
  }

  /** Closes idle keep-alive connections. */
  close(): void {
    this.agent.destroy();
  }

  /** A call whose answer is JSON (empty counts as {}). */
  private async call(method: 'GET' | 'POST', path: string, options: CallOptions): Promise<unknown> {
    const text = await this.callText(method, path, options);
    if (text.trim() === '') return {};
    try {
      return JSON.parse(text) as unknown;
    } catch {
      throw new VaultError('malformed', `vault ${method} ${path}: answer is not JSON`);
    }
  }

  /** A call and its answer's body; any status but 2xx becomes a VaultError with Vault's text. */
  private async callText(method: 'GET' | 'POST', path: string, options: CallOptions): Promise<string> {
    const url = new URL(`v1/${encodePath(path)}`, this.base);
    const headers: Record<string, string> = { 'X-Vault-Request': 'true', Accept: 'application/json' };
    if (options.token !== undefined) headers['X-Vault-Token'] = options.token;
    if (this.options.namespace) headers['X-Vault-Namespace'] = this.options.namespace;
    let payload: string | undefined;
    if (options.body !== undefined) {
      payload = JSON.stringify(options.body);
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = String(Buffer.byteLength(payload));
    }
    const signal = AbortSignal.any([options.signal, AbortSignal.timeout(this.options.timeoutMs)]);
    let response: { status: number; text: string };
    try {
      response = await this.exchange(url, method, headers, payload, signal);
    } catch (err) {
      if (err instanceof VaultError) throw err;
      const reason = options.signal.aborted ? 'aborted' : signal.aborted ? `no answer within ${this.options.timeoutMs} ms` : (err as Error).message;
      throw new VaultError('unavailable', `vault ${method} ${path}: ${scrub(reason, options.secrets)}`, undefined, [], { cause: err });
    }
    if (response.status >= 200 && response.status < 300) return response.text;
    const vaultErrors = errorsOf(response.text).map((text) => scrub(text, options.secrets));
    const refused = response.status >= 400 && response.status < 500 && response.status !== 429;
    const kind = response.status === 401 || response.status === 403 || (refused && options.authEndpoint) ? 'auth' : 'http';
    const detail = vaultErrors.length > 0 ? vaultErrors.join('; ') : `HTTP ${response.status} without an error text`;
    throw new VaultError(kind, `vault ${method} ${path} failed with ${response.status}: ${detail}`, response.status, vaultErrors);
  }

  private exchange(
    url: URL,
    method: string,
    headers: Record<string, string>,
    payload: string | undefined,
    signal: AbortSignal,
  ): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = this.send(url, { method, headers, agent: this.agent, signal }, (res: IncomingMessage) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_RESPONSE_BYTES) {
            req.destroy();
            reject(new VaultError('malformed', `vault ${method} ${url.pathname}: answer larger than ${MAX_RESPONSE_BYTES} bytes`, res.statusCode));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      });
      req.on('error', reject);
      req.end(payload);
    });
  }
}

function parseAuth(body: unknown, path: string): VaultAuth {
  const parsed = authResponseSchema.safeParse(body);
  if (!parsed.success) throw malformed(path, parsed.error);
  const auth = parsed.data.auth;
  return { clientToken: auth.client_token, leaseDurationS: auth.lease_duration, renewable: auth.renewable };
}

/** Names the fields that did not match, never their values (one of them is a private key). */
function malformed(path: string, error: z.ZodError): VaultError {
  const fields = error.issues.map((issue) => `${issue.path.join('.') || '(top level)'}: ${issue.message}`).join('; ');
  return new VaultError('malformed', `vault ${path}: unexpected answer (${fields})`);
}

/** Vault's error body is `{"errors": ["…"]}`; anything else yields no text. */
function errorsOf(text: string): string[] {
  try {
    const body = JSON.parse(text) as unknown;
    const errors = (body as { errors?: unknown } | null)?.errors;
    return Array.isArray(errors) ? errors.filter((item): item is string => typeof item === 'string' && item.trim() !== '').map((item) => item.trim()) : [];
  } catch {
    return [];
  }
}

/** A safety net: a secret the server echoed back must not travel on in an error message. */
function scrub(text: string, secrets: string[] = []): string {
  let out = text;
  for (const secret of secrets) if (secret.length > 0) out = out.split(secret).join('[redacted]');
  return out;
}

/** Mount and role names may hold "/" (nested mounts) but each segment is escaped. */
function encodePath(path: string): string {
  return path
    .split('/')
    .filter((segment) => segment !== '')
    .map(encodeURIComponent)
    .join('/');
}
