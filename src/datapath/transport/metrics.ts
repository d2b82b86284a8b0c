import { Counter, Gauge, Histogram, type Registry } from 'prom-client';

export type TransportLabel = 'wireguard' | 'ipsec';
/** add: a new peer; rekey: new keys (a re-authentication); update: endpoint or CIDRs only;
 *  remove: a peer dropped; sync: a whole-set replacement (setPeers). */
export type TransportOperation = 'add' | 'rekey' | 'update' | 'remove' | 'sync';

/** The transports' Prometheus metrics. Labels carry no node names or keys: fixed cardinality. */
export class TransportMetrics {
  readonly peers: Gauge<'transport'>;
  readonly operations: Counter<'transport' | 'operation' | 'result'>;
  readonly duration: Histogram<'transport' | 'operation'>;
  readonly spiRefusals: Counter<'reason'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.peers = new Gauge({
      name: 'meshauth_transport_peers',
      help: 'Peers (remote nodes) programmed into the transport',
      labelNames: ['transport'],
      registers,
    });
    this.operations = new Counter({
      name: 'meshauth_transport_operations_total',
      help: 'Transport programming operations by operation (add|rekey|update|remove|sync) and result (success|failure)',
      labelNames: ['transport', 'operation', 'result'],
      registers,
    });
    this.duration = new Histogram({
      name: 'meshauth_transport_operation_duration_seconds',
      help: 'Time to program the kernel for one operation (a re-key includes the make-before-break switch delay)',
      labelNames: ['transport', 'operation'],
      buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers,
    });
    this.spiRefusals = new Counter({
      name: 'meshauth_transport_ipsec_spi_refusals_total',
      help: 'Node handshakes that got no IPsec SPI for their frame (and failed, to be retried): peer_share, the peer already holds its share of SPIs of handshakes not completed; pool_empty, the reserve was not refilled yet',
      labelNames: ['reason'],
      registers,
    });
    for (const reason of ['peer_share', 'pool_empty']) this.spiRefusals.inc({ reason }, 0);
  }

  /** Times `operation`, counts its result and sets the peer gauge afterwards. */
  async observe<T>(transport: TransportLabel, operation: TransportOperation, run: () => Promise<T>, peerCount: () => number): Promise<T> {
    const end = this.duration.startTimer({ transport, operation });
    try {
      const result = await run();
      end();
      this.operations.inc({ transport, operation, result: 'success' });
      return result;
    } catch (err) {
      this.operations.inc({ transport, operation, result: 'failure' });
      throw err;
    } finally {
      this.peers.set({ transport }, peerCount());
    }
  }
}
