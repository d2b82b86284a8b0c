import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ConfigInput } from '../src/config/config.js';
import { parseConfig } from '../src/config/config.js';
import { Agent } from '../src/agent/agent.js';
import { fetchStatus } from '../src/control/client.js';
import { silentLogger } from '../src/util/logger.js';
import { agentConfig, eventually, startAgent, tempDir } from './helpers/agents.js';

// Each test uses its own loopback addresses and ports so tests can run concurrently.
const WEB = 'spiffe://example.org/ns/shop/sa/web';
const DB = 'spiffe://example.org/ns/shop/sa/db';
const API = 'spiffe://example.org/ns/shop/sa/api';

function cluster(a: string, b: string, port: number, extra: { endpoints?: NonNullable<ConfigInput['cluster']>['endpoints'] } = {}): ConfigInput['cluster'] {
  return {
    nodes: [
      { name: 'node-a', address: a, podCidrs: ['10.1.0.0/24'], port },
      { name: 'node-b', address: b, podCidrs: ['10.2.0.0/24'], port },
    ],
    endpoints: extra.endpoints ?? [
      { ip: '10.1.0.2', spiffeId: WEB, node: 'node-a' },
      { ip: '10.2.0.2', spiffeId: DB, node: 'node-b' },
    ],
    policy: { default: 'disabled', rules: [{ name: 'web-to-db', source: { spiffeId: WEB }, destination: { spiffeId: DB }, mode: 'required' }] },
  };
}

function pairsOf(agent: Agent, state = 'authenticated') {
  return agent.status().pairs.filter((p) => p.state === state);
}

test('two agents authenticate the required pair proactively, with one handshake for both directions', async (t) => {
  const dir = await tempDir(t);
  const port = 42_511;
  const spec = cluster('127.0.10.1', '127.0.10.2', port);
  const a = await startAgent(t, agentConfig(dir, { name: 'node-a', address: '127.0.10.1' }, spec, port));
  const b = await startAgent(t, agentConfig(dir, { name: 'node-b', address: '127.0.10.2' }, spec, port));
  await eventually(() => pairsOf(a).length === 1 && pairsOf(b).length === 1, 'both sides hold the pair');
  const onA = pairsOf(a)[0]!;
  const onB = pairsOf(b)[0]!;
  t.like(onA, { localId: WEB, remoteId: DB, remoteNode: 'node-b' });
  t.like(onB, { localId: DB, remoteId: WEB, remoteNode: 'node-a' });
  // Which side's handshake recorded last depends on timing; that one handshake records both
  // directions is asserted by the handshake tests.
  t.true(['proactive', 'responder'].includes(onA.trigger!) && ['proactive', 'responder'].includes(onB.trigger!));
  t.is(onA.expiresAt, onB.expiresAt, 'both sides apply the same expiry rule to the same chains');
  // The node links came up first: pairs ride on them.
  t.like(a.status().peers[0], { node: 'node-b', state: 'up' });
  t.like(b.status().peers[0], { node: 'node-a', state: 'up' });
  // Keys only for identities with endpoints on the node.
  t.deepEqual(a.status().identities.map((i) => i.spiffeId).sort(), ['spiffe://example.org/meshauth/node/node-a', WEB].sort());
});

test('the status reaches meshauth status through the 0600 control socket', async (t) => {
  const dir = await tempDir(t);
  const port = 42_512;
  const spec = cluster('127.0.11.1', '127.0.11.2', port);
  const config = agentConfig(dir, { name: 'node-a', address: '127.0.11.1' }, spec, port);
  await startAgent(t, config);
  const status = await fetchStatus({ socketPath: config.control!.socket! });
  t.is(status.nodeName, 'node-a');
  t.is(status.pairs.length, 1);
});

test('an endpoint removed by a config reload takes its pair out at once, on both nodes', async (t) => {
  const dir = await tempDir(t);
  const port = 42_513;
  const spec = cluster('127.0.12.1', '127.0.12.2', port, {
    endpoints: [
      { ip: '10.1.0.2', spiffeId: WEB, node: 'node-a' },
      { ip: '10.1.0.3', spiffeId: API, node: 'node-a' },
      { ip: '10.2.0.2', spiffeId: DB, node: 'node-b' },
    ],
  });
  spec!.policy!.rules!.push({ name: 'api-to-db', source: { spiffeId: API }, destination: { spiffeId: DB }, mode: 'required' });
  const configA = agentConfig(dir, { name: 'node-a', address: '127.0.12.1' }, spec, port);
  const configB = agentConfig(dir, { name: 'node-b', address: '127.0.12.2' }, spec, port);
  const a = await startAgent(t, configA);
  const b = await startAgent(t, configB);
  await eventually(() => pairsOf(a).length === 2 && pairsOf(b).length === 2, 'both pairs on both sides');
  const without = structuredClone(spec)!;
  without.endpoints = without.endpoints!.filter((e) => e.spiffeId !== API);
  a.reload(parseConfig({ ...configA, cluster: without }));
  b.reload(parseConfig({ ...configB, cluster: without }));
  // Removal is not timed or polled: it happens before the event loop's next turn.
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(pairsOf(a).map((p) => p.localId), [WEB]);
  t.deepEqual(pairsOf(b).map((p) => p.remoteId), [WEB]);
});

