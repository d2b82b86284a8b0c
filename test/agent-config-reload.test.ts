// The agent process re-reads its config file when it changes (and on SIGHUP, for changes its
// directory watch cannot see); a bad file is rejected with a clear error and the running state
// is kept.
import test from 'ava';
import { mkdir, rename, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { stringify } from 'yaml';
import { fetchStatus } from '../src/control/client.js';
import type { ConfigInput } from '../src/config/config.js';
import { agentConfig, eventually, tempDir } from './helpers/agents.js';
import { builtCli } from './helpers/cli.js';

const WEB = 'spiffe://example.org/ns/shop/sa/web';
const API = 'spiffe://example.org/ns/shop/sa/api';
const JOBS = 'spiffe://example.org/ns/shop/sa/jobs';

function clusterWith(endpoints: { ip: string; spiffeId: string }[]): ConfigInput['cluster'] {
  return {
    nodes: [{ name: 'node-a', address: '127.0.40.1', podCidrs: ['10.40.0.0/24'] }],
    endpoints: endpoints.map((e) => ({ ...e, node: 'node-a' })),
    policy: { default: 'required' },
  };
}

/** Replaces the file the way editors and Kubernetes do: write aside, rename over. */
async function replaceFile(path: string, text: string): Promise<void> {
  await writeFile(`${path}.tmp`, text);
  await rename(`${path}.tmp`, path);
}

test('a changed config file is applied without a signal; a bad one is rejected and changes nothing; SIGHUP applies a change no watch event announces', async (t) => {
  const dir = await tempDir(t, 'meshauth-reload-');
  const file = join(dir, 'config.yaml');
  const base = agentConfig(dir, { name: 'node-a', address: '127.0.40.1' }, clusterWith([{ ip: '10.40.0.2', spiffeId: WEB }, { ip: '10.40.0.3', spiffeId: API }]), 0);
  await writeFile(file, stringify(base));
  const agent = execa(process.execPath, [builtCli(), 'agent', '--config', file], { reject: false, all: true, buffer: true });
  t.teardown(() => {
    agent.kill('SIGTERM');
  });
  const socketPath = base.control!.socket!;
  const pairs = async () => (await fetchStatus({ socketPath }).catch(() => undefined))?.pairs.filter((p) => p.state === 'authenticated').length ?? -1;
  await eventually(async () => (await pairs()) === 2, 'web <-> api authenticated (same node)', 20_000);

  // A third workload: three identities, six directed pairs.
  const withJobs = stringify({ ...base, cluster: clusterWith([{ ip: '10.40.0.2', spiffeId: WEB }, { ip: '10.40.0.3', spiffeId: API }, { ip: '10.40.0.4', spiffeId: JOBS }]) });
  await replaceFile(file, withJobs);
  await eventually(async () => (await pairs()) === 6, 'the new endpoint was picked up from the file', 10_000);

  // A bad file: the error names the path in the config; the six pairs stay.
  await replaceFile(file, 'identity:\n  maxChainDepth: deep\n');
  await new Promise((resolve) => setTimeout(resolve, 800));
  t.is(await pairs(), 6);

  // Back to two workloads, the way a ConfigMap mount changes: the file becomes a symlink into a
  // directory of its own, swapped in by a rename the watcher sees.
  const mounted = join(dir, 'mounted');
  await mkdir(mounted);
  await writeFile(join(mounted, 'config.yaml'), stringify(base));
  await symlink(join(mounted, 'config.yaml'), `${file}.tmp`);
  await rename(`${file}.tmp`, file);
  await eventually(async () => (await pairs()) === 2, 'the symlink swap was picked up from the file', 10_000);

  // Three workloads again, written in place behind the symlink: a change in another directory
  // raises no event in the watched one, so only the SIGHUP (as an operator would send) reloads.
  await writeFile(join(mounted, 'config.yaml'), withJobs);
  agent.kill('SIGHUP');
  await eventually(async () => (await pairs()) === 6, 'the file reloaded on SIGHUP', 10_000);

  agent.kill('SIGTERM');
  const result = await agent;
  t.is(result.exitCode, 0, 'graceful stop');
  t.regex(String(result.all), /configuration reload rejected; keeping the running state/);
  t.regex(String(result.all), /identity\.maxChainDepth/);
});
