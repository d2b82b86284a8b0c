import { join } from 'node:path';
import type { Config } from '../config/config.js';
import type { Logger } from '../util/logger.js';
import { NoTransport, type Transport } from './transport.js';
import { WireGuardAdapter } from './wireguard-adapter.js';

/** The payload transport the config selects. `localAddress` is this node's address for peers. */
export function createTransport(config: Config, logger: Logger, localAddress: () => string | undefined): Transport {
  switch (config.transport.mode) {
    case 'none':
      return new NoTransport();
    case 'wireguard': {
      const wg = config.transport.wireguard;
      return new WireGuardAdapter(
        { stateDir: join(config.stateDir, 'wireguard'), interfaceName: wg.interface, listenPort: wg.listenPort, implementation: wg.implementation, mtu: wg.mtu, logger },
        localAddress,
      );
    }
    case 'ipsec':
      throw new Error('transport.mode ipsec: not available in this build');
  }
}