test('a reload that changes only the policy default re-plans: the pairs it now requires are authenticated', async (t) => {
  const dir = await tempDir(t);
  const port = 42_519;
  const spec = { ...cluster('127.0.19.1', '127.0.19.2', port), policy: { default: 'disabled' as const, rules: [] } };
  const configA = agentConfig(dir, { name: 'node-a', address: '127.0.19.1' }, spec, port);
  const configB = agentConfig(dir, { name: 'node-b', address: '127.0.19.2' }, spec, port);
  const a = await startAgent(t, configA);
  const b = await startAgent(t, configB);
  await a.settled();
  t.deepEqual(a.status().pairs, [], 'nothing required');
  // The nodes and endpoints are unchanged: the cluster state raises no event of its own.
  const required = { ...spec, policy: { default: 'required' as const, rules: [] } };
  a.reload(parseConfig({ ...configA, cluster: required }));
  b.reload(parseConfig({ ...configB, cluster: required }));
  await eventually(() => pairsOf(a).length === 1 && pairsOf(b).length === 1, 'the pair the new default requires');
});

test('a responder refuses pairs policy does not require: nothing is recorded for them', async (t) => {
  const dir = await tempDir(t);
  const port = 42_514;
  // node-b does not know the policy (its copy requires nothing): it must refuse node-a's attempt.
  const specA = cluster('127.0.13.1', '127.0.13.2', port);
  const specB = { ...cluster('127.0.13.1', '127.0.13.2', port), policy: { default: 'disabled' as const, rules: [] } };
  const a = await startAgent(t, agentConfig(dir, { name: 'node-a', address: '127.0.13.1' }, specA, port));
  const b = await startAgent(t, agentConfig(dir, { name: 'node-b', address: '127.0.13.2' }, specB, port));
  await eventually(() => a.status().pairs.some((p) => p.state === 'failed'), 'the attempt failed');
  t.is(a.status().pairs[0]!.lastError, 'unauthorized');
  t.is(pairsOf(a).length, 0);
  t.is(b.status().pairs.length, 0);
});

test('an unreachable identity provider gives a clear error, readiness says why, and the agent keeps serving', async (t) => {
  const dir = await tempDir(t);
  const port = 42_515;
  const config = agentConfig(dir, { name: 'node-a', address: '127.0.14.1' }, cluster('127.0.14.1', '127.0.14.2', port), port);
  config.identity = { provider: 'spiffe', spiffe: { endpoint: `unix://${join(dir, 'no-such-agent.sock')}` } };
  const agent = await startAgent(t, config);
  await eventually(() => agent.status().ready === false && agent.status().identities.length === 0, 'not ready, no identities');
  const status = await fetchStatus({ socketPath: config.control!.socket! });
  t.false(status.ready);
  t.is(status.pairs[0]?.state === 'authenticated', false);
});

test('a malformed config file is rejected with the path of the error, before anything starts', async (t) => {
  const dir = await tempDir(t);
  const file = join(dir, 'bad.yaml');
  await writeFile(file, 'identity:\n  provider: dev\n  dev: { ttl: forever }\n');
  const { loadConfigFile } = await import('../src/config/config.js');
  await t.throwsAsync(loadConfigFile(file), { message: /identity\.dev\.ttl: invalid duration "forever"/ });
  // An agent that cannot open its control socket fails to start and releases what it opened.
  const port = 42_516;
  const config = agentConfig(dir, { name: 'node-a', address: '127.0.15.1' }, cluster('127.0.15.1', '127.0.15.2', port), port);
  await writeFile(join(dir, 'a-file'), '');
  config.control = { socket: join(dir, 'a-file', 'control.sock') };
  await t.throwsAsync(Agent.start(parseConfig(config), { logger: silentLogger() }));
});
