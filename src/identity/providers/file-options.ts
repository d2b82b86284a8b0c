import { z } from 'zod';
import { trustDomainName } from '../spiffe-id-schemas.js';

/** identity.file: PEM files on disk, watched for atomic replacement. */
export const fileOptionsSchema = z.strictObject({
  svids: z
    .array(
      z.strictObject({
        /** PEM certificate chain, leaf first. */
        certChain: z.string(),
        /** PEM PKCS#8 private key (file mode 0600). */
        privateKey: z.string(),
        /** PEM CA certificates of the SVID's own trust domain. */
        bundle: z.string().optional(),
      }),
    )
    .min(1),
  /** Federated trust domains: name → PEM file of its CA certificates. */
  bundles: z.record(trustDomainName, z.string()).default({}),
});
export type FileOptions = z.infer<typeof fileOptionsSchema>;
