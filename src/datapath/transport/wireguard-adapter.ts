import { isIP } from 'node:net';
import { WireGuardTransport, type WireGuardOptions } from './wireguard.js';
import type { NodeFrame } from '../../handshake/frames.js';
import type { Transport, TransportPeer } from './transport.js';

/**
 * WireGuard as the agent's transport. The node's public key and endpoint travel in its node
 * frame; a peer is programmed only from an authenticated node handshake, with that handshake's
 * exporter-derived preshared key, so the tunnel cannot come up without it.
 */
export class WireGuardAdapter implements Transport {
  readonly kind = 'wireguard';
  private wireguard?: WireGuardTransport;

  constructor(
    private readonly options: WireGuardOptions,
    /** This node's address as peers reach it (its node address). */
    private readonly localAddress: () => string | undefined,
  ) {}

  async start(): Promise<void> {
    this.wireguard = await WireGuardTransport.open(this.options);
  }

  localFrame(): Omit<NodeFrame, 'nodeName' | 'podCidrs'> {
    const wireguard = this.opened();
    const address = this.localAddress();
    const host = address && isIP(address) === 6 ? `[${address}]` : address;
    return { wireguard: { publicKey: wireguard.publicKey, ...(host && { endpoint: `${host}:${wireguard.listenPort}` }) } };
  }

  async upsert(peer: TransportPeer): Promise<void> {
    const remote = peer.frame.wireguard;
    if (!remote) throw new Error(`node ${peer.node} sent no WireGuard key in its node frame (is it running another transport?)`);
    await this.opened().upsertPeer({
      nodeName: peer.node,
      publicKey: remote.publicKey,
      ...(remote.endpoint !== undefined && { endpoint: remote.endpoint }),
      allowedIps: peer.frame.podCidrs,
      presharedKey: peer.keys.wireguardPsk,
    });
  }

  async remove(node: string): Promise<void> {
    await this.opened().removePeer(node);
  }

  async close(): Promise<void> {
    await this.wireguard?.close();
  }

  private opened(): WireGuardTransport {
    if (!this.wireguard) throw new Error('the WireGuard transport is not started');
    return this.wireguard;
  }
}
