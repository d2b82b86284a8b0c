import type { Config } from '../config/config.js';
import type { Logger } from '../util/logger.js';
import { NoTransport, type Transport } from './transport.js';

/** The payload transport the config selects. */
export async function createTransport(_config: Config, _logger: Logger): Promise<Transport> {
  return new NoTransport();
}
