// The `vault` identity provider: issues an X509-SVID from a HashiCorp Vault (or OpenBao) PKI
// role for every SPIFFE ID this node needs, renews each at 2/3 of its lifetime with jitter,
// and keeps a certificate whose renewal fails until it expires, retrying with backoff.
import { readFile } from 'node:fs/promises';
import { Backoff } from '../../util/backoff.js';
import { silentLogger, type Logger } from '../../util/logger.js';
import type { SpiffeId } from '../spiffe-id.js';
import { ProviderError, type IdentityProvider, type ProviderSink, type RawBundles, type RawSvid } from '../types.js';
import { asProviderError, createTokenSource, type TokenSource } from './vault-auth.js';
import { VaultClient, VaultError } from './vault-client.js';
import type { VaultOptions } from './vault-options.js';
import { caCertificatesOf, pemToDers, svidFromIssue, type IssuedSvid } from './vault-svid.js';

export interface VaultTiming {
  /** Renew a certificate (and a login token) after this fraction of its remaining lifetime. */
  renewFraction: number;
  /** Renewal happens up to this fraction earlier, at random, so a fleet spreads its load. */
  renewJitter: number;
  retryInitialMs: number;
  retryMaxMs: number;
  random: () => number;
}

const DEFAULT_TIMING: VaultTiming = {
  renewFraction: 2 / 3,
  renewJitter: 0.1,
  retryInitialMs: 1_000,
  retryMaxMs: 60_000,
  random: Math.random,
};

// X.520 ub-common-name.
const MAX_COMMON_NAME = 64;
// setTimeout's limit; a timer for a later moment fires early and re-arms or renews early.
const MAX_TIMER_MS = 2 ** 31 - 1;

/** One wanted SPIFFE ID and what is held for it. */
interface Slot {
  readonly id: SpiffeId;
  readonly backoff: Backoff;
  held?: IssuedSvid;
  /** Trust anchors from the last issuance; kept when the SVID itself expires. */
  roots?: Buffer[];
  issueTimer?: NodeJS.Timeout;
  expiryTimer?: NodeJS.Timeout;
}

export class VaultProvider implements IdentityProvider {
  readonly name = 'vault';
  private readonly slots = new Map<string, Slot>();
  private readonly abort = new AbortController();
  private readonly inFlight = new Set<Promise<void>>();
  private readonly timing: VaultTiming;
  private readonly logger: Logger;
  private sink?: ProviderSink;
  private client?: VaultClient;
  private tokens?: TokenSource;
  private stopped = false;

  private readonly nodeId?: string;

  constructor(
    private readonly options: VaultOptions,
    /** nodeId: this node's own identity, issued through options.nodeRole when that is set. */
    deps: { logger?: Logger; timing?: Partial<VaultTiming>; nodeId?: string } = {},
  ) {
    this.logger = (deps.logger ?? silentLogger()).child({ provider: 'vault' });
    this.timing = { ...DEFAULT_TIMING, ...deps.timing };
    if (deps.nodeId !== undefined) this.nodeId = deps.nodeId;
  }

