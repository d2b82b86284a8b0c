// The demo's running cluster: the topology, one real agent process per node with its own
// generated config (shared dev CA, WireGuard via wireguard-go or the kernel, the eBPF gate with
// its own pin directory, control socket and metrics port), and a traffic probe per workload.
// The end-to-end tests run the same cluster with other identity providers.
//
// Everything it makes is listed in a manifest (demo.json in its temp dir) written before it is
// made, so that cleanup() — and `meshauth demo --cleanup` after a crash or `--keep` — removes it
// all: agents and the processes they left (wireguard-go), pins, namespaces, sockets, files.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { stringify as toYaml } from 'yaml';
import type { ConfigInput } from '../config/config.js';
import { attachedPrograms } from '../datapath/gate/hooks.js';
import { PinLayout } from '../datapath/gate/pin-layout.js';
import { killNamespaceProcesses, removeNamespaces } from '../netns/cleanup.js';
import { inNetns, nsenterArgs } from '../netns/exec.js';
import { randomTag } from '../netns/topology.js';
import { AgentProcess } from './agent-process.js';
import { Probe } from './probe.js';
import { DEMO_NODES, DEMO_WORKLOADS, TRUST_DOMAIN, type DemoWorkload } from './scenario.js';
import { cliInvocation } from './self.js';
import { Topology, type TopologyNode, type TopologyWorkload } from './topology.js';

export const WIREGUARD_PORT = 51820;
export const METRICS_PORT = 9465;
const MANIFEST = 'demo.json';

export interface DemoClusterOptions {
  /** Temp dir and namespace prefix: "meshauth-demo" (found by `meshauth demo --cleanup`) or another. */
  prefix?: string;
  /** Workloads whose endpoints the cluster lists at first (default: all but api). */
  workloads?: readonly string[];
  /** Adjusts a node's generated config each time it is written (tests: another identity provider). */
  configure?: (node: string, config: ConfigInput) => ConfigInput;
}

/** What a cluster made, for cleaning up from another process. */
export interface Manifest {
  tag: string;
  dir: string;
  namespaces: string[];
  /** Pin directory → namespace of the agent that owns it. */
  pinDirs: Record<string, string>;
  wireguardInterfaces: string[];
  /** The process that made the cluster; while it runs (and has not let go with --keep), the
   *  cluster is in use. */
  ownerPid: number;
  kept: boolean;
}

export interface NodeFiles {
  configPath: string;
  logPath: string;
  controlSocket: string;
  stateDir: string;
  pinDir: string;
  wireguardInterface: string;
  metricsAddress: string;
}

export class DemoCluster {
  private readonly agents = new Map<string, AgentProcess>();
  private readonly probes = new Map<string, Probe>();
  private readonly workloads: Set<string>;
  private proactive = true;
  private cleaning?: Promise<string[]>;

  private constructor(
    readonly topology: Topology,
    readonly dir: string,
    private readonly manifest: Manifest,
    private readonly options: DemoClusterOptions,
  ) {
    this.workloads = new Set(options.workloads ?? DEMO_WORKLOADS.filter((w) => w.name !== 'api').map((w) => w.name));
  }

  /** Builds the namespaces and the temp dir; agents and probes start with startAgents/startProbes. */
  static async create(options: DemoClusterOptions = {}): Promise<DemoCluster> {
    const prefix = options.prefix ?? 'meshauth-demo';
    const tag = randomTag();
    const dir = await mkdtemp(join(tmpdir(), `${prefix}-${tag}-`));
    const manifest: Manifest = {
      tag,
      dir,
      namespaces: Topology.namespacesOf(prefix, tag, DEMO_NODES),
      pinDirs: Object.fromEntries(DEMO_NODES.map((node) => [pinDirOf(prefix, tag, node.name), `${prefix}-${tag}-${node.name}`])),
      wireguardInterfaces: DEMO_NODES.map((node) => wireguardInterfaceOf(tag, node.name)),
      ownerPid: process.pid,
      kept: false,
    };
    await writeManifest(manifest);
    let topology: Topology;
    try {
      topology = await Topology.create(DEMO_NODES, { tag, prefix });
    } catch (err) {
      await cleanupManifest(manifest);
      throw err;
    }
    const cluster = new DemoCluster(topology, dir, manifest, options);
    for (const node of topology.nodes) await mkdir(join(dir, node.name), { recursive: true, mode: 0o700 });
    return cluster;
  }

