// Every metric family the agent exports, registered in one place: the agent builds its registry
// with it, and the dashboard test checks deploy/grafana-dashboard.json against exactly this.
import type { Registry } from 'prom-client';
import { HandshakeMetrics } from '../handshake/handshake-metrics.js';
import { IdentityMetrics } from '../identity/identity-metrics.js';
import { TransportMetrics } from '../datapath/transport/metrics.js';
import { AgentMetrics, type AgentMetricsOptions } from './agent-metrics.js';
import { CniMetrics } from './cni-metrics.js';
import { PlanMetrics } from './plan-metrics.js';

export interface AgentMetricFamilies {
  agent: AgentMetrics;
  identity: IdentityMetrics;
  handshake: HandshakeMetrics;
  transport: TransportMetrics;
  cni: CniMetrics;
  plan: PlanMetrics;
}

export function registerAgentMetrics(registry: Registry, options?: AgentMetricsOptions): AgentMetricFamilies {
  return {
    agent: new AgentMetrics(registry, options),
    identity: new IdentityMetrics(registry),
    handshake: new HandshakeMetrics(registry),
    transport: new TransportMetrics(registry),
    cni: new CniMetrics(registry),
    plan: new PlanMetrics(registry),
  };
}
