// Privileged: the meshauth CNI plugin chained after the real bridge and ptp plugins (with
// host-local IPAM), run as a container runtime runs them, against a real agent with the real
// gate. Each test builds its own uniquely named namespaces: a node namespace (the host, where
// the runtime runs the plugins and the gate sits) and one per pod.
import type { ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { pino } from 'pino';
import { Agent } from '../src/agent/agent.js';
import { parseConfig, type ConfigInput } from '../src/config/config.js';
import { Datapath } from '../src/datapath/gate/datapath.js';
import { attachedPrograms } from '../src/datapath/gate/hooks.js';
import { resolveHostInterface } from '../src/datapath/gate/interface-resolver.js';
import { PinLayout } from '../src/datapath/gate/pin-layout.js';
import { agentConfig, eventually, tempDir } from './helpers/agents.js';
import { CniError, CniRuntime, cniBinDir, type NetworkConfigList, type Sandbox } from './helpers/cni-runtime.js';
import { assertGateBuilt } from './helpers/datapath-fixture.js';
import { inNetns } from '../src/netns/exec.js';
import { FORWARDING, NetnsTopology, QUIET_IPV6 } from '../src/netns/topology.js';
import { privileged } from './helpers/privileged.js';
import { node, pod, policy } from './helpers/cluster-events.js';
import { KubeApiServer } from './servers/kube-api-server.js';
import { writeKubeConfig } from './helpers/kube-config.js';
import { DEFAULT_PORT } from '../src/handshake/protocol.js';

const A = 'spiffe://example.org/ns/shop/sa/web';
const B = 'spiffe://example.org/ns/shop/sa/db';
const C = 'spiffe://example.org/ns/shop/sa/rogue';

interface LogLine {
  msg: string;
  [field: string]: unknown;
}

/** An in-process agent whose log lines the test reads. */
async function startLoggedAgent(t: ExecutionContext, config: ConfigInput): Promise<{ agent: Agent; logs: LogLine[] }> {
  const logs: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void logs.push(JSON.parse(line) as LogLine) });
  const agent = await Agent.start(parseConfig(config), { logger });
  t.teardown(() => agent.stop());
  return { agent, logs };
}

/** Namespaces named after the test's tag (the node routes), removed at teardown (also after a failure). */
async function namespaces(t: ExecutionContext, tag: string, names: string[]): Promise<Record<string, string>> {
  const topology = await NetnsTopology.create(
    { prefix: 'mc', namespaces: names.map((name) => ({ name, sysctls: name === 'node' ? { ...QUIET_IPV6, ...FORWARDING } : QUIET_IPV6 })) },
    { tag, teardown: (destroy) => t.teardown(destroy) },
  );
  return Object.fromEntries(names.map((name) => [name, topology.netns(name)]));
}

/** The host-side interface of a pod's eth0, as the kernel links them (what the agent must bind). */
async function hostSideOf(podNetns: string, nodeNetns: string): Promise<string> {
  const [pod] = JSON.parse((await execa('ip', ['-n', podNetns, '-j', 'link', 'show', 'dev', 'eth0'])).stdout) as { link_index: number }[];
  const links = JSON.parse((await execa('ip', ['-n', nodeNetns, '-j', 'link', 'show'])).stdout) as { ifindex: number; ifname: string }[];
  return links.find((link) => link.ifindex === pod!.link_index)!.ifname;
}

function registeredInterface(logs: LogLine[], containerId: string, how = 'pod registered by the CNI plugin'): unknown {
  return logs.find((line) => line.msg === how && line.containerId === containerId)?.interface;
}

function sandbox(netns: string, name: string): Sandbox {
  return { containerId: `${name}-${randomBytes(6).toString('hex')}`, netns: `/run/netns/${netns}`, pod: { namespace: 'shop', name, uid: randomBytes(8).toString('hex') } };
}

