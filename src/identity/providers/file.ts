// The file provider: SVIDs and bundles as PEM files that something else keeps fresh (cert-manager's
// csi-driver-spiffe, a kubelet-mounted Secret, `meshauth dev-ca issue`). Those writers replace
// files atomically by rename or by swapping the kubelet `..data` symlink, which a watch on the
// file's own inode never sees; so the provider watches the parent directories, debounces, and
// re-stats every file periodically as a safety net. A file that is missing, half-written or
// garbage is reported and its last good content stays in force; a source that was good is first
// given a moment to finish its replacement (writers replace a certificate and its key one after
// the other), and is reported only if it still fails after that.
import { watch, type FSWatcher } from 'node:fs';
import { readFile, stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { X509Certificate, createHash, createPrivateKey } from 'node:crypto';
import type { Logger } from '../../util/logger.js';
import { silentLogger } from '../../util/logger.js';
import { pemCertificatesToDer } from '../bundle-set.js';
import { SpiffeId } from '../spiffe-id.js';
import { ProviderError, type IdentityProvider, type ProviderSink, type RawBundles, type RawSvid } from '../types.js';
import type { FileOptions } from './file-options.js';

export interface FileSvidSource {
  /** PEM certificate chain, leaf first. */
  certChain: string;
  /** PEM private key of the leaf (PKCS#8 expected; SEC1 and PKCS#1 are accepted too). */
  privateKey: string;
  /** PEM CA certificates of the trust domain named in the leaf's SPIFFE ID. */
  bundle?: string;
}

export interface FileProviderOptions {
  svids: FileSvidSource[];
  /** Federated trust domains: name → PEM file of its CA certificates. */
  bundles?: Record<string, string>;
  logger?: Logger;
  /** Period of the re-stat safety net behind the directory watches; default 500 ms. */
  pollIntervalMs?: number;
}

/** Constructor options from the identity.file config section. */
export function fileProviderOptions(file: FileOptions, logger?: Logger): FileProviderOptions {
  return { svids: file.svids, bundles: file.bundles, logger };
}

// Rename and symlink-swap replacements arrive as bursts of directory events; one reload per burst.
const DEBOUNCE_MS = 50;
// The safety net behind fs.watch (which can miss events, e.g. through a symlink to another
// directory); together with the debounce it keeps pickup of a replacement under a second.
const DEFAULT_POLL_INTERVAL_MS = 500;
// How long a source that was good may read inconsistently (a replacement in progress) before its
// error is reported; its last good content stays in force either way.
const REPLACEMENT_GRACE_MS = 2_000;

interface LoadedSvid {
  svid: RawSvid;
  bundle?: { trustDomain: string; certs: Buffer[] };
}

/** One configured source with its last good content and the last failure reported for it. */
interface Source<T> {
  load(): Promise<T>;
  good?: T;
  reportedError?: string;
  /** When a source that was good started failing (performance.now()); unset while it loads. */
  failingSince?: number;
}

export class FileProvider implements IdentityProvider {
  readonly name = 'file' as const;
  private readonly logger: Logger;
  private readonly svidSources: Source<LoadedSvid>[];
  private readonly bundleSources: Source<{ trustDomain: string; certs: Buffer[] }>[];
  private readonly paths: string[];
  private readonly pollIntervalMs: number;
  private readonly watchers = new Map<string, FSWatcher>();
  private readonly warnedKeyModes = new Set<string>();
  private sink?: ProviderSink;
  private stopped = false;
  private pollTimer?: NodeJS.Timeout;
  private debounceTimer?: NodeJS.Timeout;
  private inFlight?: Promise<void>;
  private reloadAgain = false;
  /** stat() signature of every file as of the last load; the poll reloads when it changes. */
  private seenSignature?: string;
  private pushed = { svids: '', bundles: '' };

  constructor(options: FileProviderOptions) {
    this.logger = (options.logger ?? silentLogger()).child({ provider: 'file' });
    this.svidSources = options.svids.map((source) => ({ load: () => this.loadSvid(source) }));
    this.bundleSources = Object.entries(options.bundles ?? {}).map(([trustDomain, path]) => ({
      load: async () => ({ trustDomain, certs: parseCertificates(await readText(path), path) }),
    }));
    const files = [
      ...options.svids.flatMap((source) => [source.certChain, source.privateKey, ...(source.bundle ? [source.bundle] : [])]),
      ...Object.values(options.bundles ?? {}),
    ];
    this.paths = [...new Set(files.map((path) => resolve(path)))];
    this.pollIntervalMs = options.pollIntervalMs ?? DEFAULT_POLL_INTERVAL_MS;
  }

  /** Loads the files once (so the first state is pushed before this resolves), then watches them. */
  async start(sink: ProviderSink): Promise<void> {
    if (this.stopped) throw new Error('the file provider was stopped; create a new one');
    if (this.sink) throw new Error('the file provider is already started');
    this.sink = sink;
    // Watch before the first load, so a replacement during it is not missed.
    this.ensureWatchers();
    this.runReload();
    await this.inFlight;
    this.schedulePoll();
  }

  /** Files hold what they hold: the wanted IDs do not change what is delivered. */
  setWanted(_ids: readonly SpiffeId[]): void {}

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.pollTimer);
    clearTimeout(this.debounceTimer);
    for (const watcher of this.watchers.values()) watcher.close();
    this.watchers.clear();
    await this.inFlight;
  }

  /** Watches each directory that holds a configured file; a directory that cannot be watched
   *  now (not there yet) is retried on every poll, and the poll covers it meanwhile. */
  private ensureWatchers(): void {
    for (const dir of new Set(this.paths.map((path) => dirname(path)))) {
      if (this.watchers.has(dir)) continue;
      try {
        const watcher = watch(dir, () => this.reloadSoon(DEBOUNCE_MS));
        watcher.on('error', (err) => {
          // The directory went away (or similar): drop the watcher; the poll re-creates it.
          this.logger.debug({ dir, err }, 'directory watch failed');
          watcher.close();
          this.watchers.delete(dir);
          this.reloadSoon(DEBOUNCE_MS);
        });
        this.watchers.set(dir, watcher);
      } catch (err) {
        this.logger.debug({ dir, err }, 'cannot watch directory yet');
      }
    }
  }

  private reloadSoon(delayMs: number): void {
    if (this.stopped || !this.sink) return;
    clearTimeout(this.debounceTimer);
    this.debounceTimer = setTimeout(() => this.runReload(), delayMs);
  }

  private runReload(): void {
    if (this.stopped) return;
    if (this.inFlight) {
      this.reloadAgain = true;
      return;
    }
    const run = this.reload().catch((err: unknown) => {
      // reload reports file problems itself; this is a sink that threw.
      this.logger.error({ err }, 'file provider could not deliver its state');
    });
    this.inFlight = run.finally(() => {
      this.inFlight = undefined;
      if (this.reloadAgain) {
        this.reloadAgain = false;
        this.runReload();
      }
    });
  }

  private schedulePoll(): void {
    if (this.stopped) return;
    this.pollTimer = setTimeout(() => {
      void this.poll().finally(() => this.schedulePoll());
    }, this.pollIntervalMs);
  }

  private async poll(): Promise<void> {
    this.ensureWatchers();
    const signature = await this.signature();
    if (signature !== this.seenSignature) this.reloadSoon(0);
  }

  /** Identity of every file's current content as far as stat() tells: following symlinks, so a
   *  `..data` swap or a rename shows as a new inode. */
  private async signature(): Promise<string> {
    const parts = await Promise.all(
      this.paths.map(async (path) => {
        try {
          const info = await stat(path);
          return `${info.dev}:${info.ino}:${info.size}:${info.mtimeMs}:${info.ctimeMs}`;
        } catch (err) {
          return `error:${(err as NodeJS.ErrnoException).code ?? 'unknown'}`;
        }
      }),
    );
    return parts.join('|');
  }

  private async reload(): Promise<void> {
    const sink = this.sink;
    if (!sink) return;
    // Taken before reading: a change that lands during the read shows up at the next poll.
    const signature = await this.signature();
    const [svids, bundles] = await Promise.all([settle(this.svidSources), settle(this.bundleSources)]);
    if (this.stopped) return;
    this.seenSignature = signature;
    const now = performance.now();
    const svidsSettling = absorb(this.svidSources, svids, sink, now);
    const bundlesSettling = absorb(this.bundleSources, bundles, sink, now);
    if (svidsSettling || bundlesSettling) this.reloadSoon(REPLACEMENT_GRACE_MS);
    this.push(sink);
  }

  /** Pushes the last good content of every source, each half only when it changed. */
  private push(sink: ProviderSink): void {
    const loaded = this.svidSources.flatMap((source) => (source.good ? [source.good] : []));
    const bundles: RawBundles = new Map();
    const addBundle = (trustDomain: string, certs: Buffer[]): void => {
      const merged = bundles.get(trustDomain) ?? [];
      for (const cert of certs) if (!merged.some((known) => known.equals(cert))) merged.push(cert);
      bundles.set(trustDomain, merged);
    };
    for (const { bundle } of loaded) if (bundle) addBundle(bundle.trustDomain, bundle.certs);
    for (const source of this.bundleSources) if (source.good) addBundle(source.good.trustDomain, source.good.certs);

    const svids = loaded.map(({ svid }) => svid);
    const svidsKey = digest(svids.flatMap((svid) => [...svid.chain, svid.key]));
    const bundlesKey = digest([...bundles].sort(([a], [b]) => a.localeCompare(b)).flatMap(([td, certs]) => [Buffer.from(td), ...certs]));
    if (bundlesKey !== this.pushed.bundles && bundles.size > 0) {
      this.pushed.bundles = bundlesKey;
      sink.bundles(bundles);
    }
    if (svidsKey !== this.pushed.svids && svids.length > 0) {
      this.pushed.svids = svidsKey;
      sink.svids(svids);
      for (const svid of svids) {
        const leaf = new X509Certificate(svid.chain[0]!);
        this.logger.info({ spiffeId: svid.claimedId, serial: leaf.serialNumber, notAfter: leaf.validTo }, 'loaded SVID from files');
      }
    }
  }

  private async loadSvid(source: FileSvidSource): Promise<LoadedSvid> {
    const [chainText, keyText, bundleText] = await Promise.all([
      readText(source.certChain),
      readText(source.privateKey),
      source.bundle === undefined ? undefined : readText(source.bundle),
    ]);
    await this.warnIfKeyFileIsOpen(source.privateKey);
    const chain = parseCertificates(chainText, source.certChain);
    const leaf = new X509Certificate(chain[0]!);
    let key;
    try {
      key = createPrivateKey(keyText);
    } catch (err) {
      throw new ProviderError('malformed', `${source.privateKey} holds no readable private key (half-written?)`, { cause: err });
    }
    // Writers that replace the two files one after the other leave a moment where they do not
    // belong together; pushing that would only make the store reject it.
    if (!leaf.checkPrivateKey(key)) {
      throw new ProviderError('malformed', `${source.privateKey} does not belong to the leaf in ${source.certChain} (replacement in progress?)`);
    }
    const id = leafSpiffeId(leaf);
    const svid: RawSvid = { chain, key: key.export({ type: 'pkcs8', format: 'der' }), ...(id ? { claimedId: id.toString() } : {}) };
    if (bundleText === undefined || source.bundle === undefined) return { svid };
    if (!id) {
      throw new ProviderError('malformed', `the leaf in ${source.certChain} has no SPIFFE ID, so the trust domain of ${source.bundle} is unknown`);
    }
    return { svid, bundle: { trustDomain: id.trustDomain, certs: parseCertificates(bundleText, source.bundle) } };
  }

  private async warnIfKeyFileIsOpen(path: string): Promise<void> {
    let mode: number;
    try {
      mode = (await stat(path)).mode & 0o777;
    } catch {
      return; // Gone between read and stat: the next reload reports it.
    }
    const warning = `${path}:${mode}`;
    if ((mode & ~0o600) === 0 || this.warnedKeyModes.has(warning)) return;
    this.warnedKeyModes.add(warning);
    this.logger.warn({ path, mode: `0${mode.toString(8)}` }, 'private key file is readable by more than its owner; it should be 0600');
  }
}

