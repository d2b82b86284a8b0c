import { IpsecTransport } from './ipsec.js';
import type { IpsecOptions } from './ipsec-options.js';
import type { NodeFrame } from '../../handshake/frames.js';
import type { Logger } from '../../util/logger.js';
import type { Transport, TransportPeer } from './transport.js';

// SPIs are allocated against the kernel's state table (asynchronous), but a node frame is built
// inside the handshake (synchronous): a small pool of reserved SPIs bridges the two.
const SPI_POOL = 16;
// An SPI sent in a frame whose handshake never led to a peer is given back after this long
// (far beyond any handshake's timeout).
const UNUSED_SPI_MS = 60_000;

/**
 * IPsec (kernel XFRM) as the agent's transport: per node pair, ESP tunnel-mode states keyed from
 * the node handshake's exporter, on the SPIs the two sides exchanged in that handshake's frames.
 * Each re-authentication brings new SPIs and keys, installed make-before-break.
 */
export class IpsecAdapter implements Transport {
  readonly kind = 'ipsec';
  private ipsec?: IpsecTransport;
  private pool: number[] = [];
  /** SPIs sent in node frames and not yet installed, with when they were sent. */
  private readonly handedOut = new Map<number, number>();
  private refilling?: Promise<void>;

  constructor(
    private readonly options: IpsecOptions,
    /** This node's address and pod CIDRs, from cluster state. */
    private readonly self: () => { address: string; podCidrs: string[] } | undefined,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    this.ipsec = await IpsecTransport.open(this.options);
    this.pool = await this.ipsec.allocateSpis(SPI_POOL);
  }

  /** One fresh inbound SPI for this peer and handshake; a handshake without one fails and is retried. */
  localFrame(peer: string): Omit<NodeFrame, 'nodeName' | 'podCidrs'> {
    this.releaseUnused();
    const spi = this.pool.shift();
    if (spi !== undefined) this.handedOut.set(spi, Date.now());
    this.refill();
    if (spi === undefined) throw new Error(`no IPsec SPI reserved for a handshake with ${peer} yet`);
    return { ipsecSpis: [spi] };
  }

  async upsert(peer: TransportPeer): Promise<void> {
    const self = this.self();
    const outSpi = peer.frame.ipsecSpis?.[0];
    if (!self) throw new Error('this node is not in the cluster state: no address for the IPsec tunnel');
    if (outSpi === undefined || peer.localSpi === undefined) throw new Error(`node ${peer.node} sent no IPsec SPI in its node frame (is it running another transport?)`);
    await this.opened().setPeer({
      nodeName: peer.node,
      localAddress: self.address,
      remoteAddress: peer.address,
      localCidrs: self.podCidrs,
      remoteCidrs: peer.frame.podCidrs,
      inSpi: peer.localSpi,
      outSpi,
      inKey: peer.keys.espInbound,
      outKey: peer.keys.espOutbound,
    });
    this.handedOut.delete(peer.localSpi);
  }

  async remove(node: string): Promise<void> {
    await this.opened().removePeer(node);
  }

  async close(): Promise<void> {
    await this.refilling;
    if (this.ipsec) this.ipsec.releaseSpis(this.pool);
    await this.ipsec?.close();
  }

  /** Gives back the SPIs of handshakes that failed after this node sent its frame. */
  private releaseUnused(): void {
    const cutoff = Date.now() - UNUSED_SPI_MS;
    const unused = [...this.handedOut].filter(([, sentAt]) => sentAt < cutoff).map(([spi]) => spi);
    for (const spi of unused) this.handedOut.delete(spi);
    if (unused.length > 0) this.ipsec?.releaseSpis(unused);
  }

  private refill(): void {
    if (this.refilling || this.pool.length >= SPI_POOL / 2 || !this.ipsec) return;
    const ipsec = this.ipsec;
    this.refilling = ipsec
      .allocateSpis(SPI_POOL - this.pool.length)
      .then((spis) => void this.pool.push(...spis))
      .catch((err: unknown) => this.logger.warn({ err: (err as Error).message }, 'reserving IPsec SPIs failed'))
      .finally(() => (this.refilling = undefined));
  }

  private opened(): IpsecTransport {
    if (!this.ipsec) throw new Error('the IPsec transport is not started');
    return this.ipsec;
  }
}
