// The demo's cluster: two nodes, two workloads on each, one identity per workload.
//
//   node-a 192.168.77.1, pods 10.77.1.0/24:  web 10.77.1.2, api 10.77.1.3
//   node-b 192.168.77.2, pods 10.77.2.0/24:  db  10.77.2.2, rogue 10.77.2.3
//
// Policy requires authentication between every pair of workloads (default: required). rogue
// is a workload that only node-b's agent lists: node-a's view of the cluster has no such
// endpoint, so node-a refuses to authenticate any pair with it, and rogue's traffic never gets
// an auth entry. api is not running at first; it appears later to show on-demand authentication.
// The addresses exist only inside the demo's network namespaces.
import type { NodeSpec } from './topology.js';

export const TRUST_DOMAIN = 'demo.meshauth';

export interface DemoWorkload {
  name: string;
  node: string;
  ip: string;
  spiffeId: string;
  /** Nodes whose cluster view lists this workload (default: every node). */
  knownTo?: readonly string[];
}

export const DEMO_WORKLOADS: readonly DemoWorkload[] = [
  { name: 'web', node: 'node-a', ip: '10.77.1.2', spiffeId: `spiffe://${TRUST_DOMAIN}/ns/shop/sa/web` },
  { name: 'api', node: 'node-a', ip: '10.77.1.3', spiffeId: `spiffe://${TRUST_DOMAIN}/ns/shop/sa/api` },
  { name: 'db', node: 'node-b', ip: '10.77.2.2', spiffeId: `spiffe://${TRUST_DOMAIN}/ns/shop/sa/db` },
  { name: 'rogue', node: 'node-b', ip: '10.77.2.3', spiffeId: `spiffe://${TRUST_DOMAIN}/ns/shop/sa/rogue`, knownTo: ['node-b'] },
];

export const DEMO_NODES: readonly [NodeSpec, NodeSpec] = [
  { name: 'node-a', address: '192.168.77.1', podCidr: '10.77.1.0/24', workloads: workloadsOf('node-a') },
  { name: 'node-b', address: '192.168.77.2', podCidr: '10.77.2.0/24', workloads: workloadsOf('node-b') },
];

export function demoWorkload(name: string): DemoWorkload {
  const workload = DEMO_WORKLOADS.find((w) => w.name === name);
  if (!workload) throw new Error(`no demo workload ${name}`);
  return workload;
}

function workloadsOf(node: string): NodeSpec['workloads'] {
  return DEMO_WORKLOADS.filter((w) => w.node === node).map(({ name, ip }) => ({ name, ip }));
}
