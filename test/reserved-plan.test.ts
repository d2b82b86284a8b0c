// The reserved peers in a node plan: where their addresses go in the ipcache, and what policy
// (with the default exemptions) says about their traffic to and from each local endpoint.
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { parse as parseYaml } from 'yaml';
import { NumericIds } from '../src/auth/numeric-ids.js';
import { policyRule } from '../src/cluster/kubernetes/convert.js';
import { DEFAULT_EXEMPT_PEERS, type ReservedPeer } from '../src/cluster/reserved.js';
import { ClusterState } from '../src/cluster/state.js';
import type { EndpointInfo, PolicyMode, PolicyRule } from '../src/cluster/types.js';
import { fullPlan } from './helpers/full-plan.js';
import { addReservedPeers, RESERVED_NUMBER, type ReservedAddresses } from '../src/agent/reserved-plan.js';
import { AUTH_TYPE, NO_IDENTITY, RESERVED_IDENTITY, encodeIpcacheKey, encodeIpcacheValue, encodePolicyKey } from '../src/datapath/gate/layout.js';
import { parseIpPrefix } from '../src/datapath/ip-prefix.js';

const shopWeb: EndpointInfo = { ip: '10.1.0.5', spiffeId: 'spiffe://td/ns/shop/sa/web', node: 'a', namespace: 'shop', serviceAccount: 'web' };
const blogApp: EndpointInfo = { ip: '10.1.0.6', spiffeId: 'spiffe://td/ns/blog/sa/app', node: 'a', namespace: 'blog', serviceAccount: 'app' };
const remoteShop: EndpointInfo = { ip: '10.2.0.5', spiffeId: 'spiffe://td/ns/shop/sa/db', node: 'b', namespace: 'shop', serviceAccount: 'db' };

const ADDRESSES: ReservedAddresses = {
  serviceCidrs: ['10.96.0.0/16'],
  podCidrs: ['10.0.0.0/8'],
  apiServers: ['192.0.2.100'],
  hostAddresses: ['10.1.0.1'],
};

async function plan(rules: PolicyRule[], defaultMode: PolicyMode, exempt: readonly ReservedPeer[] = DEFAULT_EXEMPT_PEERS) {
  const state = new ClusterState('a');
  state.replaceAll({
    nodes: [
      { name: 'a', address: '192.0.2.1', podCidrs: ['10.1.0.0/24'] },
      { name: 'b', address: '192.0.2.2', podCidrs: ['10.2.0.0/24'] },
    ],
    endpoints: [shopWeb, blogApp, remoteShop],
    policies: rules,
  });
  const ids = await NumericIds.load();
  const result = fullPlan(state, ids, defaultMode);
  addReservedPeers(result, state, ids, defaultMode, exempt, ADDRESSES);
  /** What the gate applies to (endpoint, reserved peer, direction): its policy entry, or the default. */
  const entry = (endpoint: EndpointInfo, peer: ReservedPeer, direction: 'egress' | 'ingress'): PolicyMode => {
    const found = result.policy.get(`${ids.identity(endpoint.spiffeId)}:${RESERVED_NUMBER[peer]}:${direction}`)?.authType;
    return found === undefined ? defaultMode : found === AUTH_TYPE.mtls ? 'required' : 'disabled';
  };
  return { plan: result, ids, entry };
}

test('reserved addresses: world under everything, pod ranges without identity, endpoints always win', async (t) => {
  const { plan: result, ids } = await plan([], 'required');
  const at = (prefix: string) => result.ipcache.get(prefix);
  t.deepEqual(at('0.0.0.0/0'), { identity: RESERVED_IDENTITY.world, node: 0 });
  t.deepEqual(at('::/0'), { identity: RESERVED_IDENTITY.world, node: 0 });
  t.deepEqual(at('10.0.0.0/8'), { identity: NO_IDENTITY, node: 0 }, 'configured pod range: unknown, not world');
  t.deepEqual(at('10.2.0.0/24'), { identity: NO_IDENTITY, node: 0 }, "a node's pod range");
  t.deepEqual(at('10.96.0.0/16'), { identity: RESERVED_IDENTITY.service, node: 0 });
  t.deepEqual(at('192.0.2.2/32'), { identity: RESERVED_IDENTITY.remoteNode, node: ids.node('b') });
  t.deepEqual(at('192.0.2.1/32'), { identity: RESERVED_IDENTITY.host, node: ids.node('a') });
  t.deepEqual(at('10.1.0.1/32'), { identity: RESERVED_IDENTITY.host, node: ids.node('a') }, 'a further host address (a bridge gateway)');
  t.deepEqual(at('192.0.2.100/32'), { identity: RESERVED_IDENTITY.kubeApiserver, node: 0 });
  t.deepEqual(at('10.1.0.5/32'), { identity: ids.identity(shopWeb.spiffeId), node: ids.node('a') });
  t.false([...result.pairs.values()].some((pair) => pair.remoteId.startsWith('reserved')), 'never a pair with a reserved peer');
  // Everything the agent will write encodes (NO_IDENTITY included): a plan the maps refuse would
  // stop the agent's re-planning.
  for (const [prefix, entry] of result.ipcache) {
    t.notThrows(() => [encodeIpcacheKey(parseIpPrefix(prefix)), encodeIpcacheValue(entry)], prefix);
  }
  for (const { key } of result.policy.values()) t.notThrows(() => encodePolicyKey(key));
});

