// A stand-in agent process for the SIGKILL test: programs the gate like the real agent would, says
// "ready" on stdout, then keeps running (polling signals) until it is killed.
// Usage: node --import tsx datapath-agent.ts '<JSON AgentPlan>'
import { Datapath } from '../../src/datapath/gate/datapath.js';
import type { AuthKey, IpcacheEntry } from '../../src/datapath/gate/layout.js';
import type { WorkloadInterface } from '../../src/datapath/gate/pin-layout.js';

export interface AgentPlan {
  nodes: {
    pinDir: string;
    interfaces: WorkloadInterface[];
    ipcache: [string, IpcacheEntry][];
    /** Expiries as decimal strings (JSON has no bigint). */
    auth: [AuthKey, string][];
  }[];
}

const plan = JSON.parse(process.argv[2] ?? '') as AgentPlan;
for (const node of plan.nodes) {
  const datapath = await Datapath.open({ pinDir: node.pinDir });
  for (const [prefix, entry] of node.ipcache) datapath.setIpcache(prefix, entry);
  for (const [key, expiry] of node.auth) datapath.setAuth(key, BigInt(expiry));
  await datapath.install({ interfaces: node.interfaces });
  datapath.onSignal(() => {});
}
console.log('ready');
