// What `meshauth status` shows, as the agent's control API returns it (GET /v1/status on the
// control socket). Plain JSON: dates as ISO strings, counters as decimal strings (they are u64).

export type PairState = 'authenticated' | 'pending' | 'failed';
export type AuthTrigger = 'proactive' | 'on-demand' | 'reauth' | 'rotation' | 'bundle-change' | 'restored' | 'responder';

export interface IdentityStatus {
  spiffeId: string;
  /** True for the agent's own node identity. */
  node: boolean;
  notAfter: string;
  serial: string;
}

export interface PairStatus {
  localId: string;
  remoteId: string;
  remoteNode: string;
  state: PairState;
  /** When the pair stops passing traffic (absent while pending). */
  expiresAt?: string;
  lastAuthenticatedAt?: string;
  trigger?: AuthTrigger;
  /** Failure class of the last attempt, when it failed. */
  lastError?: string;
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
