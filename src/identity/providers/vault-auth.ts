// Where the Vault token comes from. Either a file someone else keeps fresh (Vault Agent, a
// projected secret) or a Kubernetes login with the service-account JWT, which this module then
// keeps alive: renew-self at a fraction of the lease, a fresh login when renewal is refused or
// the token is not renewable. The token and the JWT are never logged or put in an error.
import { readFile } from 'node:fs/promises';
import { ProviderError } from '../types.js';
import type { VaultAuth, VaultClient } from './vault-client.js';
import type { VaultOptions } from './vault-options.js';

export interface TokenSource {
  /** A token believed valid now; logs in when there is none. */
  token(): Promise<string>;
  /** Vault refused this token: forget it so the next token() fetches a new one. */
  invalidate(token: string): void;
  stop(): void;
}

export interface TokenSourceOptions {
  client: VaultClient;
  auth: VaultOptions['auth'];
  /** Aborted by the provider's stop(). */
  signal: AbortSignal;
  /** Fraction of the lease after which the token is renewed (e.g. 2/3). */
  renewFraction: number;
  /** Called for failures of the background renewal, which has no caller to throw to. */
  onError: (err: ProviderError) => void;
  /** Called after each successful login or renewal, for logs (never with the token). */
  onRenewed?: (event: { via: 'login' | 'renew'; leaseDurationS: number; renewable: boolean }) => void;
}

export function createTokenSource(options: TokenSourceOptions): TokenSource {
  return options.auth.method === 'token' ? new FileTokenSource(options.auth.tokenFile) : new KubernetesTokenSource(options, options.auth);
}

/** Reads the file on every use, so a token rotated on disk is picked up at once. */
class FileTokenSource implements TokenSource {
  constructor(private readonly path: string) {}

  async token(): Promise<string> {
    return readSecretFile(this.path, 'vault token file');
  }

  invalidate(): void {}

  stop(): void {}
}

type KubernetesAuth = Extract<VaultOptions['auth'], { method: 'kubernetes' }>;

// setTimeout's limit; a longer lease is maintained early, which is harmless.
const MAX_TIMER_MS = 2 ** 31 - 1;

class KubernetesTokenSource implements TokenSource {
  private current?: { token: string; expiresAt: number };
  private loggingIn?: Promise<string>;
  private timer?: NodeJS.Timeout;
  private stopped = false;

  constructor(
    private readonly options: TokenSourceOptions,
    private readonly auth: KubernetesAuth,
  ) {}

  token(): Promise<string> {
    if (this.current && Date.now() < this.current.expiresAt) return Promise.resolve(this.current.token);
    return this.login();
  }

  invalidate(token: string): void {
    if (this.current?.token !== token) return;
    this.current = undefined;
    clearTimeout(this.timer);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.current = undefined;
  }

  /** One login at a time: concurrent issuances share it. */
  private login(): Promise<string> {
    this.loggingIn ??= (async () => {
      try {
        // Re-read on every login: kubelet rotates projected service-account tokens.
        const jwt = await readSecretFile(this.auth.jwtFile, 'service-account token file');
        const auth = await this.options.client.kubernetesLogin(this.auth.mount, this.auth.role, jwt, this.options.signal);
        return this.adopt(auth, 'login');
      } finally {
        this.loggingIn = undefined;
      }
    })();
    return this.loggingIn;
  }

  private adopt(auth: VaultAuth, via: 'login' | 'renew'): string {
    if (this.stopped) return auth.clientToken;
    const leaseMs = auth.leaseDurationS * 1000;
    this.current = { token: auth.clientToken, expiresAt: leaseMs > 0 ? Date.now() + leaseMs : Number.POSITIVE_INFINITY };
    clearTimeout(this.timer);
    if (leaseMs > 0) {
      const delay = Math.min(MAX_TIMER_MS, Math.max(0, leaseMs * this.options.renewFraction));
      this.timer = setTimeout(() => void this.maintain(auth.renewable), delay);
    }
    this.options.onRenewed?.({ via, leaseDurationS: auth.leaseDurationS, renewable: auth.renewable });
    return auth.clientToken;
  }

  /** Renews (or, for a non-renewable token, replaces) the token before its lease ends. Never
   *  throws: a failure is reported and the next token() call logs in again once it expired. */
  private async maintain(renewable: boolean): Promise<void> {
    const { signal } = this.options;
    const token = this.current?.token;
    if (this.stopped || token === undefined) return;
    if (renewable) {
      try {
        this.adopt(await this.options.client.renewSelf(token, signal), 'renew');
        return;
      } catch (err) {
        if (this.stopped || signal.aborted) return;
        this.options.onError(asProviderError(err));
      }
    }
    try {
      await this.login();
    } catch (err) {
      if (this.stopped || signal.aborted) return;
      this.options.onError(asProviderError(err));
    }
  }
}

async function readSecretFile(path: string, what: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ProviderError('io', `cannot read ${what} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const value = text.trim();
  if (value === '') throw new ProviderError('auth', `${what} ${path} is empty`);
  return value;
}

export function asProviderError(err: unknown): ProviderError {
  return err instanceof ProviderError ? err : new ProviderError('io', (err as Error).message ?? String(err), { cause: err });
}
