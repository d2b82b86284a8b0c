// The meshauth CNI plugin's own rules, without an agent (as on a node where the agent is not
// running yet): VERSION, errors in the CNI error format, prevResult passed through untouched, the
// spool record written by ADD and removed by DEL, idempotent DEL, CHECK without a record. Also run
// as the executable the runtime calls (the compiled file), once, for its stdout and exit code.
import test from 'ava';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { DEFAULT_READY_TIMEOUT_MS, SUPPORTED_VERSIONS, parseConfig, podAddresses, podOf, runPlugin } from '../src/cni/plugin.js';
import { tempDir } from './helpers/agents.js';
import { MESHAUTH_PLUGIN } from './helpers/cni-runtime.js';

// A bridge plugin's result: the bridge, the host veth, the pod's eth0 (in the sandbox).
const PREV_RESULT = {
  cniVersion: '1.0.0',
  interfaces: [
    { name: 'cni0', mac: '0a:58:0a:58:00:01' },
    { name: 'veth1234', mac: '3e:1b:aa:01:02:03' },
    { name: 'eth0', mac: '0a:58:0a:58:00:05', sandbox: '/run/netns/pod' },
  ],
  ips: [
    { address: '10.88.0.5/16', gateway: '10.88.0.1', interface: 2 },
    { address: 'fd00:88::5/64', interface: 2 },
  ],
  routes: [{ dst: '0.0.0.0/0' }],
  dns: {},
};

async function setup(t: Parameters<typeof tempDir>[0]) {
  const dir = await tempDir(t, 'meshauth-cni-unit-');
  const conf = { cniVersion: '1.0.0', name: 'net', type: 'meshauth', controlSocket: join(dir, 'no-agent.sock'), spoolDir: join(dir, 'spool'), prevResult: PREV_RESULT };
  const env = { CNI_CONTAINERID: 'abc123', CNI_NETNS: '/run/netns/pod', CNI_IFNAME: 'eth0', CNI_ARGS: 'IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u-1', CNI_PATH: '/opt/cni/bin' };
  return { dir, conf, env };
}

