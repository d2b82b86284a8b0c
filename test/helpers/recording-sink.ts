// A ProviderSink that records every call, for provider tests that wait for a state to arrive.
import { EventEmitter } from 'node:events';
import type { ProviderError, ProviderSink, RawBundles, RawSvid } from '../../src/identity/types.js';

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

  /** Resolves with find()'s first non-undefined result, re-checked after every sink call. */
  until<T>(find: () => T | undefined, what: string, timeoutMs = 10_000): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = find();
        if (found === undefined) return;
        finish();
        resolve(found);
      };
      const timer = setTimeout(() => {
        finish();
        const errors = this.errors.map((err) => `${err.kind}: ${err.message}`).join('; ');
        reject(new Error(`timed out waiting for ${what} (${this.svidStates.length} SVID states, last ${JSON.stringify(this.latestIds())}; ${this.bundleStates.length} bundle states; errors: ${errors || 'none'})`));
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
