// A ProviderSink that records every call, so provider tests (and the shared conformance suite)
// can wait for a state to arrive and count calls after stop().
import { EventEmitter } from 'node:events';
import type { SpiffeId } from '../../src/identity/spiffe-id.js';
import type { IdentityProvider, ProviderError, ProviderSink, RawBundles, RawSvid } from '../../src/identity/types.js';

// Generous because two cores run several test files at once and RSA key generation is slow.
const DELIVERY_TIMEOUT_MS = 15_000;

/** A sink that records every call, so tests can wait for a state and count calls after stop().
 *  Exported for provider-specific tests too. */
export class RecordingSink implements ProviderSink {
  readonly svidStates: RawSvid[][] = [];
  readonly bundleStates: RawBundles[] = [];
  readonly errors: ProviderError[] = [];
  private readonly events = new EventEmitter();

  svids(svids: RawSvid[]): void {
    this.svidStates.push([...svids]);
    this.events.emit('call');
  }

  bundles(bundles: RawBundles): void {
    this.bundleStates.push(new Map(bundles));
    this.events.emit('call');
  }

  error(err: ProviderError): void {
    this.errors.push(err);
    this.events.emit('call');
  }

  /** The IDs of the latest SVID state, in order. */
  latestIds(): string[] | undefined {
    return this.svidStates.at(-1)?.map((svid) => svid.claimedId ?? '?');
  }

  errorKinds(): string[] {
    return this.errors.map((err) => err.kind);
  }

  get calls(): number {
    return this.svidStates.length + this.bundleStates.length + this.errors.length;
  }

  /** Resolves with find()'s first result other than undefined or false, re-checked after every sink call. */
  until<T>(find: () => T | undefined | false, what: string, timeoutMs = DELIVERY_TIMEOUT_MS): Promise<T> {
    return new Promise((resolve, reject) => {
      // Runs inside the provider's sink call, so a failed check must reject here, never throw into the provider.
      const check = (): void => {
        let found: T | undefined | false;
        try {
          found = find();
        } catch (err) {
          finish();
          reject(err instanceof Error ? err : new Error(String(err)));
          return;
        }
        if (found === undefined || found === false) return;
        finish();
        resolve(found);
      };
      const timer = setTimeout(() => {
        finish();
        const errors = this.errors.map((err) => `${err.kind}: ${err.message}`).join('; ');
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${this.svidStates.length} SVID states, ${this.bundleStates.length} bundle states, errors: ${errors || 'none'})`));
      }, timeoutMs);
      const finish = (): void => {
        clearTimeout(timer);
        this.events.off('call', check);
      };
      this.events.on('call', check);
      check();
    });
  }
}

/** For sink.until: the latest SVID state holds exactly these IDs, in this order. */
export const idsAre = (sink: RecordingSink, ids: string[]) => () => (JSON.stringify(sink.latestIds()) === JSON.stringify(ids) ? true : undefined);

/** For sink.until: the latest bundles are keyed by exactly these trust domains. */
export const bundleDomainsAre = (sink: RecordingSink, domains: string[]) => () =>
  JSON.stringify([...(sink.bundleStates.at(-1)?.keys() ?? [])].sort()) === JSON.stringify(domains) ? true : undefined;

/**
 * Starts a provider (wanting `wanted`, when given) on a fresh sink and runs `body`; whatever
 * happens, stops the provider and then calls `close` (its server's).
 */
export async function withRunningProvider(
  provider: IdentityProvider,
  close: () => Promise<void>,
  body: (sink: RecordingSink) => Promise<void>,
  wanted?: readonly SpiffeId[],
): Promise<void> {
  const sink = new RecordingSink();
  try {
    if (wanted) provider.setWanted(wanted);
    await provider.start(sink);
    await body(sink);
  } finally {
    await provider.stop();
    await close();
  }
}
