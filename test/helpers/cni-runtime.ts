// Runs a CNI network configuration list the way a container runtime does (libcni): each plugin of
// the list is executed from CNI_PATH with the CNI environment, its own config on stdin completed
// with the list's name and cniVersion and, from the second plugin on, the previous plugin's
// result as prevResult; DEL runs the plugins in reverse with the cached ADD result, CHECK in order.
// The runtime runs in the host's network namespace: here a test's node namespace (`ip netns exec`,
// which also gives the plugins that namespace's /sys, as a host has).
//
// The real plugins (bridge, ptp, host-local, loopback) are those of the test cluster's build cache
// (test/cluster/build.sh cni: built from github.com/containernetworking/plugins, cached; a cold
// build takes tens of seconds). The meshauth plugin is the compiled one (dist/src/cni/plugin.js),
// as the DaemonSet installs it.
import { existsSync } from 'node:fs';
import { mkdtemp, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { packageFile } from '../../src/util/package-root.js';

export const MESHAUTH_PLUGIN = packageFile('dist/src/cni/plugin.js');
const REAL_PLUGINS = ['bridge', 'ptp', 'host-local', 'loopback'];

/**
 * A CNI_PATH holding the real plugins and meshauth's: the build cache's binaries, built first
 * when missing (build.sh skips a component whose cache is complete).
 */
export async function cniBinDir(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  if (!existsSync(MESHAUTH_PLUGIN)) throw new Error(`${MESHAUTH_PLUGIN} is missing: run \`npm run build\``);
  const script = packageFile('test/cluster/build.sh');
  const built = (await execa('bash', [script, '--path', 'cni'])).stdout.trim();
  if (!REAL_PLUGINS.every((plugin) => existsSync(join(built, plugin)))) await execa('bash', [script, 'cni'], { timeout: 600_000 });
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-cni-bin-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  for (const plugin of REAL_PLUGINS) await symlink(join(built, plugin), join(dir, plugin));
  await symlink(MESHAUTH_PLUGIN, join(dir, 'meshauth'));
  return dir;
}

export interface NetworkConfigList {
  cniVersion: string;
  name: string;
  plugins: ({ type: string } & Record<string, unknown>)[];
}

export interface Sandbox {
  containerId: string;
  /** Path of the pod's network namespace (CNI_NETNS). */
  netns: string;
  ifName?: string;
  /** K8S_POD_NAMESPACE / K8S_POD_NAME / K8S_POD_UID, as the kubelet passes them in CNI_ARGS. */
  pod?: { namespace: string; name: string; uid: string };
}

export interface PluginRun {
  type: string;
  exitCode: number;
  stdout: string;
  stderr: string;
}

export class CniError extends Error {
  constructor(readonly run: PluginRun) {
    super(`CNI plugin ${run.type} failed (exit ${run.exitCode}): ${run.stdout.trim()} ${run.stderr.trim()}`);
    this.name = 'CniError';
  }
}

export class CniRuntime {
  /** ADD results, by container, as libcni caches them for DEL and CHECK. */
  private readonly cached = new Map<string, unknown>();
  /** Every plugin run, in order (for assertions on what each returned). */
  readonly runs: PluginRun[] = [];

  constructor(
    private readonly binDir: string,
    private readonly hostNetns: string,
    private readonly list: NetworkConfigList,
  ) {}

  async add(sandbox: Sandbox): Promise<unknown> {
    let result: unknown;
    for (const plugin of this.list.plugins) {
      const run = await this.exec('ADD', sandbox, plugin, result);
      result = JSON.parse(run.stdout);
    }
    this.cached.set(sandbox.containerId, result);
    return result;
  }

  async del(sandbox: Sandbox): Promise<void> {
    const prevResult = this.cached.get(sandbox.containerId);
    for (const plugin of [...this.list.plugins].reverse()) await this.exec('DEL', sandbox, plugin, prevResult);
    this.cached.delete(sandbox.containerId);
  }

  async check(sandbox: Sandbox): Promise<void> {
    const prevResult = this.cached.get(sandbox.containerId);
    for (const plugin of this.list.plugins) await this.exec('CHECK', sandbox, plugin, prevResult);
  }

  private async exec(command: string, sandbox: Sandbox, plugin: NetworkConfigList['plugins'][number], prevResult: unknown): Promise<PluginRun> {
    const config = { ...plugin, name: this.list.name, cniVersion: this.list.cniVersion, ...(prevResult !== undefined && { prevResult }) };
    const cniArgs = sandbox.pod
      ? `IgnoreUnknown=1;K8S_POD_NAMESPACE=${sandbox.pod.namespace};K8S_POD_NAME=${sandbox.pod.name};K8S_POD_INFRA_CONTAINER_ID=${sandbox.containerId};K8S_POD_UID=${sandbox.pod.uid}`
      : '';
    const result = await execa('ip', ['netns', 'exec', this.hostNetns, join(this.binDir, plugin.type)], {
      input: JSON.stringify(config),
      reject: false,
      extendEnv: false,
      env: {
        PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
        CNI_COMMAND: command,
        CNI_CONTAINERID: sandbox.containerId,
        CNI_NETNS: sandbox.netns,
        CNI_IFNAME: sandbox.ifName ?? 'eth0',
        CNI_ARGS: cniArgs,
        CNI_PATH: this.binDir,
      },
      timeout: 60_000,
    });
    const run: PluginRun = { type: plugin.type, exitCode: result.exitCode ?? -1, stdout: result.stdout, stderr: result.stderr };
    this.runs.push(run);
    if (run.exitCode !== 0) throw new CniError(run);
    return run;
  }
}
