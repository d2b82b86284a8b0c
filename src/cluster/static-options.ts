import { isIP } from 'node:net';
import { z } from 'zod';
import { spiffeIdString } from '../identity/spiffe-id-schemas.js';
import { DEFAULT_EXEMPT_PEERS, RESERVED_PEERS } from './reserved.js';

const ipAddress = z.string().refine((text) => isIP(text) !== 0, 'expected an IPv4 or IPv6 address');
const cidr = z.string().refine((text) => {
  const [address, bits, extra] = text.split('/');
  const family = isIP(address ?? '');
  const prefix = Number(bits);
  return extra === undefined && family !== 0 && Number.isInteger(prefix) && prefix >= 0 && prefix <= (family === 4 ? 32 : 128);
}, 'expected a CIDR such as 10.0.1.0/24 or fd00:1::/64');

const selector = z
  .strictObject({
    /** A peer that is not a workload (src/cluster/reserved.ts); given alone. */
    reserved: z.enum(RESERVED_PEERS).optional(),
    /** Exact SPIFFE ID or a pattern: "*" within one path segment, "**" across segments. */
    spiffeId: z.string().optional(),
    namespace: z.string().optional(),
    serviceAccount: z.string().optional(),
    labels: z.record(z.string(), z.string()).optional(),
  })
  .refine(
    (s) => s.reserved === undefined || (s.spiffeId === undefined && s.namespace === undefined && s.serviceAccount === undefined && s.labels === undefined),
    'reserved selects a peer that is not a workload: it cannot be combined with workload fields',
  );

/** cluster: the static description of nodes, endpoints and policy (used without Kubernetes). */
export const staticClusterSchema = z.strictObject({
  nodes: z
    .array(
      z.strictObject({
        name: z.string().min(1),
        address: ipAddress,
        podCidrs: z.array(cidr).default([]),
        port: z.number().int().min(1).max(65535).optional(),
      }),
    )
    .default([]),
  endpoints: z
    .array(
      z.strictObject({
        ip: ipAddress,
        spiffeId: spiffeIdString,
        node: z.string().min(1),
        interface: z.string().optional(),
      }),
    )
    .default([]),
  /**
   * Where the reserved peers are (src/cluster/reserved.ts): the Service ranges (kube-proxy's
   * --service-cluster-ip-range), the cluster's pod ranges (each node's podCidrs are added), the API
   * server's addresses (the endpoints of Service default/kubernetes) and further addresses of this
   * host; the agent adds this node's address and, unless the gate runs in another network namespace
   * (datapath.netns), the addresses of its own (the host's, as a DaemonSet with hostNetwork).
   */
  serviceCidrs: z.array(cidr).default([]),
  podCidrs: z.array(cidr).default([]),
  apiServers: z.array(ipAddress).default([]),
  hostAddresses: z.array(ipAddress).default([]),
  policy: z
    .strictObject({
      /** What applies to pairs no rule matches. */
      default: z.enum(['required', 'disabled']).default('required'),
      /** Reserved peers whose traffic never needs authentication, whatever the rules say. */
      exempt: z.array(z.enum(RESERVED_PEERS)).default([...DEFAULT_EXEMPT_PEERS]),
      rules: z
        .array(
          z.strictObject({
            name: z.string().min(1),
            source: selector.default({}),
            destination: selector.default({}),
            mode: z.enum(['required', 'disabled']).default('required'),
          }),
        )
        .default([]),
    })
    .prefault({}),
});
export type StaticCluster = z.output<typeof staticClusterSchema>;
