// The embedded development provider: a local CA on disk that issues exactly the SVIDs this
// node wants and renews them at half-life. It is the default when nothing is configured, so it
// must work unattended: failures are reported to the sink and retried, never thrown from timers.
import { mkdir, mkdtemp, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import type { Logger } from '../../util/logger.js';
import { silentLogger } from '../../util/logger.js';
import { Backoff } from '../../util/backoff.js';
import { DevCa } from '../dev-ca.js';
import type { SpiffeId } from '../spiffe-id.js';
import { ProviderError, type IdentityProvider, type ProviderSink, type RawSvid } from '../types.js';
import type { DevOptions } from './dev-options.js';

export interface DevProviderOptions {
  /** The trust domain the CA signs for; a CA loaded from caDir must match it. */
  trustDomain: string;
  /** Holds ca.pem and ca.key (0600) in a 0700 directory; created on first start, shared by nodes that mount it. */
  caDir: string;
  /** Lifetime of issued SVIDs. */
  ttlMs: number;
  logger?: Logger;
}

/** Constructor options from the identity.dev config section: the CA defaults to <stateDir>/dev-ca. */
export function devProviderOptions(
  dev: DevOptions,
  context: { trustDomain: string; stateDir: string; logger?: Logger },
): DevProviderOptions {
  return { trustDomain: context.trustDomain, caDir: dev.caDir ?? join(context.stateDir, 'dev-ca'), ttlMs: dev.ttl, logger: context.logger };
}

// Renewal happens at half-life, up to this fraction earlier, so nodes sharing a CA spread out.
const RENEWAL_JITTER = 0.1;
// A floor for the renewal delay, so a CA about to expire cannot make the provider spin.
const MIN_RENEWAL_DELAY_MS = 1_000;
// setTimeout fires at once for delays beyond 2^31-1 ms (~24.8 days); long TTLs wake up early instead.
const MAX_TIMER_MS = 2_147_483_647;

interface HeldSvid {
  svid: RawSvid;
  renewAt: number;
}

export class DevProvider implements IdentityProvider {
  readonly name = 'dev' as const;
  private readonly logger: Logger;
  private wanted = new Map<string, SpiffeId>();
  private readonly held = new Map<string, HeldSvid>();
  private sink?: ProviderSink;
  private ca?: DevCa;
  private stopped = false;
  private timer?: NodeJS.Timeout;
  private inFlight?: Promise<void>;
  private runAgain = false;
  /** IDs whose last issuance failed: each retries on its own backoff, so one bad ID delays no other. */
  private readonly failing = new Map<string, { backoff: Backoff; retryAt: number }>();

  constructor(private readonly options: DevProviderOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ provider: 'dev' });
  }

  /** Loads (or creates) the CA and pushes its bundle; the SVIDs follow in the background.
   *  Rejects when the CA directory is unusable: that is a configuration error, not a transient one. */
  async start(sink: ProviderSink): Promise<void> {
    if (this.stopped) throw new Error('the dev provider was stopped; create a new one');
    if (this.sink) throw new Error('the dev provider is already started');
    this.ca = await loadOrCreateDevCa(this.options.caDir, this.options.trustDomain, this.logger);
    if (this.stopped) return;
    this.sink = sink;
    sink.bundles(new Map([[this.ca.trustDomain, this.ca.bundle()]]));
    this.wake();
  }

  setWanted(ids: readonly SpiffeId[]): void {
    this.wanted = new Map(ids.map((id) => [id.toString(), id]));
    this.wake();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = undefined;
    await this.inFlight;
  }

  /** Runs a reconciliation now, or right after the one in flight. */
  private wake(): void {
    if (!this.sink || this.stopped) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.inFlight) {
      this.runAgain = true;
      return;
    }
    const run = this.reconcile().catch((err: unknown) => {
      // reconcile reports issuance failures itself; this is a sink that threw.
      this.logger.error({ err }, 'dev provider could not deliver its state');
    });
    this.inFlight = run.finally(() => {
      this.inFlight = undefined;
      if (this.runAgain) {
        this.runAgain = false;
        this.wake();
      } else {
        this.armTimer();
      }
    });
  }

  /** When an ID is next due: its retry after a failure, else its renewal, else now. */
  private dueAt(key: string): number {
    return this.failing.get(key)?.retryAt ?? this.held.get(key)?.renewAt ?? 0;
  }

  /** Sleeps until the earliest renewal or retry. */
  private armTimer(): void {
    if (this.stopped || this.wanted.size === 0) return;
    const next = Math.min(...[...this.wanted.keys()].map((key) => this.dueAt(key)));
    this.timer = setTimeout(() => this.wake(), Math.min(MAX_TIMER_MS, Math.max(0, next - Date.now())));
  }

  /** Issues what is missing or due, drops what is no longer wanted, pushes the full state if it
   *  changed. Issuance failures go to the sink and are retried with backoff. */
  private async reconcile(): Promise<void> {
    const sink = this.sink;
    const ca = this.ca;
    if (!sink || !ca) return;
    let changed = false;
    for (const key of this.held.keys()) {
      if (!this.wanted.has(key)) {
        this.held.delete(key);
        changed = true;
      }
    }
    for (const key of this.failing.keys()) if (!this.wanted.has(key)) this.failing.delete(key);
    const now = Date.now();
    for (const [key, id] of this.wanted) {
      if (this.dueAt(key) > now) continue;
      try {
        const issued = await this.issue(ca, id);
        if (this.stopped) return;
        this.held.set(key, issued);
        this.failing.delete(key);
        changed = true;
      } catch (err) {
        if (this.stopped) return;
        // A failed renewal keeps the held SVID: it stays valid until its notAfter.
        const failing = this.failing.get(key) ?? { backoff: new Backoff({ initialMs: 500, maxMs: 30_000 }), retryAt: 0 };
        failing.retryAt = Date.now() + failing.backoff.next();
        this.failing.set(key, failing);
        sink.error(new ProviderError('issue', `dev CA cannot issue ${key}: ${(err as Error).message}`, { cause: err }));
      }
    }
    if (changed && !this.stopped) sink.svids([...this.held.values()].map((held) => held.svid));
  }

  private async issue(ca: DevCa, id: SpiffeId): Promise<HeldSvid> {
    const issuedAt = Date.now();
    const svid = await ca.issue({ id, ttlMs: this.options.ttlMs });
    const leaf = new X509Certificate(svid.chain[0]!);
    const notAfter = Date.parse(leaf.validTo);
    // The CA caps a leaf's lifetime at its own; an expired CA would hand out dead certificates.
    if (notAfter <= issuedAt) throw new Error(`the dev CA in ${this.options.caDir} expired at ${ca.certificate.validTo}`);
    const halfLife = (notAfter - issuedAt) / 2;
    const renewAt = issuedAt + Math.max(MIN_RENEWAL_DELAY_MS, halfLife * (1 - RENEWAL_JITTER * Math.random()));
    this.logger.debug({ spiffeId: id.toString(), serial: leaf.serialNumber, notAfter: leaf.validTo }, 'issued SVID');
    return { svid, renewAt };
  }
}

