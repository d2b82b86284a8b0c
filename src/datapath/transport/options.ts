import { z } from 'zod';

/** transport: how payload travels between nodes, keyed by the node handshakes. */
export const transportOptionsSchema = z.strictObject({
  /** wireguard or ipsec: meshauth programs the tunnel; none: the CNI carries traffic (pairs are still gated). */
  mode: z.enum(['wireguard', 'ipsec', 'none']).default('wireguard'),
  wireguard: z
    .strictObject({
      interface: z.string().regex(/^[A-Za-z0-9_.-]{1,15}$/, '1-15 of A-Z a-z 0-9 _ . -').default('meshauth0'),
      listenPort: z.number().int().min(1).max(65535).default(51820),
      /** kernel (production), userspace (wireguard-go), or auto: the kernel module when available. */
      implementation: z.enum(['kernel', 'userspace', 'auto']).default('auto'),
      mtu: z.number().int().min(1280).max(65535).default(1420),
    })
    .prefault({}),
});

export type TransportOptions = z.output<typeof transportOptionsSchema>;
