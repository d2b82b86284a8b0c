import type { Logger } from '../../util/logger.js';
import type { IdentityOptions } from '../options.js';
import type { IdentityProvider } from '../types.js';
import { DevProvider, devProviderOptions } from './dev.js';
import { FileProvider, fileProviderOptions } from './file.js';
import { SpiffeProvider } from './spiffe.js';
import { SpireDelegatedProvider } from './spire-delegated.js';
import { VaultProvider } from './vault.js';

/** The provider that `identity.provider` names, built from its config section; the dev CA also
 *  needs the node's trust domain and state directory, Vault the node's own identity. */
export function createProvider(identity: IdentityOptions, node: { trustDomain: string; stateDir: string; nodeId: string }, logger: Logger): IdentityProvider {
  switch (identity.provider) {
    case 'dev':
      return new DevProvider(devProviderOptions(identity.dev, { trustDomain: node.trustDomain, stateDir: node.stateDir, logger }));
    case 'file':
      return new FileProvider(fileProviderOptions(requireSection(identity.file, 'file'), logger));
    case 'spiffe':
      return new SpiffeProvider(identity.spiffe ?? {}, { logger });
    case 'spire-delegated':
      return new SpireDelegatedProvider(requireSection(identity.spireDelegated, 'spireDelegated'), { logger });
    case 'vault':
      return new VaultProvider(requireSection(identity.vault, 'vault'), { logger, nodeId: node.nodeId });
  }
}

// The config schema already refuses a provider without its section; this keeps the types honest.
function requireSection<T>(section: T | undefined, name: string): T {
  if (section === undefined) throw new Error(`identity.${name} is required for this provider`);
  return section;
}