/**
 * Loads the CA in dir, or creates one for trustDomain if dir holds none. A new CA is written to a
 * sibling temporary directory and renamed into place, so agents sharing dir that start together
 * end up with one CA: the loser of the rename loads the winner's.
 */
export async function loadOrCreateDevCa(dir: string, trustDomain: string, logger: Logger): Promise<DevCa> {
  const existing = await loadIfPresent(dir, trustDomain);
  if (existing) {
    logger.info({ caDir: dir, trustDomain }, 'loaded dev CA');
    return existing;
  }
  const ca = await DevCa.create({ trustDomain });
  await mkdir(dirname(dir), { recursive: true, mode: 0o700 });
  const staging = await mkdtemp(join(dirname(dir), `.${basename(dir)}.new-`));
  try {
    await ca.save(staging);
    await rename(staging, dir);
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    const code = (err as NodeJS.ErrnoException).code;
    // A mount point cannot be replaced by rename: write into it directly.
    if (code === 'EBUSY' || code === 'EXDEV') {
      await ca.save(dir);
      logger.info({ caDir: dir, trustDomain, notAfter: ca.certificate.validTo }, 'created dev CA');
      return ca;
    }
    // Someone else's CA got there first (or dir is a non-empty directory): use what is there.
    if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw err;
    const winner = await loadIfPresent(dir, trustDomain);
    if (!winner) throw new Error(`dev CA directory ${dir} exists but holds no CA (ca.pem, ca.key)`, { cause: err });
    logger.info({ caDir: dir, trustDomain }, 'loaded dev CA');
    return winner;
  }
  logger.info({ caDir: dir, trustDomain, notAfter: ca.certificate.validTo }, 'created dev CA');
  return ca;
}

async function loadIfPresent(dir: string, trustDomain: string): Promise<DevCa | undefined> {
  let ca: DevCa;
  try {
    ca = await DevCa.load(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`cannot load the dev CA in ${dir}: ${(err as Error).message}`, { cause: err });
  }
  if (ca.trustDomain !== trustDomain) {
    throw new Error(`the dev CA in ${dir} signs for trust domain ${ca.trustDomain}, not ${trustDomain}`);
  }
  return ca;
}