test('VERSION names the versions that chain; unknown commands and bad input are CNI errors', async (t) => {
  const version = await runPlugin({ CNI_COMMAND: 'VERSION' }, JSON.stringify({ cniVersion: '1.1.0' }));
  t.is(version.exitCode, 0);
  t.deepEqual(JSON.parse(version.stdout), { cniVersion: '1.1.0', supportedVersions: SUPPORTED_VERSIONS });
  const unknown = await runPlugin({ CNI_COMMAND: 'FROB', CNI_CONTAINERID: 'x' }, JSON.stringify({ cniVersion: '1.0.0' }));
  t.is(unknown.exitCode, 1);
  t.like(JSON.parse(unknown.stdout), { cniVersion: '1.0.0', code: 4 });
  t.like(JSON.parse((await runPlugin({ CNI_COMMAND: 'ADD' }, 'not json')).stdout), { code: 6 });
  t.like(JSON.parse((await runPlugin({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x' }, JSON.stringify({ cniVersion: '0.2.0' }))).stdout), { code: 1 });
  t.like(JSON.parse((await runPlugin({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x' }, JSON.stringify({ cniVersion: '1.0.0', readyTimeoutMs: -1 }))).stdout), { code: 7 });
  t.like(JSON.parse((await runPlugin({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: '../x', CNI_NETNS: '/n', CNI_IFNAME: 'eth0' }, JSON.stringify({ cniVersion: '1.0.0', prevResult: PREV_RESULT }))).stdout), { code: 4 });
  const unchained = await runPlugin({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x' }, JSON.stringify({ cniVersion: '1.0.0' }));
  t.like(JSON.parse(unchained.stdout), { code: 7 });
  t.regex((JSON.parse(unchained.stdout) as { msg: string }).msg, /chained plugin/);
});

test('the pod, its addresses and the defaults are read as a runtime gives them', (t) => {
  t.deepEqual(podOf('IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1'), { namespace: 'shop', name: 'web-0', uid: 'u-1' });
  t.is(podOf(''), undefined, 'not the kubelet: no pod');
  t.deepEqual(podAddresses(PREV_RESULT), ['10.88.0.5', 'fd00:88::5']);
  t.deepEqual(podAddresses({ interfaces: [{ name: 'br0' }], ips: [{ address: '10.0.0.1/24', interface: 0 }] }), [], 'the bridge’s own address is not the pod’s');
  t.deepEqual(podAddresses({ ips: [{ address: '10.0.0.7/24' }] }), ['10.0.0.7'], 'no interface named: the address is the pod’s');
  const config = parseConfig(JSON.stringify({ cniVersion: '1.0.0' }));
  t.is(config.readyTimeoutMs, DEFAULT_READY_TIMEOUT_MS);
  t.true(config.readyTimeoutMs <= 2000, 'the default wait is at most 2 s');
  t.is(config.controlSocket, '/run/meshauth/control.sock');
});

test('without an agent: ADD passes the result through and leaves a record, DEL removes it (twice is fine), CHECK then fails', async (t) => {
  const { dir, conf, env } = await setup(t);
  const add = await runPlugin({ ...env, CNI_COMMAND: 'ADD' }, JSON.stringify(conf));
  t.is(add.exitCode, 0);
  t.is(add.stdout, JSON.stringify(PREV_RESULT), 'prevResult untouched');
  t.regex(add.warnings.join('\n'), /no agent/);
  const record = JSON.parse(await readFile(join(dir, 'spool', 'abc123.json'), 'utf8')) as Record<string, unknown>;
  t.like(record, { containerId: 'abc123', netns: '/run/netns/pod', ifName: 'eth0', ips: ['10.88.0.5', 'fd00:88::5'], pod: { namespace: 'shop', name: 'web-0', uid: 'u-1' } });

  const check = await runPlugin({ ...env, CNI_COMMAND: 'CHECK' }, JSON.stringify(conf));
  t.is(check.exitCode, 0, 'CHECK with the record and no agent to ask');
  const again = await runPlugin({ ...env, CNI_COMMAND: 'ADD' }, JSON.stringify(conf));
  t.is(again.exitCode, 0, 'ADD again is fine');

  for (let i = 0; i < 2; i++) {
    const del = await runPlugin({ ...env, CNI_COMMAND: 'DEL' }, JSON.stringify(conf));
    t.is(del.exitCode, 0);
    t.is(del.stdout, '');
  }
  t.false(existsSync(join(dir, 'spool', 'abc123.json')));
  const checkAfter = await runPlugin({ ...env, CNI_COMMAND: 'CHECK' }, JSON.stringify(conf));
  t.is(checkAfter.exitCode, 1);
  t.like(JSON.parse(checkAfter.stdout), { code: 100 });
  const old = await runPlugin({ ...env, CNI_COMMAND: 'CHECK' }, JSON.stringify({ ...conf, cniVersion: '0.3.1' }));
  t.like(JSON.parse(old.stdout), { code: 1 }, 'CHECK came with 0.4.0');
});

test('the compiled plugin runs as an executable: result on stdout, exit code 0, warnings on stderr', async (t) => {
  const { conf, env } = await setup(t);
  const result = await execa(MESHAUTH_PLUGIN, [], { input: JSON.stringify(conf), env: { ...env, CNI_COMMAND: 'ADD' }, reject: false });
  t.is(result.exitCode, 0);
  t.deepEqual(JSON.parse(result.stdout), PREV_RESULT);
  t.regex(result.stderr, /meshauth: the agent did not take the pod/);
  const bad = await execa(MESHAUTH_PLUGIN, [], { input: '{', env: { CNI_COMMAND: 'ADD' }, reject: false });
  t.is(bad.exitCode, 1);
  t.like(JSON.parse(bad.stdout), { code: 6 });
});
