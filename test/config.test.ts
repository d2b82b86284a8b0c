import test from 'ava';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { ConfigError, loadConfigFile, nodeIdentity, parseConfig } from '../src/config/config.js';

test('an empty config runs the dev CA with documented defaults', (t) => {
  const config = parseConfig({});
  t.is(config.identity.provider, 'dev');
  t.is(config.trustDomain, 'cluster.local');
  t.is(config.identity.clockSkew, 30_000);
  t.is(config.identity.dev.ttl, 3_600_000);
  t.is(config.identity.maxChainDepth, 5);
  t.is(config.cluster.policy.default, 'required');
  t.deepEqual(config.cluster.policy.exempt, ['host', 'kube-apiserver'], 'kubelet probes and the API server keep working');
  t.deepEqual([config.cluster.serviceCidrs, config.cluster.podCidrs, config.cluster.apiServers, config.cluster.hostAddresses], [[], [], [], []]);
  t.is(nodeIdentity(parseConfig({ nodeName: 'n1', trustDomain: 'example.org' })), 'spiffe://example.org/meshauth/node/n1');
});

test('reserved peers in the cluster section: ranges, addresses, exemptions, selectors', (t) => {
  const config = parseConfig({
    cluster: {
      serviceCidrs: ['10.96.0.0/12', 'fd00:96::/112'],
      apiServers: ['192.0.2.10'],
      policy: { exempt: ['host'], rules: [{ name: 'world-in', source: { reserved: 'world' }, destination: { namespace: 'shop' } }] },
    },
  });
  t.deepEqual(config.cluster.policy.rules[0]?.source, { reserved: 'world' });
  t.deepEqual(config.cluster.policy.exempt, ['host']);
  t.regex(t.throws(() => parseConfig({ cluster: { policy: { exempt: ['everyone'] } } })).message, /cluster\.policy\.exempt/);
  t.regex(t.throws(() => parseConfig({ cluster: { serviceCidrs: ['10.96.0.0'] } })).message, /cluster\.serviceCidrs/);
  const combined = { name: 'x', source: { reserved: 'host', namespace: 'web' } };
  t.regex(t.throws(() => parseConfig({ cluster: { policy: { rules: [combined] } } })).message, /cannot be combined with workload fields/);
});

test('an unknown key is an error naming its path', (t) => {
  const err = t.throws(() => parseConfig({ identity: { provider: 'dev', dev: { ttl: '1h', colour: 'blue' } } }), { instanceOf: ConfigError });
  t.regex(err.message, /identity\.dev/);
  t.regex(err.message, /colour/);
});

test('a wrong type is an error naming the path and the expected form', (t) => {
  const err = t.throws(() => parseConfig({ identity: { maxChainDepth: 'deep' } }), { instanceOf: ConfigError });
  t.regex(err.message, /identity\.maxChainDepth: .*number/i);
  const duration = t.throws(() => parseConfig({ identity: { clockSkew: 'soon' } }), { instanceOf: ConfigError });
  t.regex(duration.message, /identity\.clockSkew: invalid duration "soon"/);
});

test('a provider without its section is an error naming the section', (t) => {
  const err = t.throws(() => parseConfig({ identity: { provider: 'vault' } }), { instanceOf: ConfigError });
  t.regex(err.message, /identity\.vault: provider "vault" needs an identity\.vault section/);
});

test('invalid SPIFFE IDs, trust domains, addresses and CIDRs are rejected with the rule', (t) => {
  t.regex(t.throws(() => parseConfig({ trustDomain: 'Example.org' })).message, /trustDomain: .*lowercase/);
  t.regex(t.throws(() => parseConfig({ identity: { nodeId: 'spiffe://td/a/../b' } })).message, /identity\.nodeId: not a valid SPIFFE ID/);
  t.regex(t.throws(() => parseConfig({ cluster: { nodes: [{ name: 'a', address: 'nowhere' }] } })).message, /cluster\.nodes\.0\.address/);
  t.regex(t.throws(() => parseConfig({ cluster: { nodes: [{ name: 'a', address: '10.0.0.1', podCidrs: ['10.0.0.0/33'] }] } })).message, /podCidrs\.0/);
});

test('every config example in the README parses', (t) => {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const examples = [...readme.matchAll(/```yaml\n(# meshauth config: ([\w-]+)\n[\s\S]*?)```/g)];
  t.true(examples.length >= 5, 'one example per provider');
  const providers = new Set<string>();
  for (const [, body, name] of examples) {
    const config = parseConfig(parseYaml(body!), `README example ${name}`);
    t.is(config.identity.provider, name as typeof config.identity.provider);
    providers.add(name!);
  }
  t.deepEqual([...providers].sort(), ['dev', 'file', 'spiffe', 'spire-delegated', 'vault']);
});

test('config files: unreadable, not YAML, and valid', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'meshauth-config-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await t.throwsAsync(loadConfigFile(join(dir, 'missing.yaml')), { instanceOf: ConfigError, message: /cannot read config file .*ENOENT/ });
  await writeFile(join(dir, 'bad.yaml'), 'identity: [unclosed');
  await t.throwsAsync(loadConfigFile(join(dir, 'bad.yaml')), { instanceOf: ConfigError, message: /not valid YAML/ });
  await writeFile(join(dir, 'good.yaml'), 'nodeName: n2\nidentity:\n  provider: dev\n');
  t.is((await loadConfigFile(join(dir, 'good.yaml'))).nodeName, 'n2');
});
