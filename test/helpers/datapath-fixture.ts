// A two-node cluster (test/helpers/netns.ts) with the gate installed on every workload's host-side
// interface: one Datapath per node, each with its own pin dir, like two agents. Every workload
// address (IPv4 and IPv6) is in both nodes' ipcache, every interface is bound to its workload's
// addresses and identity, and each gate knows its node id and that the nodes' own link carries
// pod traffic (transport 'none', as a CNI would); no pair is authenticated yet.
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { Datapath, monotonicNowNs } from '../../src/datapath/gate/datapath.js';
import { defaultObjectPath, type MapCapacities } from '../../src/datapath/gate/loader.js';
import type { AuthKey, BoundAddress } from '../../src/datapath/gate/layout.js';
import type { SignalPollerOptions } from '../../src/datapath/gate/signals.js';
import { Topology, type Workload } from './netns.js';

export const IDENTITY: Record<string, number> = { w1a: 101, w1b: 102, w2a: 201, w2b: 202 };

/** Small maps: tests create several sets of them side by side. */
export const TEST_CAPACITIES = { auth: 4096, ipcache: 1024, ipcache_hosts4: 1024, ipcache_hosts6: 1024, endpoints: 256, policy: 1024, ratelimit: 1024, signals: 256 };

/** Fails with the fix when the compiled gate is missing or older than its sources. */
export function assertGateBuilt(): string {
  const object = defaultObjectPath();
  const sources = ['gate.bpf.c', 'meshauth.h'].map((file) => join(object, '..', file));
  let built: number;
  try {
    built = statSync(object).mtimeMs;
  } catch {
    throw new Error(`${object} is missing: run \`npm run build:bpf\``);
  }
  if (sources.some((source) => statSync(source).mtimeMs > built)) {
    throw new Error(`${object} is older than its sources: run \`npm run build:bpf\``);
  }
  return object;
}


export class Cluster {
  private constructor(
    readonly topology: Topology,
    readonly agents: [Datapath, Datapath],
  ) {}

  static async start(
    t: { teardown(fn: () => void | Promise<void>): void },
    capacities: MapCapacities = TEST_CAPACITIES,
    signalPolling?: SignalPollerOptions,
  ): Promise<Cluster> {
    assertGateBuilt();
    const topology = await Topology.create(t);
    const agents: Datapath[] = [];
    t.teardown(() => agents.forEach((agent) => agent.close()));
    for (const node of topology.nodes) {
      const agent = await Datapath.open({ pinDir: node.pinDir, capacities, ...(signalPolling && { signalPolling }) });
      agents.push(agent);
      agent.setConfig({ localNode: node.id, transport: 'none' });
      for (const w of topology.workloads) {
        agent.setIpcache(w.ipv4, { identity: IDENTITY[w.name]!, node: w.node });
        agent.setIpcache(w.ipv6, { identity: IDENTITY[w.name]!, node: w.node });
      }
      await agent.install({ interfaces: topology.workloads.filter((w) => w.node === node.id).map((w) => w.hostInterface) });
    }
    const cluster = new Cluster(topology, agents as [Datapath, Datapath]);
    cluster.bindInterfaces();
    return cluster;
  }

  /** As the agent does: the gate takes each workload's identity from its interface and address. */
  bindInterfaces(): void {
    for (const w of this.topology.workloads) {
      if (!this.agent(w.node).bindInterface(w.hostInterface, this.addresses(w))) {
        throw new Error(`could not bind ${w.name}'s interface`);
      }
    }
  }

  /** A workload's addresses with its identity: what the agent binds to its interface. */
  addresses(w: Workload): BoundAddress[] {
    const entry = { identity: IDENTITY[w.name]!, node: w.node };
    return [{ address: w.ipv4, ...entry }, { address: w.ipv6, ...entry }];
  }

  w(name: string): Workload {
    return this.topology.workload(name);
  }

  agent(node: 1 | 2): Datapath {
    return this.agents[node - 1]!;
  }

  /** The auth key the gate on `local`'s node looks up for traffic between local and remote. */
  key(local: Workload, remote: Workload): AuthKey {
    return { localIdentity: IDENTITY[local.name]!, remoteIdentity: IDENTITY[remote.name]!, remoteNode: remote.node };
  }

  /** What a successful handshake records: the pair, on both nodes, until expiryNs. */
  authorize(a: Workload, b: Workload, expiryNs = monotonicNowNs() + 3_600_000_000_000n): void {
    this.agent(a.node).setAuth(this.key(a, b), expiryNs);
    this.agent(b.node).setAuth(this.key(b, a), expiryNs);
  }

  revoke(a: Workload, b: Workload): void {
    this.agent(a.node).deleteAuth(this.key(a, b));
    this.agent(b.node).deleteAuth(this.key(b, a));
  }
}
