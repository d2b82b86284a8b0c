import { z } from 'zod';
import { durationMs } from '../../util/zod-helpers.js';

/** identity.dev: the embedded development CA. */
export const devOptionsSchema = z.strictObject({
  /** Where the CA key and certificate live (0600/0700); default <stateDir>/dev-ca. */
  caDir: z.string().optional(),
  /** Lifetime of issued SVIDs; they are renewed at half-life. */
  ttl: durationMs.prefault('1h'),
});
export type DevOptions = z.infer<typeof devOptionsSchema>;