  async start(sink: ProviderSink): Promise<void> {
    if (this.sink || this.stopped) throw new Error('vault provider: start() may be called once, before stop()');
    let ca: string | undefined;
    if (this.options.caFile) {
      try {
        ca = await readFile(this.options.caFile, 'utf8');
      } catch (err) {
        throw new ProviderError('io', `cannot read vault caFile ${this.options.caFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      pemToDers(ca, `caFile ${this.options.caFile}`);
    }
    this.client = new VaultClient({
      address: this.options.address,
      namespace: this.options.namespace,
      ca,
      timeoutMs: this.options.requestTimeout,
    });
    this.tokens = createTokenSource({
      client: this.client,
      auth: this.options.auth,
      signal: this.abort.signal,
      renewFraction: this.timing.renewFraction,
      onError: (err) => this.report(err, 'vault token renewal failed'),
      onRenewed: (event) => this.logger.info(event, event.via === 'login' ? 'vault login succeeded' : 'vault token renewed'),
    });
    this.sink = sink;
    this.logger.info(
      { address: this.options.address, mount: this.options.mount, role: this.options.role, nodeRole: this.options.nodeRole, auth: this.options.auth.method },
      'vault provider started',
    );
    for (const slot of this.slots.values()) this.scheduleIssue(slot, 0);
  }

  setWanted(ids: readonly SpiffeId[]): void {
    if (this.stopped) return;
    const next = new Map(ids.map((id) => [id.toString(), id]));
    let withdrawn = false;
    for (const [key, slot] of this.slots) {
      if (next.has(key)) continue;
      this.clearTimers(slot);
      this.slots.delete(key);
      withdrawn = true;
    }
    for (const [key, id] of next) {
      if (this.slots.has(key)) continue;
      const slot: Slot = { id, backoff: new Backoff({ initialMs: this.timing.retryInitialMs, maxMs: this.timing.retryMaxMs, random: this.timing.random }) };
      this.slots.set(key, slot);
      if (this.sink) this.scheduleIssue(slot, 0);
    }
    if (withdrawn) this.publish();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    for (const slot of this.slots.values()) this.clearTimers(slot);
    this.tokens?.stop();
    await Promise.allSettled([...this.inFlight]);
    this.client?.close();
  }

  private scheduleIssue(slot: Slot, delayMs: number): void {
    clearTimeout(slot.issueTimer);
    slot.issueTimer = setTimeout(() => {
      const work = this.issue(slot);
      this.inFlight.add(work);
      void work.finally(() => this.inFlight.delete(work));
    }, Math.min(MAX_TIMER_MS, Math.max(0, delayMs)));
  }

  /** Issues (or renews) the SVID of one slot and schedules the next attempt. Never throws. */
  private async issue(slot: Slot): Promise<void> {
    if (!this.isCurrent(slot)) return;
    try {
      const issued = await this.issueWithToken(slot.id);
      if (!this.isCurrent(slot)) return;
      const lifetimeMs = issued.notAfter.getTime() - Date.now();
      if (lifetimeMs <= 0) {
        throw new VaultError('issue', `vault issued ${slot.id.toString()} with notAfter ${issued.notAfter.toISOString()}, already past`);
      }
      slot.held = issued;
      slot.roots = issued.roots;
      slot.backoff.reset();
      this.armExpiry(slot);
      const renewInMs = Math.round(lifetimeMs * this.timing.renewFraction * (1 - this.timing.renewJitter * this.timing.random()));
      this.scheduleIssue(slot, renewInMs);
      this.logger.info(
        { spiffeId: slot.id.toString(), serial: issued.serial, notAfter: issued.notAfter.toISOString(), renewInMs },
        'vault issued an SVID',
      );
      this.publish();
    } catch (err) {
      if (!this.isCurrent(slot)) return;
      const retryInMs = slot.backoff.next();
      this.report(asProviderError(err), 'vault issuance failed', {
        spiffeId: slot.id.toString(),
        retryInMs,
        keepingSvidUntil: slot.held?.notAfter.toISOString(),
      });
      this.scheduleIssue(slot, retryInMs);
    }
  }

  /** One issuance; a 403 (token revoked or expired early) earns one fresh login and retry. */
  private async issueWithToken(id: SpiffeId): Promise<IssuedSvid> {
    const tokens = this.tokens as TokenSource;
    const token = await tokens.token();
    try {
      return await this.issueOnce(id, token);
    } catch (err) {
      if (!(err instanceof VaultError && err.status === 403) || this.abort.signal.aborted) throw err;
      this.logger.info({ spiffeId: id.toString(), error: err.message }, 'vault refused the token; logging in again');
      tokens.invalidate(token);
      return await this.issueOnce(id, await tokens.token());
    }
  }

  private async issueOnce(id: SpiffeId, token: string): Promise<IssuedSvid> {
    const client = this.client as VaultClient;
    const { signal } = this.abort;
    const role = this.options.nodeRole !== undefined && id.toString() === this.nodeId ? this.options.nodeRole : this.options.role;
    const data = await client.issue(
      this.options.mount,
      role,
      { commonName: this.commonName(id), uriSans: [id.toString()], ttlS: Math.max(1, Math.ceil(this.options.ttl / 1000)) },
      token,
      signal,
    );
    let cas = caCertificatesOf(data);
    if (cas.length === 0) cas = pemToDers(await client.caChainPem(this.options.mount, signal), `${this.options.mount}/ca_chain`);
    return svidFromIssue(id, data, cas);
  }

  private commonName(id: SpiffeId): string | undefined {
    if (this.options.commonName === 'none') return undefined;
    return (id.path.split('/').at(-1) ?? '').slice(0, MAX_COMMON_NAME);
  }

  /** Drops a held SVID from the state when it expires before a renewal succeeded. */
  private armExpiry(slot: Slot): void {
    clearTimeout(slot.expiryTimer);
    const held = slot.held;
    if (!held) return;
    const untilExpiry = held.notAfter.getTime() - Date.now();
    slot.expiryTimer = setTimeout(() => {
      if (!this.isCurrent(slot) || slot.held !== held) return;
      if (Date.now() < held.notAfter.getTime()) return this.armExpiry(slot);
      this.logger.warn({ spiffeId: slot.id.toString(), serial: held.serial }, 'vault SVID expired before it could be renewed; withdrawn');
      slot.held = undefined;
      this.publish();
    }, Math.min(MAX_TIMER_MS, Math.max(0, untilExpiry)));
  }

  /** Pushes the full state: bundles first, so the SVIDs that need them validate at once. */
  private publish(): void {
    if (!this.sink || this.stopped) return;
    const svids: RawSvid[] = [];
    const bundles: RawBundles = new Map();
    for (const slot of this.slots.values()) {
      if (slot.held) svids.push(slot.held.svid);
      const bundle = bundles.get(slot.id.trustDomain) ?? [];
      for (const root of slot.roots ?? []) if (!bundle.some((known) => known.equals(root))) bundle.push(root);
      if (bundle.length > 0) bundles.set(slot.id.trustDomain, bundle);
    }
    try {
      this.sink.bundles(bundles);
      this.sink.svids(svids);
    } catch (err) {
      this.logger.error({ error: (err as Error).message }, 'identity sink rejected a vault state');
    }
  }

  private report(err: ProviderError, message: string, fields: Record<string, unknown> = {}): void {
    if (this.stopped) return;
    const status = err instanceof VaultError ? err.status : undefined;
    this.logger.warn({ ...fields, kind: err.kind, status, error: err.message }, message);
    try {
      this.sink?.error(err);
    } catch (sinkErr) {
      this.logger.error({ error: (sinkErr as Error).message }, 'identity sink rejected a vault error');
    }
  }

  private isCurrent(slot: Slot): boolean {
    return !this.stopped && this.slots.get(slot.id.toString()) === slot;
  }

  private clearTimers(slot: Slot): void {
    clearTimeout(slot.issueTimer);
    clearTimeout(slot.expiryTimer);
  }
}
