import type { AuthEntry } from '../datapath/gate/datapath.js';
import type { AuthKey } from '../datapath/gate/layout.js';
import type { AuthMap } from './cache.js';

/**
 * The auth map of an agent running with the datapath disabled (`datapath.enabled: false`, e.g.
 * on a machine without BPF): pairs are authenticated and tracked, nothing is enforced.
 */
export class MemoryAuthMap implements AuthMap {
  private readonly entries = new Map<string, AuthEntry>();

  setAuth(key: AuthKey, expiryNs: bigint): void {
    this.entries.set(keyString(key), { key, expiryNs });
  }

  deleteAuth(key: AuthKey): boolean {
    return this.entries.delete(keyString(key));
  }

  batchSetAuth(entries: readonly AuthEntry[]): void {
    for (const entry of entries) this.setAuth(entry.key, entry.expiryNs);
  }

  dumpAuth(): AuthEntry[] {
    return [...this.entries.values()];
  }
}

function keyString(key: AuthKey): string {
  return `${key.localIdentity}:${key.remoteIdentity}:${key.remoteNode}:${key.authType ?? 1}`;
}