privileged('bridged pods are bound to the port the kernel links to their namespace, never to a forged neighbour entry; DEL revokes before it returns', async (t) => {
  assertGateBuilt();
  const tag = randomBytes(3).toString('hex');
  const ns = await namespaces(t, tag, ['node', 'web', 'rogue', 'db', 'stray']);
  const dir = await tempDir(t, 'meshauth-cni-');
  const pinDir = `/sys/fs/bpf/meshauth-test-${tag}-cni`;
  t.teardown(() => Datapath.uninstall({ pinDir }));
  const subnet = '10.77.41';
  const port = 42_641;
  const cluster: ConfigInput['cluster'] = {
    nodes: [{ name: 'n1', address: '127.0.41.1', podCidrs: [`${subnet}.0/24`], port }],
    // host-local hands out .2, .3, .4 in order: web, then rogue, then db.
    endpoints: [
      { ip: `${subnet}.2`, spiffeId: A, node: 'n1' },
      { ip: `${subnet}.3`, spiffeId: C, node: 'n1' },
      { ip: `${subnet}.4`, spiffeId: B, node: 'n1' },
    ],
    policy: { default: 'disabled', rules: [{ name: 'web-db', source: { spiffeId: A }, destination: { spiffeId: B }, mode: 'required' }] },
  };
  const config: ConfigInput = {
    ...agentConfig(dir, { name: 'n1', address: '127.0.41.1' }, cluster, port),
    datapath: { enabled: true, pinDir, netns: ns.node! },
    cni: { spoolDir: join(dir, 'spool') },
  };
  await mkdir(join(dir, 'n1'), { recursive: true });
  const { agent, logs } = await startLoggedAgent(t, config);

  const list: NetworkConfigList = {
    cniVersion: '1.0.0',
    name: `mc-${tag}`,
    plugins: [
      { type: 'bridge', bridge: `mcb${tag}`, isGateway: true, ipam: { type: 'host-local', ranges: [[{ subnet: `${subnet}.0/24` }]], dataDir: join(dir, 'ipam') } },
      { type: 'meshauth', controlSocket: config.control!.socket!, spoolDir: join(dir, 'spool'), readyTimeoutMs: 2000 },
    ],
  };
  const runtime = new CniRuntime(await cniBinDir(t), ns.node!, list);

  const web = sandbox(ns.web!, 'web');
  const result = await runtime.add(web);
  const [bridgeRun, meshauthRun] = runtime.runs;
  t.deepEqual(result, JSON.parse(bridgeRun!.stdout), 'the chain returns the bridge plugin’s result');
  t.is(meshauthRun!.stdout.trim(), JSON.stringify(JSON.parse(bridgeRun!.stdout)), 'untouched');
  t.is(registeredInterface(logs, web.containerId), await hostSideOf(ns.web!, ns.node!));

  // The rogue pod (its own identity) claims db's address before db exists: a forged ARP that the
  // bridge and the host's neighbour table believe.
  const rogue = sandbox(ns.rogue!, 'rogue');
  await runtime.add(rogue);
  await inNetns(ns.rogue!, 'ip', ['addr', 'add', `${subnet}.4/24`, 'dev', 'eth0']);
  await execa('ip', ['netns', 'exec', ns.rogue!, 'ping', '-c', '1', '-W', '1', '-I', `${subnet}.4`, `${subnet}.1`], { reject: false });
  const [rogueLink] = JSON.parse((await execa('ip', ['-n', ns.rogue!, '-j', 'link', 'show', 'dev', 'eth0'])).stdout) as { address: string }[];
  const neighbours = JSON.parse((await execa('ip', ['-n', ns.node!, '-j', 'neigh', 'show', 'to', `${subnet}.4`])).stdout) as { lladdr?: string }[];
  t.is(neighbours[0]?.lladdr, rogueLink!.address, 'the premise: the host believes the forged neighbour entry');
  t.is(await resolveHostInterface(`${subnet}.4`, ns.node), undefined, 'a bridged address is never resolved from neighbours');

  const db = sandbox(ns.db!, 'db');
  await runtime.add(db);
  const dbPort = await hostSideOf(ns.db!, ns.node!);
  t.is(registeredInterface(logs, db.containerId), dbPort, 'db is bound to its own port');
  t.not(dbPort, await hostSideOf(ns.rogue!, ns.node!));
  await agent.settled();
  const gated = await attachedPrograms(new PinLayout(pinDir), { name: dbPort, netns: ns.node! });
  t.true(Object.values(gated).every(Boolean), 'the gate sits on db’s port');
  // ADD answered only once web <-> db was authenticated.
  t.true(agent.status().pairs.some((pair) => pair.localId === B && pair.remoteId === A && pair.state === 'authenticated'));

  // A pod no source has named yet (.5) is gated from its ADD on, with no identity bound.
  await runtime.add(sandbox(ns.stray!, 'stray'));
  await agent.settled();
  const strayGated = await attachedPrograms(new PinLayout(pinDir), { name: await hostSideOf(ns.stray!, ns.node!), netns: ns.node! });
  t.true(Object.values(strayGated).every(Boolean), 'a pod of unknown identity starts gated');

  await runtime.check(db);
  await runtime.del(db);
  // Revoked before DEL returned: no pair of db's identity remains, its record is gone.
  t.false(agent.status().pairs.some((pair) => pair.localId === B || pair.remoteId === B), 'db’s pairs are revoked');
  t.false(existsSync(join(dir, 'spool', `${db.containerId}.json`)));
  await t.notThrowsAsync(runtime.del(db), 'DEL again is no error');
  const checkAfterDel = await runtime.check(db).catch((err: unknown) => err);
  t.true(checkAfterDel instanceof CniError && checkAfterDel.run.type === 'bridge', 'CHECK of a deleted pod fails (at the bridge, which lost its veth)');
});

