// CNI plugin start-up benchmark: `npm run bench:cni [-- --json]`. The plugin runs once per pod, so
// its cost is a process start: each figure is the wall time of whole invocations, as a runtime
// makes them (spawn, stdin config, wait for exit), first run and then the median and p90 of RUNS
// more, next to the same machine's baselines from the same run:
//
//   node_baseline        `node -e 0`: what any Node program pays before its first line
//   go_plugin_version    the real host-local plugin's VERSION (a static Go binary), when the test
//                        cluster's build cache has it: what a CNI plugin in Go pays
//   meshauth_version     the compiled meshauth plugin's VERSION (start-up and module load only)
//   meshauth_add_no_agent ADD with no agent listening: the spool record is written and the connect
//                        refused; the pod's result passes through (an install or upgrade)
//   meshauth_add_agent   ADD answered at once by a control socket (the agent's own server, with
//                        handlers that answer ready): the plugin's share of a pod's ADD
//
// Everything lives in a temp dir, removed at the end.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { ControlServer } from '../src/control/server.js';
import { packageFile } from '../src/util/package-root.js';

const RUNS = 30;
const PLUGIN = packageFile('dist/src/cni/plugin.js');

function invoke(file: string, args: string[], env: NodeJS.ProcessEnv, input: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = process.hrtime.bigint();
    const child = spawn(file, args, { env: { PATH: process.env.PATH, ...env }, stdio: ['pipe', 'ignore', 'ignore'] });
    child.on('error', reject);
    child.stdin.on('error', () => {}); // a program that reads no stdin (node -e 0) closes it early
    child.on('exit', (code) => (code === 0 ? resolve(Number(process.hrtime.bigint() - started) / 1e6) : reject(new Error(`${file} exited ${code}`))));
    child.stdin.end(input);
  });
}

interface Figure {
  first_ms: number;
  median_ms: number;
  p90_ms: number;
}

async function measure(run: () => Promise<number>): Promise<Figure> {
  const first = await run();
  const times: number[] = [];
  for (let i = 0; i < RUNS; i++) times.push(await run());
  times.sort((a, b) => a - b);
  const round = (ms: number) => Math.round(ms * 10) / 10;
  return { first_ms: round(first), median_ms: round(times[Math.floor(RUNS / 2)]!), p90_ms: round(times[Math.floor(RUNS * 0.9)]!) };
}

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  if (!existsSync(PLUGIN)) throw new Error(`${PLUGIN} is missing: run \`npm run build\``);
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-bench-cni-'));
  const results: Record<string, Figure> = {};
  try {
    const prevResult = { cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: '/run/netns/x' }], ips: [{ address: '10.9.0.5/24', interface: 0 }] };
    const conf = (socket: string) => JSON.stringify({ cniVersion: '1.0.0', name: 'bench', type: 'meshauth', controlSocket: socket, spoolDir: join(dir, 'spool'), prevResult });
    const env = { CNI_CONTAINERID: 'bench0', CNI_NETNS: '/run/netns/x', CNI_IFNAME: 'eth0', CNI_ARGS: 'K8S_POD_NAMESPACE=a;K8S_POD_NAME=b', CNI_PATH: '/opt/cni/bin' };

    results.node_baseline = await measure(() => invoke(process.execPath, ['-e', '0'], {}, ''));
    const built = (await execa('bash', [packageFile('test/cluster/build.sh'), '--path', 'cni'])).stdout.trim();
    if (existsSync(join(built, 'host-local'))) {
      results.go_plugin_version = await measure(() => invoke(join(built, 'host-local'), [], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'));
    }
    results.meshauth_version = await measure(() => invoke(PLUGIN, [], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}'));
    results.meshauth_add_no_agent = await measure(() => invoke(PLUGIN, [], { ...env, CNI_COMMAND: 'ADD' }, conf(join(dir, 'none.sock'))));
    const socket = join(dir, 'control', 'control.sock');
    const server = await ControlServer.start({
      socketPath: socket,
      status: () => Promise.reject(new Error('not used')),
      cni: {
        add: () => Promise.resolve({ ready: true, pending: 0, bound: { name: 'veth0', ifindex: 9 } }),
        del: () => Promise.resolve({ removed: true }),
        check: () => Promise.resolve({ ok: true }),
      },
    });
    try {
      results.meshauth_add_agent = await measure(() => invoke(PLUGIN, [], { ...env, CNI_COMMAND: 'ADD' }, conf(socket)));
    } finally {
      await server.close();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  for (const [name, figure] of Object.entries(results)) {
    console.log(`${name.padEnd(24)} first ${String(figure.first_ms).padStart(6)} ms   median ${String(figure.median_ms).padStart(6)} ms   p90 ${String(figure.p90_ms).padStart(6)} ms`);
  }
  if (json) console.log(JSON.stringify(results));
}

await main();
