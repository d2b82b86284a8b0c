import { z } from 'zod';
import { grpcEndpointAddress } from './grpc-endpoint.js';

/** identity.spiffe: the SPIFFE Workload API. */
export const spiffeOptionsSchema = z.strictObject({
  /** unix:///abs/path or tcp://IP:port; default: $SPIFFE_ENDPOINT_SOCKET. */
  endpoint: grpcEndpointAddress.optional(),
});
export type SpiffeOptions = z.infer<typeof spiffeOptionsSchema>;
