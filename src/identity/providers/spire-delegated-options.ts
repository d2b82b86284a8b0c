import { z } from 'zod';
import { grpcEndpointAddress } from './grpc-endpoint.js';

const selector = z.strictObject({ type: z.string().min(1), value: z.string().min(1) });

/** identity.spireDelegated: SPIRE agent's Delegated Identity API on its admin socket. */
export const spireDelegatedOptionsSchema = z.strictObject({
  /** unix:///abs/path (or tcp://IP:port) of the SPIRE agent admin socket (agent.conf admin_socket_path). */
  endpoint: grpcEndpointAddress,
  /** Selectors of the meshauth agent's own (node) identity entry. */
  nodeSelectors: z.array(selector).min(1),
});
export type SpireDelegatedOptions = z.infer<typeof spireDelegatedOptionsSchema>;
