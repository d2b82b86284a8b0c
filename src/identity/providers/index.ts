import type { Config } from '../../config/config.js';
import type { Logger } from '../../util/logger.js';
import type { IdentityProvider } from '../types.js';
import { DevProvider, devProviderOptions } from './dev.js';
import { FileProvider, fileProviderOptions } from './file.js';
import { SpiffeProvider } from './spiffe.js';
import { SpireDelegatedProvider } from './spire-delegated.js';
import { VaultProvider } from './vault.js';

/** The provider that `identity.provider` names, built from its config section. */
export function createProvider(config: Config, logger: Logger): IdentityProvider {
  const identity = config.identity;
  switch (identity.provider) {
    case 'dev':
      return new DevProvider(devProviderOptions(identity.dev, { trustDomain: config.trustDomain, stateDir: config.stateDir, logger }));
    case 'file':
      return new FileProvider(fileProviderOptions(requireSection(identity.file, 'file'), logger));
    case 'spiffe':
      return new SpiffeProvider(identity.spiffe ?? {}, { logger });
    case 'spire-delegated':
      return new SpireDelegatedProvider(requireSection(identity.spireDelegated, 'spireDelegated'), { logger });
    case 'vault':
      return new VaultProvider(requireSection(identity.vault, 'vault'), { logger });
  }
}

// The config schema already refuses a provider without its section; this keeps the types honest.
function requireSection<T>(section: T | undefined, name: string): T {
  if (section === undefined) throw new Error(`identity.${name} is required for this provider`);
  return section;
}
