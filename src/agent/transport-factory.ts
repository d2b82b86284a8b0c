import { join } from 'node:path';
import type { Config } from '../config/config.js';
import type { Logger } from '../util/logger.js';
import { NoTransport, type Transport } from './transport.js';
import { IpsecAdapter } from './ipsec-adapter.js';
import { WireGuardAdapter } from './wireguard-adapter.js';

/** The payload transport the config selects; `self` is this node as cluster state knows it. */
export function createTransport(config: Config, logger: Logger, self: () => { address: string; podCidrs: string[] } | undefined): Transport {
  switch (config.transport.mode) {
    case 'none':
      return new NoTransport();
    case 'wireguard': {
      const wg = config.transport.wireguard;
      return new WireGuardAdapter(
        { stateDir: join(config.stateDir, 'wireguard'), interfaceName: wg.interface, listenPort: wg.listenPort, implementation: wg.implementation, mtu: wg.mtu, logger },
        () => self()?.address,
      );
    }
    case 'ipsec':
      return new IpsecAdapter({ logger }, self, logger);
  }
}
