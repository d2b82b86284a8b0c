// One real agent process (`meshauth agent --config`, built code) fed by the test Kubernetes API
// server, as a new user would run it: the eBPF gate on (maps pinned in a directory of this run),
// transport none, the dev CA, metrics on loopback. Its RSS and CPU time are read from /proc.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import type { KubeApiServer } from '../../test/servers/kube-api-server.js';
import { LOCAL_NODE } from './cluster.js';

const CLI = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
const CLOCK_TICKS_PER_SECOND = 100;

export interface AgentProcessOptions {
  dir: string;
  pinDir: string;
  server: KubeApiServer;
  metricsPort: number;
}

export class AgentProcess {
  private exited = false;
  /** The end of its log (errors only). */
  log = '';

  private constructor(
    private readonly child: ChildProcess,
    private readonly metricsPort: number,
  ) {
    child.once('exit', () => (this.exited = true));
  }

  static async start(options: AgentProcessOptions): Promise<AgentProcess> {
    const kubeconfig = join(options.dir, 'kubeconfig.yaml');
    await writeFile(
      kubeconfig,
      stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'bench', cluster: { server: options.server.url, 'insecure-skip-tls-verify': true } }],
        users: [{ name: 'meshauth', user: { token: options.server.token } }],
        contexts: [{ name: 'bench', context: { cluster: 'bench', user: 'meshauth' } }],
        'current-context': 'bench',
      }),
      { mode: 0o600 },
    );
    const config = join(options.dir, 'agent.yaml');
    await writeFile(
      config,
      stringify({
        nodeName: LOCAL_NODE,
        trustDomain: 'bench.example',
        stateDir: join(options.dir, 'state'),
        identity: { provider: 'dev', dev: { caDir: join(options.dir, 'ca'), ttl: '1h' } },
        handshake: { listenAddress: '127.0.0.1', port: 0 },
        datapath: { enabled: true, pinDir: options.pinDir },
        transport: { mode: 'none' },
        metrics: { enabled: true, address: '127.0.0.1', port: options.metricsPort },
        control: { socket: join(options.dir, 'control.sock') },
        kubernetes: { enabled: true, kubeconfig },
        cluster: { policy: { default: 'disabled' } },
      }),
    );
    const child = spawn(process.execPath, [CLI, 'agent', '--config', config], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, MESHAUTH_LOG_LEVEL: 'error' },
    });
    const agent = new AgentProcess(child, options.metricsPort);
    child.stderr?.on('data', (chunk: Buffer) => {
      agent.log = (agent.log + chunk.toString()).slice(-8000);
    });
    child.once('exit', (code) => {
      if (code !== 0 && code !== null) process.stderr.write(`agent exited with ${code}: ${agent.log}\n`);
    });
    return agent;
  }

  get pid(): number {
    return this.child.pid!;
  }

  /** Polls /readyz until it answers 200 (synced: the first plan is applied by then). */
  async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (this.exited) throw new Error('the agent exited before it was ready');
      try {
        const response = await fetch(`http://127.0.0.1:${this.metricsPort}/readyz`);
        if (response.status === 200) return;
      } catch {
        // not listening yet
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    throw new Error(`the agent was not ready within ${timeoutMs} ms`);
  }

  async metric(name: string): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${this.metricsPort}/metrics`)).text();
    let sum = 0;
    for (const line of text.split('\n')) if (line.startsWith(name) && !line.startsWith('#')) sum += Number(line.split(' ').at(-1));
    return sum;
  }

  async rssMb(): Promise<number> {
    const status = await readFile(`/proc/${this.pid}/status`, 'utf8');
    const kb = Number(/^VmRSS:\s+(\d+) kB/m.exec(status)?.[1]);
    return kb / 1024;
  }

  /** User + system CPU seconds so far. */
  async cpuSeconds(): Promise<number> {
    const stat = await readFile(`/proc/${this.pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS_PER_SECOND;
  }

  async stop(): Promise<void> {
    if (this.exited) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
}
