// What `meshauth status` shows, as the agent's control API returns it (GET /v1/status on the
// control socket). Plain JSON: dates as ISO strings, counters as decimal strings (they are u64).
import { z } from 'zod';
import type { PairStatus } from '../auth/types.js';

// The pairs' part of the status is the auth layer's; its consumers find it here with the rest.
export type { PairStatus } from '../auth/types.js';

export interface IdentityStatus {
  spiffeId: string;
  /** True for the agent's own node identity. */
  node: boolean;
  notAfter: string;
  serial: string;
}

export interface PeerStatus {
  node: string;
  address: string;
  transport: 'wireguard' | 'ipsec' | 'none';
  state: 'up' | 'pending' | 'failed';
  lastAuthenticatedAt?: string;
  expiresAt?: string;
  /** Increments with every node re-authentication (a new key). */
  epoch: number;
  lastError?: string;
}

export interface DatapathStatus {
  counters: Record<string, string>;
  authEntries: number;
  authCapacity: number;
  /**
   * How the gate checks that another node's packets came through that node's transport:
   * decrypted on the WireGuard device, by a meshauth IPsec SA, or not at all (transport none: the
   * CNI's anti-spoofing is all there is).
   */
  remoteArrival: 'wireguard' | 'ipsec' | 'unchecked';
}

export interface AgentStatus {
  nodeName: string;
  nodeId: string;
  provider: string;
  ready: boolean;
  startedAt: string;
  identities: IdentityStatus[];
  pairs: PairStatus[];
  peers: PeerStatus[];
  datapath?: DatapathStatus;
}

// The same shape as a schema. The control server parses what the agent hands it with this before
// sending (unknown fields are stripped, so nothing not listed here, such as key material, can leak
// onto the socket), and the client checks the agent's answer with it.
const isoTime = z.string().refine((value) => !Number.isNaN(Date.parse(value)), 'expected an ISO 8601 time');

export const agentStatusSchema = z.object({
  nodeName: z.string(),
  nodeId: z.string(),
  provider: z.string(),
  ready: z.boolean(),
  startedAt: isoTime,
  identities: z.array(
    z.object({ spiffeId: z.string(), node: z.boolean(), notAfter: isoTime, serial: z.string() }),
  ),
  pairs: z.array(
    z.object({
      localId: z.string(),
      remoteId: z.string(),
      remoteNode: z.string(),
      state: z.enum(['authenticated', 'pending', 'failed']),
      expiresAt: isoTime.optional(),
      lastAuthenticatedAt: isoTime.optional(),
      trigger: z.enum(['proactive', 'on-demand', 'reauth', 'rotation', 'bundle-change', 'restored', 'responder']).optional(),
      lastError: z.string().optional(),
    }),
  ),
  peers: z.array(
    z.object({
      node: z.string(),
      address: z.string(),
      transport: z.enum(['wireguard', 'ipsec', 'none']),
      state: z.enum(['up', 'pending', 'failed']),
      lastAuthenticatedAt: isoTime.optional(),
      expiresAt: isoTime.optional(),
      epoch: z.number().int().nonnegative(),
      lastError: z.string().optional(),
    }),
  ),
  datapath: z
    .object({
      counters: z.record(z.string(), z.string().regex(/^\d+$/, 'expected a decimal counter')),
      authEntries: z.number().int().nonnegative(),
      authCapacity: z.number().int().nonnegative(),
      remoteArrival: z.enum(['wireguard', 'ipsec', 'unchecked']),
    })
    .optional(),
});

// Compile-time proof that the schema and the interfaces above describe the same JSON.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const schemaMatchesStatus: Same<z.output<typeof agentStatusSchema>, AgentStatus> = true;
void schemaMatchesStatus;
