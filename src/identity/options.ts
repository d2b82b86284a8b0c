import { z } from 'zod';
import { durationMs } from '../util/zod-helpers.js';
import { spiffeIdString } from './spiffe-id-schemas.js';
import { devOptionsSchema } from './providers/dev-options.js';
import { fileOptionsSchema } from './providers/file-options.js';
import { spiffeOptionsSchema } from './providers/spiffe-options.js';
import { spireDelegatedOptionsSchema } from './providers/spire-delegated-options.js';
import { vaultOptionsSchema } from './providers/vault-options.js';

/** The identity section of the agent config: the provider, its options, and how SVIDs are checked. */
export const identityOptionsSchema = z
  .strictObject({
    provider: z.enum(['dev', 'file', 'spiffe', 'spire-delegated', 'vault']).default('dev'),
    /** The agent's own identity for node ↔ node handshakes; default spiffe://<trustDomain>/meshauth/node/<nodeName>. */
    nodeId: spiffeIdString.optional(),
    /** Allowance for clocks that disagree when checking certificate validity times. */
    clockSkew: durationMs.prefault('30s'),
    /** Longest accepted chain, leaf and intermediates (the trust anchor not counted). */
    maxChainDepth: z.number().int().min(1).max(16).default(5),
    dev: devOptionsSchema.prefault({ ttl: '1h' }),
    file: fileOptionsSchema.optional(),
    spiffe: spiffeOptionsSchema.optional(),
    spireDelegated: spireDelegatedOptionsSchema.optional(),
    vault: vaultOptionsSchema.optional(),
  })
  .superRefine((identity, ctx) => {
    const section = { file: 'file', 'spire-delegated': 'spireDelegated', vault: 'vault' } as const;
    const needed = identity.provider in section ? section[identity.provider as keyof typeof section] : undefined;
    if (needed && identity[needed] === undefined) {
      ctx.addIssue({ code: 'custom', path: [needed], message: `provider "${identity.provider}" needs an identity.${needed} section` });
    }
  });

export type IdentityOptions = z.output<typeof identityOptionsSchema>;