  get tag(): string {
    return this.topology.tag;
  }

  node(name: string): TopologyNode {
    return this.topology.node(name);
  }

  workload(name: string): TopologyWorkload & DemoWorkload {
    return { ...this.topology.workload(name), ...DEMO_WORKLOADS.find((w) => w.name === name)! };
  }

  files(node: string): NodeFiles {
    const base = join(this.dir, node);
    return {
      configPath: join(base, 'config.yaml'),
      logPath: join(base, 'agent.log'),
      controlSocket: join(base, 'control.sock'),
      stateDir: join(base, 'state'),
      pinDir: pinDirOf(this.topology.prefix, this.tag, node),
      wireguardInterface: wireguardInterfaceOf(this.tag, node),
      metricsAddress: `127.0.0.1:${METRICS_PORT}`,
    };
  }

  agent(node: string): AgentProcess {
    const agent = this.agents.get(node);
    if (!agent) throw new Error(`no agent running for ${node}`);
    return agent;
  }

  probe(workload: string): Probe {
    const probe = this.probes.get(workload);
    if (!probe) throw new Error(`no probe running in ${workload}`);
    return probe;
  }

  /** The config a node's agent gets for the current state of the cluster. */
  configFor(node: string): ConfigInput {
    const self = this.node(node);
    const files = this.files(node);
    const endpoints = DEMO_WORKLOADS.filter((w) => this.workloads.has(w.name) && (w.knownTo ?? [node]).includes(node)).map((w) => ({
      ip: w.ip,
      spiffeId: w.spiffeId,
      node: w.node,
      interface: this.topology.workload(w.name).hostInterface,
    }));
    const config: ConfigInput = {
      nodeName: node,
      trustDomain: TRUST_DOMAIN,
      stateDir: files.stateDir,
      identity: { provider: 'dev', dev: { caDir: join(this.dir, 'ca'), ttl: '1h' } },
      handshake: { listenAddress: self.address, sourceAddress: self.address },
      transport: { mode: 'wireguard', wireguard: { interface: files.wireguardInterface, listenPort: WIREGUARD_PORT } },
      datapath: { pinDir: files.pinDir },
      metrics: { address: '127.0.0.1', port: METRICS_PORT },
      control: { socket: files.controlSocket },
      auth: { proactive: this.proactive },
      cluster: {
        nodes: this.topology.nodes.map((n) => ({ name: n.name, address: n.address, podCidrs: [n.podCidr] })),
        endpoints,
        policy: { default: 'required', rules: [] },
      },
    };
    return this.options.configure ? this.options.configure(node, config) : config;
  }

  async writeConfig(node: string): Promise<void> {
    await writeFile(this.files(node).configPath, toYaml(this.configFor(node)), { mode: 0o600 });
  }

  /** Which workloads' endpoints exist (written with the next writeConfig/reload). */
  setWorkloads(names: readonly string[]): void {
    this.workloads.clear();
    for (const name of names) this.workloads.add(name);
  }

  hasWorkload(name: string): boolean {
    return this.workloads.has(name);
  }

  setProactive(proactive: boolean): void {
    this.proactive = proactive;
  }

  /**
   * Writes every node's config, sends the agents SIGHUP together and waits until each one has
   * reloaded. Returns the CLOCK_MONOTONIC time the signals went out.
   */
  async reload(): Promise<bigint> {
    const nodes = this.topology.nodes.map((n) => n.name);
    for (const node of nodes) await this.writeConfig(node);
    const before = await Promise.all(nodes.map(async (node) => (await this.agent(node).logs()).length));
    const sentAt = process.hrtime.bigint();
    for (const node of nodes) this.agent(node).signal('SIGHUP');
    await Promise.all(
      nodes.map((node, i) => this.agent(node).waitForLog((line) => line.msg === 'configuration reloaded', 'configuration reloaded', { since: before[i]! })),
    );
    return sentAt;
  }