async function readText(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw new ProviderError('io', `cannot read ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

/** Every PEM certificate in text, each one parsed; a truncated last block is an error, not a shorter chain. */
function parseCertificates(text: string, path: string): Buffer[] {
  const begun = text.match(/-----BEGIN CERTIFICATE-----/g)?.length ?? 0;
  let ders: Buffer[];
  try {
    ders = pemCertificatesToDer(text);
  } catch {
    throw new ProviderError('malformed', `${path} holds no PEM certificate (empty or half-written?)`);
  }
  if (ders.length !== begun) throw new ProviderError('malformed', `${path} ends inside a certificate (half-written?)`);
  for (const [index, der] of ders.entries()) {
    try {
      new X509Certificate(der);
    } catch (err) {
      throw new ProviderError('malformed', `${path}: certificate ${index + 1} does not parse`, { cause: err });
    }
  }
  return ders;
}

/** The SPIFFE ID in the leaf's URI SAN, if it carries exactly one that parses. */
function leafSpiffeId(leaf: X509Certificate): SpiffeId | undefined {
  const uris = [...(leaf.subjectAltName ?? '').matchAll(/(?:^|, )URI:([^,\s]+)/g)].map((match) => match[1]!);
  return uris.length === 1 ? SpiffeId.tryParse(uris[0]!) : undefined;
}

/** Runs every source's load; a failure becomes a ProviderError value instead of a rejection. */
function settle<T>(sources: Source<T>[]): Promise<(T | ProviderError)[]> {
  return Promise.all(
    sources.map((source) =>
      source.load().catch((err: unknown) =>
        err instanceof ProviderError ? err : new ProviderError('io', (err as Error).message, { cause: err }),
      ),
    ),
  );
}

/** Keeps each source's good outcome; reports each failure once per distinct message (unrelated
 *  events in a watched directory would otherwise repeat it on every reload), and a source that
 *  was good only once its replacement grace is over. Returns true while a failing source is
 *  within that grace, so the caller reads it again once the grace is over. */
function absorb<T>(sources: Source<T>[], outcomes: (T | ProviderError)[], sink: ProviderSink, now: number): boolean {
  let settling = false;
  for (const [index, source] of sources.entries()) {
    const outcome = outcomes[index]!;
    if (!(outcome instanceof ProviderError)) {
      source.good = outcome;
      source.reportedError = undefined;
      source.failingSince = undefined;
      continue;
    }
    if (source.good !== undefined) {
      source.failingSince ??= now;
      if (now - source.failingSince < REPLACEMENT_GRACE_MS) {
        settling = true;
        continue;
      }
    }
    if (outcome.message !== source.reportedError) {
      source.reportedError = outcome.message;
      sink.error(outcome);
    }
  }
  return settling;
}

function digest(parts: Buffer[]): string {
  const hash = createHash('sha256');
  for (const part of parts) hash.update(`${part.length}:`).update(part);
  return hash.digest('hex');
}
