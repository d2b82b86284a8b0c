import { IpsecTransport } from './ipsec.js';
import type { IpsecOptions } from './ipsec-options.js';
import { SpiPool } from './ipsec-spi-pool.js';
import type { NodeFrame } from '../../handshake/frames.js';
import type { Logger } from '../../util/logger.js';
import type { Transport, TransportPeer } from './transport.js';

/**
 * IPsec (kernel XFRM) as the agent's transport: per node pair, ESP tunnel-mode states keyed from
 * the node handshake's exporter, on the SPIs the two sides exchanged in that handshake's frames.
 * Each re-authentication brings new SPIs and keys, installed make-before-break.
 */
export class IpsecAdapter implements Transport {
  readonly kind = 'ipsec';
  private ipsec?: IpsecTransport;
  private spis?: SpiPool;

  constructor(
    private readonly options: IpsecOptions,
    /** This node's address and pod CIDRs, from cluster state. */
    private readonly self: () => { address: string; podCidrs: string[] } | undefined,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    this.ipsec = await IpsecTransport.open(this.options);
    this.spis = new SpiPool(this.ipsec, this.logger, (reason) => this.options.metrics?.spiRefusals.inc({ reason }));
    await this.spis.fill();
  }

  /** One fresh inbound SPI for this peer and handshake; a handshake without one fails and is retried. */
  localFrame(peer: string): Omit<NodeFrame, 'nodeName' | 'podCidrs'> {
    if (!this.spis) throw new Error('the IPsec transport is not started');
    return { ipsecSpis: [this.spis.take(peer)] };
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
    this.spis?.installed(peer.localSpi);
  }

  async remove(node: string): Promise<void> {
    await this.opened().removePeer(node);
  }

  async close(): Promise<void> {
    await this.spis?.close();
    await this.ipsec?.close();
  }

  private opened(): IpsecTransport {
    if (!this.ipsec) throw new Error('the IPsec transport is not started');
    return this.ipsec;
  }
}
