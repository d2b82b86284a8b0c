import { TokenBuckets } from './token-buckets.js';

/** What one class of sources may use of the responder. */
export interface AdmissionBudget {
  /** Sustained new connections per second, per source. */
  ratePerSecond: number;
  /** Connections a source may open at once after being idle (bucket size). */
  burst: number;
  /** Connections one source may hold open at the same time. */
  maxOpenPerSource: number;
  /** Connections all sources of the class may hold open together. */
  maxOpen: number;
}

export interface SourceAdmissionOptions {
  /** Known peer nodes, each keyed by node name: the connections handshakes are made of. */
  peers: AdmissionBudget;
  /** Sources that are no known node's, each keyed by address: they can only be refused (a node
   *  not known yet, a scanner), so they get a small budget of their own. */
  others: AdmissionBudget;
  /** Sources remembered; the least recently seen are forgotten (their bucket refills). */
  maxSources?: number;
  /** Monotonic milliseconds. */
  now?: () => number;
}

/** Who opened a connection: a known peer node, or an address that belongs to no node. */
export type AdmissionSource = { kind: 'peer'; node: string } | { kind: 'other'; address: string };

export type AdmissionDecision = 'admit' | 'rate' | 'per_source' | 'max_open';

/**
 * Admission for the responder, decided at accept, once the source address is mapped to a node:
 * a token bucket on new connections and a cap on open ones per source, and a cap per class.
 * Peers and other sources draw on separate budgets, so sources that are no node's (which can
 * never authenticate) cannot take the connections a peer needs, and one peer cannot take
 * another's: a peer is limited by its own bucket and cap, whatever addresses it uses.
 * Every admitted connection must be released exactly once when it closes.
 */
export class SourceAdmission {
  private readonly buckets: TokenBuckets;
  private readonly open = new Map<string, number>();
  private readonly openByKind = { peer: 0, other: 0 };

  constructor(private readonly options: SourceAdmissionOptions) {
    this.buckets = new TokenBuckets(options.maxSources ?? 16_384, options.now);
  }

  admit(source: AdmissionSource): AdmissionDecision {
    const budget = source.kind === 'peer' ? this.options.peers : this.options.others;
    const key = sourceKey(source);
    const open = this.open.get(key) ?? 0;
    if (this.openByKind[source.kind] >= budget.maxOpen) return 'max_open';
    if (open >= budget.maxOpenPerSource) return 'per_source';
    if (!this.buckets.take(key, budget)) return 'rate';
    this.open.set(key, open + 1);
    this.openByKind[source.kind]++;
    return 'admit';
  }

  release(source: AdmissionSource): void {
    const key = sourceKey(source);
    const open = this.open.get(key) ?? 0;
    if (open === 0) return;
    if (open === 1) this.open.delete(key);
    else this.open.set(key, open - 1);
    this.openByKind[source.kind]--;
  }
}

/** One key space for both kinds: a node name can never be taken for an address. */
export function sourceKey(source: AdmissionSource): string {
  return source.kind === 'peer' ? `node ${source.node}` : `address ${source.address}`;
}

/** "::ffff:10.0.0.1" (an IPv4 peer on a dual-stack socket) → "10.0.0.1", so both forms share limits and node lookups. */
export function normalizeAddress(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}
