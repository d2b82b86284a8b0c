import { join } from 'node:path';
import type { Logger } from '../../util/logger.js';
import { NoTransport, type Transport } from './transport.js';
import { IpsecAdapter } from './ipsec-adapter.js';
import { WireGuardAdapter } from './wireguard-adapter.js';
import type { TransportOptions } from './options.js';
import type { TransportMetrics } from './metrics.js';

/** The payload transport the config's transport section selects, keeping its state (the WireGuard
 *  key) under stateDir; `self` is this node as cluster state knows it. */
export function createTransport(
  transport: TransportOptions,
  stateDir: string,
  logger: Logger,
  metrics: TransportMetrics,
  self: () => { address: string; podCidrs: string[] } | undefined,
): Transport {
  switch (transport.mode) {
    case 'none':
      return new NoTransport();
    case 'wireguard': {
      const wg = transport.wireguard;
      return new WireGuardAdapter(
        { stateDir: join(stateDir, 'wireguard'), interfaceName: wg.interface, listenPort: wg.listenPort, implementation: wg.implementation, mtu: wg.mtu, logger, metrics },
        () => self()?.address,
      );
    }
    case 'ipsec':
      return new IpsecAdapter({ logger, metrics }, self, logger);
  }
}