privileged('ADD waits until the new pod’s remote pair is authenticated; with the agent down ADD and DEL succeed and the restarted agent learns from the spool', async (t) => {
  assertGateBuilt();
  const tag = randomBytes(3).toString('hex');
  const ns = await namespaces(t, tag, ['node', 'web', 'api']);
  const dir = await tempDir(t, 'meshauth-cni-');
  const pinDir = `/sys/fs/bpf/meshauth-test-${tag}-cni`;
  t.teardown(() => Datapath.uninstall({ pinDir }));
  const subnet = '10.77.42';
  const port = 42_642;
  const API = 'spiffe://example.org/ns/shop/sa/api';
  const cluster: ConfigInput['cluster'] = {
    nodes: [
      { name: 'n1', address: '127.0.42.1', podCidrs: [`${subnet}.0/24`], port },
      { name: 'n2', address: '127.0.42.2', podCidrs: ['10.78.42.0/24'], port },
    ],
    endpoints: [
      { ip: `${subnet}.2`, spiffeId: A, node: 'n1' },
      { ip: `${subnet}.3`, spiffeId: API, node: 'n1' },
      // db runs on n2, whose agent gates nothing here: only its handshakes matter.
      { ip: '10.78.42.2', spiffeId: B, node: 'n2' },
    ],
    policy: { default: 'required' },
  };
  const spoolDir = join(dir, 'spool');
  const config1: ConfigInput = {
    ...agentConfig(dir, { name: 'n1', address: '127.0.42.1' }, cluster, port),
    datapath: { enabled: true, pinDir, netns: ns.node! },
    cni: { spoolDir },
  };
  const config2 = agentConfig(dir, { name: 'n2', address: '127.0.42.2' }, cluster, port);
  const first = await startLoggedAgent(t, config1);

  const list: NetworkConfigList = {
    cniVersion: '1.1.0',
    name: `mc-${tag}`,
    plugins: [
      { type: 'ptp', ipam: { type: 'host-local', ranges: [[{ subnet: `${subnet}.0/24` }]], dataDir: join(dir, 'ipam') } },
      // The longest wait the plugin allows: the bound only ends a broken run, the order decides.
      { type: 'meshauth', controlSocket: config1.control!.socket!, spoolDir, readyTimeoutMs: 10_000 },
    ],
  };
  const runtime = new CniRuntime(await cniBinDir(t), ns.node!, list);
  const web = sandbox(ns.web!, 'web');
  // web's pair with db cannot be authenticated while n2 has no agent: the ADD starts first, n2's
  // agent after it, so an ADD that answers ready has waited for the handshakes.
  const adding = runtime.add(web);
  await eventually(() => registeredInterface(first.logs, web.containerId) !== undefined, 'the agent has the ADD');
  await startLoggedAgent(t, config2);
  await adding;
  const pair = first.agent.status().pairs.find((p) => p.localId === A && p.remoteId === B);
  t.is(pair?.state, 'authenticated', 'web -> db authenticated when ADD returned');
  t.is(runtime.runs.at(-1)!.stderr, '', 'and the agent said so: ready, nothing pending');
  t.is(registeredInterface(first.logs, web.containerId), await hostSideOf(ns.web!, ns.node!), 'a routed (ptp) pod is bound the same way');

  // The agent goes away (an upgrade): pods keep coming and going.
  await first.agent.stop();
  const api = sandbox(ns.api!, 'api');
  const apiResult = await runtime.add(api);
  t.deepEqual(apiResult, JSON.parse(runtime.runs.at(-2)!.stdout), 'ADD without an agent passes the result through');
  t.regex(runtime.runs.at(-1)!.stderr, /the agent did not take the pod/);
  await runtime.del(web);
  t.regex(runtime.runs.at(-2)!.stderr, /no agent/, 'DEL without an agent succeeds');

  const second = await startLoggedAgent(t, config1);
  const fromSpool = 'pod registered from the CNI spool';
  t.is(second.logs.filter((line) => line.msg === fromSpool).length, 1, 'only the pod still there');
  t.is(registeredInterface(second.logs, api.containerId, fromSpool), await hostSideOf(ns.api!, ns.node!));
});

