import { z } from 'zod';

/** identity.spiffe: the SPIFFE Workload API. */
export const spiffeOptionsSchema = z.strictObject({
  /** unix:///abs/path or tcp://IP:port; default: $SPIFFE_ENDPOINT_SOCKET. */
  endpoint: z.string().optional(),
});
export type SpiffeOptions = z.infer<typeof spiffeOptionsSchema>;