test('default required: reserved peers are dropped both ways, except the exempt host and API server', async (t) => {
  const { entry } = await plan([], 'required');
  for (const direction of ['egress', 'ingress'] as const) {
    t.is(entry(shopWeb, 'world', direction), 'required');
    t.is(entry(shopWeb, 'remote-node', direction), 'required');
    t.is(entry(shopWeb, 'host', direction), 'disabled', 'kubelet probes');
    t.is(entry(shopWeb, 'kube-apiserver', direction), 'disabled');
  }
  const strict = await plan([], 'required', []);
  t.is(strict.entry(shopWeb, 'host', 'ingress'), 'required', 'nothing exempt: the host is dropped too');
});

test('deploy/examples/require-all-inbound.yaml requires every inbound peer of "shop", exempt ones aside', async (t) => {
  const example = parseYaml(await readFile(new URL('../deploy/examples/require-all-inbound.yaml', import.meta.url), 'utf8')) as unknown;
  const { plan: result, entry, ids } = await plan([policyRule(example)], 'disabled');
  t.is(entry(shopWeb, 'world', 'ingress'), 'required');
  t.is(entry(shopWeb, 'remote-node', 'ingress'), 'required', 'other nodes, their host-network pods, masqueraded NodePort clients');
  t.is(entry(shopWeb, 'host', 'ingress'), 'disabled', 'the kubelet probes');
  t.is(entry(shopWeb, 'kube-apiserver', 'ingress'), 'disabled');
  t.is(entry(shopWeb, 'world', 'egress'), 'disabled', 'inbound only');
  t.is(entry(blogApp, 'world', 'ingress'), 'disabled', 'other namespaces keep the default');
  // Every workload, wherever it runs, must authenticate to shop's.
  const required = (local: EndpointInfo, remote: EndpointInfo) =>
    result.policy.get(`${ids.identity(local.spiffeId)}:${ids.identity(remote.spiffeId)}:ingress`)?.authType === AUTH_TYPE.mtls;
  t.true(required(shopWeb, blogApp));
  t.true(required(shopWeb, remoteShop));
  t.false(required(blogApp, shopWeb));
});

test('a reserved source selects only that peer; workload fields select only workloads', async (t) => {
  const fromWorld: PolicyRule = { name: 'w', source: { reserved: 'world' }, destination: { namespace: 'blog' }, mode: 'required' };
  const fromShop: PolicyRule = { name: 's', source: { namespace: 'shop' }, destination: { namespace: 'blog' }, mode: 'required' };
  const { entry } = await plan([fromWorld, fromShop], 'disabled');
  t.is(entry(blogApp, 'world', 'ingress'), 'required');
  t.is(entry(blogApp, 'remote-node', 'ingress'), 'disabled');
  const exemptHost: PolicyRule = { name: 'h', source: {}, destination: { reserved: 'host' }, mode: 'required' };
  const strict = await plan([exemptHost], 'disabled', []);
  t.is(strict.entry(shopWeb, 'host', 'egress'), 'required', 'a reserved destination (static config)');
  t.is(strict.entry(shopWeb, 'world', 'egress'), 'disabled');
  t.is(strict.entry(shopWeb, 'host', 'ingress'), 'disabled', 'a reserved destination is not a source');
});

test('DNS under require-all-inbound: the pair with CoreDNS is authenticated proactively, or its answers exempt', async (t) => {
  const load = async (file: string) => policyRule(parseYaml(await readFile(new URL(`../deploy/examples/${file}`, import.meta.url), 'utf8')) as unknown);
  const coredns: EndpointInfo = { ip: '10.2.0.53', spiffeId: 'spiffe://td/ns/kube-system/sa/coredns', node: 'b', namespace: 'kube-system', serviceAccount: 'coredns', labels: { 'k8s-app': 'kube-dns' } };
  const state = new ClusterState('a');
  const rules = [await load('require-all-inbound.yaml')];
  state.replaceAll({
    nodes: [
      { name: 'a', address: '192.0.2.1', podCidrs: ['10.1.0.0/24'] },
      { name: 'b', address: '192.0.2.2', podCidrs: ['10.2.0.0/24'] },
    ],
    endpoints: [shopWeb, coredns],
    policies: rules,
  });
  const ids = await NumericIds.load();
  const answers = (result: ReturnType<typeof fullPlan>) =>
    result.policy.get(`${ids.identity(shopWeb.spiffeId)}:${ids.identity(coredns.spiffeId)}:ingress`)?.authType;
  const required = fullPlan(state, ids, 'disabled');
  t.is(answers(required), AUTH_TYPE.mtls, 'the answers to shop need the pair');
  t.true([...required.pairs.values()].some((pair) => pair.localId === shopWeb.spiffeId && pair.remoteId === coredns.spiffeId), 'which is desired: authenticated proactively');

  state.replaceAll({ nodes: [...state.nodes.values()], endpoints: [shopWeb, coredns], policies: [...rules, await load('exempt-dns-answers.yaml')] });
  const exempt = fullPlan(state, ids, 'disabled');
  t.is(answers(exempt), undefined, 'exempt: the default (disabled) applies');
  t.false([...exempt.pairs.values()].some((pair) => pair.remoteId === coredns.spiffeId), 'and no pair is needed');
});