privileged('Kubernetes: ADD gives a pod the informer has seen only scheduled its identity at once, answers as soon as its remote pair has an outcome, and the pair follows once the peer knows the pod', async (t) => {
  assertGateBuilt();
  const tag = randomBytes(3).toString('hex');
  const ns = await namespaces(t, tag, ['node', 'web']);
  const dir = await tempDir(t, 'meshauth-cni-k8s-');
  const pinDir = `/sys/fs/bpf/meshauth-test-${tag}-cni`;
  t.teardown(() => Datapath.uninstall({ pinDir }));
  const server = await KubeApiServer.start();
  t.teardown(() => server.close());
  // The Kubernetes source carries no handshake port: the default one, on loopback addresses of
  // this test's own (127.0.43.x).
  const addresses = { a: '127.0.43.1', b: '127.0.43.2' };
  server.create('nodes', node('node-a', [{ type: 'InternalIP', address: addresses.a }], ['10.77.43.0/24']));
  server.create('nodes', node('node-b', [{ type: 'InternalIP', address: addresses.b }], ['10.78.43.0/24']));
  server.create('pods', pod({ namespace: 'shop', name: 'db-0', serviceAccount: 'db', node: 'node-b', ips: ['10.78.43.2'] }));
  // Scheduled to node-a, no address, not running: what the informer holds when the CNI runs.
  const web = server.create('pods', pod({ namespace: 'shop', name: 'web-0', serviceAccount: 'web', node: 'node-a', phase: 'Pending' }));
  server.create('mutualauthpolicies', policy('shop', 'db-auth', { mode: 'required', source: { namespace: 'shop' }, destination: { serviceAccount: 'db' } }));
  const kubeconfig = await writeKubeConfig(dir, server);
  const spoolDir = join(dir, 'spool');
  const configOf = (name: string, address: string): ConfigInput =>
    agentConfig(dir, { name, address, overrides: { kubernetes: { enabled: true, kubeconfig } } }, { policy: { default: 'disabled' } }, DEFAULT_PORT);
  const a = await startLoggedAgent(t, { ...configOf('node-a', addresses.a), datapath: { enabled: true, pinDir, netns: ns.node! }, cni: { spoolDir } });
  await startLoggedAgent(t, configOf('node-b', addresses.b));
  await eventually(() => a.agent.status().peers.some((peer) => peer.state === 'up'), 'the node link is up');

  const list: NetworkConfigList = {
    cniVersion: '1.0.0',
    name: `mc-${tag}`,
    plugins: [
      { type: 'ptp', ipam: { type: 'host-local', ranges: [[{ subnet: '10.77.43.0/24' }]], dataDir: join(dir, 'ipam') } },
      { type: 'meshauth', controlSocket: join(dir, 'node-a', 'control.sock'), spoolDir, readyTimeoutMs: 10_000 },
    ],
  };
  const runtime = new CniRuntime(await cniBinDir(t), ns.node!, list);
  const sandboxOfWeb: Sandbox = { containerId: `web-${tag}`, netns: `/run/netns/${ns.web!}`, pod: { namespace: 'shop', name: 'web-0', uid: String(web.metadata.uid) } };
  t.is(a.agent.status().pairs.length, 0, 'no pair before the pod is wired: the informer has no address for it');
  const addResult = (await runtime.add(sandboxOfWeb)) as { ips: { address: string }[] };
  const WEB = 'spiffe://example.org/ns/shop/sa/web';
  const DB = 'spiffe://example.org/ns/shop/sa/db';
  // node-a knew web's identity at once (a pair exists and was tried), but node-b has only the
  // informer's word, which has no address for web until the kubelet reports it after the ADD:
  // node-b refuses, and the ADD answers then rather than at the end of its 10 s bound.
  const webDb = () => a.agent.status().pairs.find((p) => p.localId === WEB && p.remoteId === DB);
  t.is(webDb()?.state, 'failed', 'web -> db tried and refused by the peer that does not know web yet');
  t.is(webDb()?.lastError, 'unauthorized');
  t.regex(runtime.runs.at(-1)!.stderr, /1 pair\(s\) of the pod not authenticated yet/);
  // The kubelet reports the pod running with its address: node-b learns it, the retry succeeds.
  const webIp = addResult.ips[0]!.address.split('/')[0]!;
  server.update('pods', pod({ namespace: 'shop', name: 'web-0', serviceAccount: 'web', node: 'node-a', ips: [webIp] }));
  await eventually(() => webDb()?.state === 'authenticated', 'web -> db authenticated once node-b knows web');

  await runtime.del(sandboxOfWeb);
  t.false(a.agent.status().pairs.some((p) => p.localId === WEB), 'DEL revoked web’s pairs, though the informer still has the pod');
});
