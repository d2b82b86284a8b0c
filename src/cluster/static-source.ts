import type { StaticCluster } from './static-options.js';
import type { ClusterSnapshot } from './types.js';

/** The cluster as the config file's static `cluster` section describes it. */
export function staticSnapshot(cluster: StaticCluster): ClusterSnapshot {
  return {
    nodes: cluster.nodes.map((node) => ({ name: node.name, address: node.address, podCidrs: node.podCidrs, ...(node.port !== undefined && { port: node.port }) })),
    endpoints: cluster.endpoints.map((endpoint) => ({
      ip: endpoint.ip,
      spiffeId: endpoint.spiffeId,
      node: endpoint.node,
      ...(endpoint.interface !== undefined && { interface: endpoint.interface }),
    })),
    policies: cluster.policy.rules.map((rule) => ({ name: rule.name, source: rule.source, destination: rule.destination, mode: rule.mode })),
  };
}
