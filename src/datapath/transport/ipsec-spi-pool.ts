import type { Logger } from '../../util/logger.js';

// SPIs are allocated against the kernel's state table (asynchronous), but a node frame is built
// inside the handshake (synchronous): a small pool of reserved SPIs bridges the two.
const POOL_SIZE = 16;
// SPIs one peer may hold sent and not yet installed: one for each of two crossing handshakes.
// A peer's further handshakes are refused (and retried) until one completes or goes stale, so
// no peer can drain the pool that every other peer's handshakes draw on.
const PER_PEER = 2;
// An SPI sent in a frame whose handshake never led to a peer is given back after this long
// (far beyond any handshake's timeout).
const UNUSED_SPI_MS = 60_000;
// After this long an SPI still not installed no longer counts against its peer's share: its
// handshake has certainly ended (at the default 5 s timeout), it just has not been given back.
const STALE_SPI_MS = 15_000;

export interface SpiReservations {
  /** Reserves `count` SPIs unused in the kernel. */
  allocateSpis(count: number): Promise<number[]>;
  /** Gives reserved SPIs back. */
  releaseSpis(spis: readonly number[]): void;
}

/**
 * The inbound SPIs this node hands out in its node frames: a reserved pool, refilled in the
 * background, with each peer's share capped at PER_PEER SPIs sent and not yet installed.
 */
export class SpiPool {
  private pool: number[] = [];
  /** SPIs sent in node frames and not yet installed: the peer and when. */
  private readonly handedOut = new Map<number, { peer: string; sentAt: number }>();
  private refilling?: Promise<void>;

  constructor(
    private readonly reservations: SpiReservations,
    private readonly logger: Logger,
    /** A handshake got no SPI: why (the meshauth_transport_ipsec_spi_refusals_total label). */
    private readonly onRefused: (reason: 'peer_share' | 'pool_empty') => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  async fill(): Promise<void> {
    this.pool = await this.reservations.allocateSpis(POOL_SIZE);
  }

  /** One fresh SPI for a handshake with `peer`; throws when the peer holds its share or the pool is empty. */
  take(peer: string): number {
    this.releaseUnused();
    const held = this.outstanding(peer);
    if (held >= PER_PEER) {
      this.onRefused('peer_share');
      throw new Error(`${peer} holds ${held} IPsec SPIs of handshakes not completed yet; try again later`);
    }
    const spi = this.pool.shift();
    if (spi !== undefined) this.handedOut.set(spi, { peer, sentAt: this.now() });
    this.refill();
    if (spi === undefined) {
      this.onRefused('pool_empty');
      throw new Error(`no IPsec SPI reserved for a handshake with ${peer} yet`);
    }
    return spi;
  }

  /** The SPI was installed for its peer: it is the transport's now. */
  installed(spi: number): void {
    this.handedOut.delete(spi);
  }

  async close(): Promise<void> {
    await this.refilling;
    this.reservations.releaseSpis(this.pool);
  }

  private outstanding(peer: string): number {
    const fresh = this.now() - STALE_SPI_MS;
    let count = 0;
    for (const sent of this.handedOut.values()) if (sent.peer === peer && sent.sentAt > fresh) count++;
    return count;
  }

  /** Gives back the SPIs of handshakes that failed after this node sent its frame. */
  private releaseUnused(): void {
    const cutoff = this.now() - UNUSED_SPI_MS;
    const unused = [...this.handedOut].filter(([, sent]) => sent.sentAt < cutoff).map(([spi]) => spi);
    for (const spi of unused) this.handedOut.delete(spi);
    if (unused.length > 0) this.reservations.releaseSpis(unused);
  }

  private refill(): void {
    if (this.refilling || this.pool.length >= POOL_SIZE / 2) return;
    this.refilling = this.reservations
      .allocateSpis(POOL_SIZE - this.pool.length)
      .then((spis) => void this.pool.push(...spis))
      .catch((err: unknown) => this.logger.warn({ err: (err as Error).message }, 'reserving IPsec SPIs failed'))
      .finally(() => (this.refilling = undefined));
  }
}