  /** Writes the config and starts the node's agent (again, after a kill). */
  async startAgent(node: string): Promise<AgentProcess> {
    this.checkOpen();
    if (this.agents.get(node)?.running) throw new Error(`the agent of ${node} is already running`);
    await this.writeConfig(node);
    const files = this.files(node);
    const agent = await AgentProcess.start({ name: node, netns: this.node(node).netns, ...files });
    this.agents.set(node, agent);
    return agent;
  }

  async startAgents(): Promise<AgentProcess[]> {
    return Promise.all(this.topology.nodes.map((node) => this.startAgent(node.name)));
  }

  async startProbes(): Promise<void> {
    this.checkOpen();
    await Promise.all(
      this.topology.workloads.map(async (w) => {
        this.probes.set(w.name, await Probe.start(w.netns));
      }),
    );
  }

  /** Waits until an agent is ready, its node link is up and the gate guards its listed workloads. */
  async waitUntilReady(node: string, timeoutMs = 30_000): Promise<void> {
    const agent = this.agent(node);
    await agent.waitForStatus((s) => s.ready && s.peers.length > 0 && s.peers.every((p) => p.state === 'up'), 'ready, with its node links up', timeoutMs);
    await this.waitForGate(node, timeoutMs);
  }

  /** Waits until the gate is attached to the host-side interface of every listed local workload. */
  async waitForGate(node: string, timeoutMs = 15_000): Promise<void> {
    const self = this.node(node);
    const deadline = Date.now() + timeoutMs;
    for (const w of self.workloads) {
      if (!this.workloads.has(w.name) || !(this.workload(w.name).knownTo ?? [node]).includes(node)) continue;
      const iface = { name: w.hostInterface, netns: self.netns };
      const layout = new PinLayout(pinDirOf(this.topology.prefix, this.tag, node));
      const asTheAgentSeesIt = { name: w.hostInterface }; // it runs inside the node's namespace
      const attached = async () => Object.values(await attachedPrograms(layout, iface, asTheAgentSeesIt)).every(Boolean);
      while (!(await attached())) {
        if (Date.now() > deadline) throw new Error(`the gate was not attached to ${w.hostInterface} on ${node} within ${timeoutMs} ms`);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
    }
  }

  /** One ICMP echo from a workload; true when answered within timeoutMs. */
  async ping(from: string, to: string, timeoutMs = 1000): Promise<boolean> {
    const args = ['-n', '-q', '-c', '1', '-W', String(Math.max(1, Math.ceil(timeoutMs / 1000))), this.workload(to).ip];
    return (await inNetns(this.workload(from).netns, 'ping', args, { reject: false })).exitCode === 0;
  }

  /** Runs the meshauth CLI inside a node's namespace. */
  async cliInNode(node: string, args: readonly string[]): Promise<{ exitCode: number; stdout: string; stderr: string }> {
    const [file, fileArgs] = cliInvocation(args);
    const result = await execa('nsenter', nsenterArgs(this.node(node).netns, file, fileArgs), { reject: false, timeout: 60_000 });
    return { exitCode: result.exitCode ?? 1, stdout: result.stdout, stderr: result.stderr };
  }

  /** Leaves the agents running when this process exits (`meshauth demo --keep`); the probes,
   *  children of this process, stop. */
  async detach(): Promise<void> {
    await Promise.all([...this.probes.values()].map((probe) => probe.stop().catch(() => undefined)));
    this.probes.clear();
    for (const agent of this.agents.values()) agent.detach();
    this.manifest.kept = true;
    await writeManifest(this.manifest);
  }

  /**
   * Stops the probes and agents (SIGTERM, then SIGKILL), then removes what the manifest lists.
   * Idempotent; returns the problems met (cleanup goes on past each).
   */
  cleanup(): Promise<string[]> {
    this.cleaning ??= (async () => {
      const problems: string[] = [];
      await Promise.all([...this.probes.values()].map((probe) => probe.stop().catch(() => undefined)));
      await Promise.all([...this.agents.values()].map((agent) => agent.stop().catch((err: unknown) => problems.push(`stopping agent ${agent.name}: ${(err as Error).message}`))));
      problems.push(...(await cleanupManifest(this.manifest)));
      return problems;
    })();
    return this.cleaning;
  }

  private checkOpen(): void {
    if (this.cleaning) throw new Error('the demo cluster is being cleaned up');
  }
}

function pinDirOf(prefix: string, tag: string, node: string): string {
  return `/sys/fs/bpf/${prefix}-${tag}-${node}`;
}

/** At most 15 characters, unique on the host: wireguard-go's sockets are shared by all namespaces. */
function wireguardInterfaceOf(tag: string, node: string): string {
  return `mwg-${tag}-${node.slice(-1)}`;
}

/**
 * Removes what a manifest lists: every process left in the namespaces (agents, wireguard-go), the
 * pins (through `meshauth datapath uninstall` inside the owning namespace, so the gate is
 * detached where it was attached), the namespaces, stale wireguard-go sockets, the temp dir.
 */
export async function cleanupManifest(manifest: Manifest): Promise<string[]> {
  const problems: string[] = [];
  await killNamespaceProcesses(manifest.namespaces);
  await Promise.all(
    Object.entries(manifest.pinDirs).map(async ([pinDir, netns]) => {
      if (!existsSync(pinDir)) return;
      if (existsSync(`/run/netns/${netns}`)) {
        const [file, args] = cliInvocation(['datapath', 'uninstall', '--pin-dir', pinDir]);
        const result = await execa('nsenter', nsenterArgs(netns, file, args), { reject: false, timeout: 60_000 });
        if (result.exitCode !== 0) problems.push(`meshauth datapath uninstall --pin-dir ${pinDir}: ${result.stderr.trim() || result.shortMessage}`);
      }
      // The namespace is gone (its interfaces and filters with it), or uninstall failed: the pins
      // are all that is left.
      if (existsSync(pinDir)) await rm(pinDir, { recursive: true, force: true }).catch((err: unknown) => problems.push(`removing ${pinDir}: ${(err as Error).message}`));
    }),
  );
  await removeNamespaces(manifest.namespaces).catch((err: unknown) => problems.push(`removing namespaces: ${(err as Error).message}`));
  for (const netns of manifest.namespaces) if (existsSync(`/run/netns/${netns}`)) problems.push(`namespace ${netns} is still there`);
  for (const name of manifest.wireguardInterfaces) await rm(`/var/run/wireguard/${name}.sock`, { force: true }).catch(() => undefined);
  await rm(manifest.dir, { recursive: true, force: true }).catch((err: unknown) => problems.push(`removing ${manifest.dir}: ${(err as Error).message}`));
  return problems;
}

async function writeManifest(manifest: Manifest): Promise<void> {
  await writeFile(join(manifest.dir, MANIFEST), `${JSON.stringify(manifest, null, 2)}\n`, { mode: 0o600 });
}

/** Whether the process that made a cluster still runs it. */
export function inUse(manifest: Manifest): boolean {
  if (manifest.kept) return false;
  try {
    process.kill(manifest.ownerPid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Manifests of demo clusters under the temp dir (kept, crashed, or still running). */
export async function findManifests(prefix = 'meshauth-demo'): Promise<Manifest[]> {
  const found: Manifest[] = [];
  for (const entry of await readdir(tmpdir())) {
    if (!entry.startsWith(`${prefix}-`)) continue;
    const text = await readFile(join(tmpdir(), entry, MANIFEST), 'utf8').catch(() => undefined);
    if (text === undefined) continue;
    try {
      const manifest = JSON.parse(text) as Manifest;
      // Only what this module wrote: the manifest must describe its own directory.
      if (manifest.dir === join(tmpdir(), entry)) found.push(manifest);
    } catch {
      // not ours
    }
  }
  return found;
}
