// A representative AgentStatus for the status tests: a node and two workload identities, pairs
// in every state, peers on both transports, and datapath counters beyond 2^53.
import type { AgentStatus } from '../../src/control/status.js';

export const NOW = new Date('2030-06-01T12:00:00Z');
const at = (offsetMs: number) => new Date(NOW.getTime() + offsetMs).toISOString();
const MIN = 60_000;

export function sampleStatus(): AgentStatus {
  return {
    nodeName: 'node-a',
    nodeId: 'spiffe://cluster.local/meshauth/node/node-a',
    provider: 'dev',
    ready: true,
    startedAt: at(-(2 * 60 + 5) * MIN),
    identities: [
      { spiffeId: 'spiffe://cluster.local/meshauth/node/node-a', node: true, notAfter: at(45 * MIN), serial: '0a1b2c' },
      { spiffeId: 'spiffe://cluster.local/ns/prod/sa/web', node: false, notAfter: at(-3 * MIN), serial: '3d4e5f' },
    ],
    pairs: [
      {
        localId: 'spiffe://cluster.local/ns/prod/sa/web',
        remoteId: 'spiffe://cluster.local/ns/prod/sa/db',
        remoteNode: 'node-b',
        state: 'authenticated',
        expiresAt: at(30 * MIN),
        lastAuthenticatedAt: at(-90_000),
        trigger: 'proactive',
      },
      {
        localId: 'spiffe://cluster.local/ns/prod/sa/web',
        remoteId: 'spiffe://cluster.local/ns/prod/sa/cache',
        remoteNode: 'node-c',
        state: 'pending',
      },
      {
        localId: 'spiffe://cluster.local/ns/prod/sa/web',
        remoteId: 'spiffe://other.org/ns/x/sa/y',
        remoteNode: 'node-b',
        state: 'failed',
        lastError: 'untrusted-peer',
        trigger: 'on-demand',
      },
    ],
    peers: [
      { node: 'node-b', address: '10.0.0.2', transport: 'wireguard', state: 'up', epoch: 7, lastAuthenticatedAt: at(-5 * MIN), expiresAt: at(55 * MIN) },
      { node: 'node-c', address: 'fd00::3', transport: 'ipsec', state: 'failed', epoch: 0, lastError: 'connect-timeout' },
    ],
    datapath: {
      counters: { allowed: '18446744073709551615', droppedNoEntry: '42', signalsSent: '3' },
      authEntries: 1,
      authCapacity: 524288,
      remoteArrival: 'unchecked',
    },
  };
}
