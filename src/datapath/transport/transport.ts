import type { NodeFrame } from '../../handshake/frames.js';
import type { TransportKeys } from '../../handshake/key-material.js';

/** A node the transport carries traffic to, as a successful node handshake described it. */
export interface TransportPeer {
  node: string;
  /** The node's address (from cluster state, checked against the handshake's source). */
  address: string;
  /** What the peer said about itself inside the authenticated handshake. */
  frame: NodeFrame;
  /** Keys derived from that handshake's TLS exporter. */
  keys: TransportKeys;
  /** The inbound SPI this node allocated for the peer in that handshake (IPsec). */
  localSpi?: number;
}

/**
 * The payload transport between nodes. The agent calls it only with peers that just completed a
 * node handshake, so the transport exists only after mutual authentication and its keys change
 * with every re-authentication.
 */
export interface Transport {
  readonly kind: 'wireguard' | 'ipsec' | 'none';
  /** Prepares the local side (keys, interface). */
  start(): Promise<void>;
  /** What this node puts in its node frame for `peer` (WireGuard key and endpoint, IPsec SPIs). */
  localFrame(peer: string): Omit<NodeFrame, 'nodeName' | 'podCidrs'>;
  /** Installs or re-keys the peer (make-before-break). */
  upsert(peer: TransportPeer): Promise<void>;
  /** Removes the peer's keys, states and routes. */
  remove(node: string): Promise<void>;
  /** Stops background work; leaves the programmed transport in place. */
  close(): Promise<void>;
}

/** This node's frame for a node handshake with `peer`: its name and pod CIDRs, plus what the
 *  transport puts in for that peer. On its own so that tests check the very frames agents send. */
export function assembleNodeFrame(nodeName: string, podCidrs: string[], transport: Pick<Transport, 'localFrame'>, peer: string): NodeFrame {
  return { nodeName, podCidrs, ...transport.localFrame(peer) };
}

/** No payload transport of our own (the CNI carries traffic): node handshakes still gate pairs. */
export class NoTransport implements Transport {
  readonly kind = 'none';
  async start(): Promise<void> {}
  localFrame(): Omit<NodeFrame, 'nodeName' | 'podCidrs'> {
    return {};
  }
  async upsert(): Promise<void> {}
  async remove(): Promise<void> {}
  async close(): Promise<void> {}
}
