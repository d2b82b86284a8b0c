// The manifests in deploy/: each validates against the Kubernetes schemas shipped in npm packages
// (kubernetes-models' validators generated from the Kubernetes OpenAPI, plus client-node's model
// attribute maps to refuse unknown fields, as `kubectl --validate=strict` does), the example
// policies against the CRD's own schema, the ConfigMaps against meshauth's config schema, and the
// pieces agree with each other and with the code (names, ports, labels, metric names).
import test from 'ava';
import { readFile, readdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv, type ValidateFunction } from 'ajv';
import * as k8s from '@kubernetes/client-node';
import { Histogram, type Registry } from 'prom-client';
import { parseAllDocuments, parse as parseYaml } from 'yaml';
import { configSchema, parseConfig } from '../src/config/config.js';
import { SPIFFE_ID_PATTERN, policyRule } from '../src/cluster/kubernetes/convert.js';
import { kubernetesOptionsSchema } from '../src/cluster/kubernetes/options.js';
import { POLICY_GROUP, POLICY_KIND, POLICY_PLURAL, POLICY_VERSION } from '../src/cluster/kubernetes/resources.js';
import { registerAgentMetrics } from '../src/agent/metric-families.js';
import { createRegistry } from '../src/metrics/registry.js';

const DEPLOY = fileURLToPath(new URL('../deploy/', import.meta.url));

type Manifest = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string> } };

interface LoadedFile {
  path: string;
  documents: Manifest[];
}

async function loadYaml(path: string): Promise<LoadedFile> {
  const text = await readFile(join(DEPLOY, path), 'utf8');
  const documents = parseAllDocuments(text).map((document) => {
    if (document.errors.length > 0) throw new Error(`${path}: ${document.errors[0]?.message}`);
    return document.toJS() as Manifest;
  });
  return { path, documents };
}

async function yamlFiles(dir: string): Promise<string[]> {
  const names = await readdir(join(DEPLOY, dir));
  return names.filter((name) => name.endsWith('.yaml') && name !== 'kustomization.yaml').map((name) => (dir ? `${dir}/${name}` : name)).sort();
}

async function allManifests(): Promise<LoadedFile[]> {
  const paths = [...(await yamlFiles('')), ...(await yamlFiles('config')), ...(await yamlFiles('examples'))];
  return Promise.all(paths.map(loadYaml));
}

function find(files: LoadedFile[], kind: string, name?: string): Manifest {
  const found = files.flatMap((file) => file.documents).find((doc) => doc.kind === kind && (!name || doc.metadata.name === name));
  if (!found) throw new Error(`no ${kind} ${name ?? ''} in deploy/`);
  return found;
}

// ---- validation against the Kubernetes schemas ----

interface ValidatableModel {
  validate(): void;
}
type ModelModule = Record<string, new (data: unknown) => ValidatableModel>;

/** kubernetes-models' generated validator for apiVersion/kind (types, required fields, formats). */
async function validateWithKubernetesModels(doc: Manifest): Promise<void> {
  const groupVersion = doc.apiVersion.includes('/') ? doc.apiVersion : `v1`;
  const module = (await import(`kubernetes-models/${groupVersion}/${doc.kind}`)) as ModelModule;
  const Model = module[doc.kind];
  if (!Model) throw new Error(`kubernetes-models has no ${doc.apiVersion} ${doc.kind}`);
  new Model(doc).validate();
}

interface AttributeType {
  baseName: string;
  type: string;
}
type ModelClass = { getAttributeTypeMap(): AttributeType[] };

/** Fields the Kubernetes API does not know, found by walking client-node's generated model types. */
function unknownFields(value: unknown, type: string, path: string): string[] {
  if (value === null || value === undefined) return [];
  const array = /^Array<(.+)>$/.exec(type);
  if (array?.[1]) return Array.isArray(value) ? value.flatMap((item, i) => unknownFields(item, array[1] ?? '', `${path}[${i}]`)) : [];
  const map = /^\{ \[key: string\]: (.+); \}$/.exec(type);
  if (map?.[1]) {
    return typeof value === 'object' ? Object.entries(value).flatMap(([key, item]) => unknownFields(item, map[1] ?? '', `${path}.${key}`)) : [];
  }
  const model = (k8s as unknown as Record<string, ModelClass | undefined>)[type];
  if (typeof model?.getAttributeTypeMap !== 'function' || typeof value !== 'object' || Array.isArray(value)) return [];
  const known = new Map(model.getAttributeTypeMap().map((attribute) => [attribute.baseName, attribute.type]));
  return Object.entries(value as Record<string, unknown>).flatMap(([key, item]) => {
    const itemType = known.get(key);
    return itemType === undefined ? [`${path}.${key}`] : unknownFields(item, itemType, `${path}.${key}`);
  });
}

function modelTypeName(doc: Manifest): string {
  const version = doc.apiVersion.split('/').at(-1) ?? '';
  return `${version.charAt(0).toUpperCase()}${version.slice(1)}${doc.kind}`;
}

async function validateBuiltIn(doc: Manifest): Promise<void> {
  await validateWithKubernetesModels(doc);
  const unknown = unknownFields(doc, modelTypeName(doc), doc.kind);
  if (unknown.length > 0) throw new Error(`unknown fields: ${unknown.join(', ')}`);
}

const CUSTOM_KINDS = new Set([`${POLICY_GROUP}/${POLICY_VERSION}/${POLICY_KIND}`, 'monitoring.coreos.com/v1/ServiceMonitor']);

test('every built-in manifest validates against the Kubernetes schemas, unknown fields refused', async (t) => {
  const files = await allManifests();
  let validated = 0;
  for (const file of files) {
    for (const doc of file.documents) {
      if (CUSTOM_KINDS.has(`${doc.apiVersion}/${doc.kind}`)) continue;
      await t.notThrowsAsync(validateBuiltIn(doc), `${file.path}: ${doc.kind} ${doc.metadata.name}`);
      validated += 1;
    }
  }
  // Namespace, CRD, ServiceAccount, ClusterRole, ClusterRoleBinding, DaemonSet, Service, 5 ConfigMaps.
  t.is(validated, 12);
});

test('the validators refuse broken manifests (wrong type, missing field, unknown field)', async (t) => {
  const daemonSet = find(await allManifests(), 'DaemonSet');
  const broken = (mutate: (doc: Manifest & { spec: { template: { spec: Record<string, unknown> } } }) => void): Manifest => {
    const copy = structuredClone(daemonSet) as Manifest & { spec: { template: { spec: Record<string, unknown> } } };
    mutate(copy);
    return copy;
  };
  await t.throwsAsync(validateBuiltIn(broken((doc) => (doc.spec.template.spec.hostNetwork = 'yes'))));
  await t.throwsAsync(validateBuiltIn(broken((doc) => delete doc.spec.template.spec.containers)));
  await t.throwsAsync(validateBuiltIn(broken((doc) => (doc.spec.template.spec.tolerationz = []))), { message: /tolerationz/ });
});

// ---- the CRD and the example policies ----

type SchemaNode = Record<string, unknown> & { type?: string; properties?: Record<string, SchemaNode>; additionalProperties?: unknown; items?: SchemaNode };

/** Structural schema rules (apiextensions): every node typed; properties and additionalProperties exclusive. */
function structuralProblems(node: SchemaNode, path: string): string[] {
  const problems: string[] = [];
  if (!node.type && node['x-kubernetes-int-or-string'] !== true && node['x-kubernetes-preserve-unknown-fields'] !== true) problems.push(`${path}: no type`);
  if (node.properties && node.additionalProperties !== undefined) problems.push(`${path}: properties with additionalProperties`);
  if (node.properties && node.type !== 'object') problems.push(`${path}: properties on a non-object`);
  for (const [key, child] of Object.entries(node.properties ?? {})) {
    if (path === '' && key === 'metadata') continue; // metadata is the one field left to the API server
    problems.push(...structuralProblems(child, `${path}.${key}`));
  }
  if (node.items) problems.push(...structuralProblems(node.items, `${path}[]`));
  if (typeof node.additionalProperties === 'object' && node.additionalProperties) {
    problems.push(...structuralProblems(node.additionalProperties as SchemaNode, `${path}.*`));
  }
  return problems;
}

/** Like strict field validation: an object schema with properties refuses others. */
function strict(node: SchemaNode): SchemaNode {
  const copy: SchemaNode = { ...node };
  if (node.properties) {
    copy.properties = Object.fromEntries(Object.entries(node.properties).map(([key, child]) => [key, strict(child)]));
    if (node.additionalProperties === undefined) copy.additionalProperties = false;
  }
  if (node.items) copy.items = strict(node.items);
  return copy;
}

async function policyValidator(): Promise<{ validate: ValidateFunction; crd: Manifest }> {
  const crd = find(await allManifests(), 'CustomResourceDefinition');
  const spec = crd.spec as { versions: { name: string; schema: { openAPIV3Schema: SchemaNode } }[] };
  const schema = spec.versions.find((version) => version.name === POLICY_VERSION)?.schema.openAPIV3Schema;
  if (!schema) throw new Error('CRD has no v1alpha1 schema');
  const ajv = new Ajv({ allErrors: true, strict: true });
  ajv.addVocabulary(['x-kubernetes-validations', 'x-kubernetes-preserve-unknown-fields', 'x-kubernetes-int-or-string']);
  return { validate: ajv.compile(strict(schema)), crd };
}

test('the CRD: names match the code, one served storage version, structural schema', async (t) => {
  const { crd } = await policyValidator();
  const spec = crd.spec as {
    group: string;
    scope: string;
    names: { kind: string; plural: string };
    versions: { name: string; served: boolean; storage: boolean; schema: { openAPIV3Schema: SchemaNode } }[];
  };
  t.is(crd.metadata.name, `${POLICY_PLURAL}.${POLICY_GROUP}`);
  t.is(spec.group, POLICY_GROUP);
  t.is(spec.scope, 'Namespaced');
  t.is(spec.names.kind, POLICY_KIND);
  t.is(spec.names.plural, POLICY_PLURAL);
  t.deepEqual(spec.versions.map((v) => [v.name, v.served, v.storage]), [[POLICY_VERSION, true, true]]);
  const schema = spec.versions[0]?.schema.openAPIV3Schema;
  t.truthy(schema);
  if (!schema) return;
  t.deepEqual(structuralProblems(schema, ''), []);
  const specSchema = schema.properties?.spec;
  t.deepEqual(specSchema?.required, ['mode']);
  t.deepEqual(specSchema?.properties?.mode?.enum, ['required', 'disabled']);
  const pattern = specSchema?.properties?.source?.properties?.spiffeId?.pattern;
  t.is(typeof pattern === 'string' && new RegExp(pattern).source, SPIFFE_ID_PATTERN.source, 'the agent and the API server agree on SPIFFE ID patterns');
});

test('the example policies validate against the CRD schema and convert to rules', async (t) => {
  const { validate } = await policyValidator();
  const examples = await Promise.all((await yamlFiles('examples')).map(loadYaml));
  t.true(examples.length >= 4);
  for (const file of examples) {
    for (const doc of file.documents) {
      t.is(`${doc.apiVersion}/${doc.kind}`, `${POLICY_GROUP}/${POLICY_VERSION}/${POLICY_KIND}`, file.path);
      t.true(validate(doc), `${file.path}: ${JSON.stringify(validate.errors)}`);
      t.notThrows(() => policyRule(doc), file.path);
    }
  }
});

test('the CRD schema refuses bad policies', async (t) => {
  const { validate } = await policyValidator();
  const base = { apiVersion: 'meshauth.io/v1alpha1', kind: 'MutualAuthPolicy', metadata: { name: 'p', namespace: 'shop' } };
  t.true(validate({ ...base, spec: { mode: 'required' } }));
  t.false(validate({ ...base, spec: {} }), 'mode is required');
  t.false(validate({ ...base }), 'spec is required');
  t.false(validate({ ...base, spec: { mode: 'optional' } }), 'mode is an enum');
  t.false(validate({ ...base, spec: { mode: 'required', source: { serviceAcount: 'typo' } } }), 'unknown field');
  t.false(validate({ ...base, spec: { mode: 'required', source: { namespace: 'Not_A_Namespace' } } }));
  t.false(validate({ ...base, spec: { mode: 'required', source: { spiffeId: 'https://example.org/x' } } }));
  t.false(validate({ ...base, spec: { mode: 'required', destination: { matchLabels: { app: 7 } } } }));
});

// ---- config, kustomization, the DaemonSet's wiring, metrics ----

/** Parses the agent config in a ConfigMap; the kubernetes section with its own schema until the
 *  main config schema has it. */
function parseAgentConfig(text: string, source: string): { provider: string } {
  const document = parseYaml(text) as Record<string, unknown>;
  if ('kubernetes' in configSchema.shape) return { provider: parseConfig(document, source).identity.provider };
  const { kubernetes, ...rest } = document;
  kubernetesOptionsSchema.parse(kubernetes);
  return { provider: parseConfig(rest, source).identity.provider };
}

test('one ConfigMap example per identity provider, each parsing as meshauth config', async (t) => {
  const files = await Promise.all((await yamlFiles('config')).map(loadYaml));
  const providers: string[] = [];
  for (const file of files) {
    const [doc] = file.documents;
    t.is(file.documents.length, 1);
    t.is(doc?.kind, 'ConfigMap');
    t.is(doc?.metadata.name, 'meshauth-config', 'every example replaces the same ConfigMap');
    const text = (doc?.data as Record<string, string> | undefined)?.['config.yaml'];
    t.truthy(text, file.path);
    const { provider } = parseAgentConfig(text ?? '', file.path);
    t.is(`config/${provider}.yaml`, file.path, 'the file is named after its provider');
    const kubernetes = kubernetesOptionsSchema.parse((parseYaml(text ?? '') as { kubernetes?: unknown }).kubernetes);
    t.true(kubernetes.enabled, `${file.path} enables the Kubernetes source`);
    providers.push(provider);
  }
  t.deepEqual(providers.sort(), ['dev', 'file', 'spiffe', 'spire-delegated', 'vault']);
});

test('the config examples point at paths the DaemonSet mounts', async (t) => {
  const files = await allManifests();
  const daemonSet = find(files, 'DaemonSet') as unknown as { spec: { template: { spec: { containers: { volumeMounts: { mountPath: string }[] }[] } } } };
  const mounts = daemonSet.spec.template.spec.containers[0]?.volumeMounts.map((mount) => mount.mountPath) ?? [];
  for (const file of await Promise.all((await yamlFiles('config')).map(loadYaml))) {
    const config = parseYaml((file.documents[0]?.data as Record<string, string>)['config.yaml'] ?? '') as unknown;
    const paths = stringValues(config).flatMap((value) => (value.startsWith('/') ? [value] : value.startsWith('unix://') ? [value.slice('unix://'.length)] : []));
    t.true(paths.length > 0, `${file.path} names no path`);
    for (const path of paths) t.true(mounts.some((mount) => path.startsWith(`${mount}/`) || path === mount), `${file.path}: ${path} is not mounted`);
  }
});

interface DaemonSetMounts {
  spec: { template: { spec: { containers: { volumeMounts: { mountPath: string; readOnly?: boolean }[]; securityContext: { readOnlyRootFilesystem?: boolean } }[] } } };
}

test('every path the agent writes, defaults included, is on a writable mount (the root filesystem is read-only)', async (t) => {
  const files = await allManifests();
  const [container] = (find(files, 'DaemonSet') as unknown as DaemonSetMounts).spec.template.spec.containers;
  t.true(container?.securityContext.readOnlyRootFilesystem);
  const writable = (container?.volumeMounts ?? []).filter((mount) => !mount.readOnly).map((mount) => mount.mountPath);
  for (const file of await Promise.all((await yamlFiles('config')).map(loadYaml))) {
    const document = parseYaml((file.documents[0]?.data as Record<string, string>)['config.yaml'] ?? '') as Record<string, unknown>;
    const { kubernetes: _kubernetes, ...rest } = document;
    const config = parseConfig('kubernetes' in configSchema.shape ? document : rest, file.path);
    // The agent creates the socket's directory, writes node keys under stateDir and pins maps.
    for (const [what, path] of [
      ['control socket directory', dirname(config.control.socket)],
      ['stateDir', config.stateDir],
      ['datapath.pinDir', config.datapath.pinDir],
    ] as const) {
      t.true(
        writable.some((mount) => path === mount || path.startsWith(`${mount}/`)),
        `${file.path}: the ${what} ${path} is on no writable mount`,
      );
    }
  }
});

function stringValues(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(stringValues);
  if (value && typeof value === 'object') return Object.values(value).flatMap(stringValues);
  return [];
}

test('the kustomization lists every manifest, and everything it lists exists', async (t) => {
  const kustomization = parseYaml(await readFile(join(DEPLOY, 'kustomization.yaml'), 'utf8')) as {
    resources: string[];
    configMapGenerator: { files: string[] }[];
  };
  const topLevel = await yamlFiles('');
  for (const file of topLevel) t.true(kustomization.resources.includes(file), `${file} is not in kustomization.yaml`);
  const configs = kustomization.resources.filter((resource) => resource.startsWith('config/'));
  t.deepEqual(configs, ['config/dev.yaml'], 'exactly one config example is applied');
  for (const resource of kustomization.resources) await t.notThrowsAsync(readFile(join(DEPLOY, resource)), resource);
  const generated = kustomization.configMapGenerator.flatMap((generator) => generator.files);
  t.deepEqual(generated, ['grafana-dashboard.json']);
  // Everything else in deploy/ is accounted for: the alternatives, the examples, the image build,
  // the Helm chart (test/cluster/checks/helm.check.ts compares it with the kustomization).
  const entries = (await readdir(DEPLOY)).sort();
  t.deepEqual(entries, [...new Set([...topLevel, 'Dockerfile', 'config', 'examples', 'grafana-dashboard.json', 'helm', 'kustomization.yaml'])].sort());
});

test('the DaemonSet: host network, minimal capabilities, mounts, probes, tolerations, rolling update', async (t) => {
  const files = await allManifests();
  const daemonSet = find(files, 'DaemonSet') as unknown as {
    metadata: { namespace: string };
    spec: {
      updateStrategy: { type: string; rollingUpdate: { maxUnavailable: number } };
      template: {
        metadata: { labels: Record<string, string> };
        spec: {
          hostNetwork: boolean;
          serviceAccountName: string;
          tolerations: { operator: string; key?: string }[];
          volumes: { name: string; hostPath?: { path: string }; configMap?: { name: string } }[];
          containers: {
            ports: { name: string; containerPort: number }[];
            livenessProbe: { httpGet: { path: string; port: string } };
            readinessProbe: { httpGet: { path: string; port: string } };
            resources: { requests: Record<string, string>; limits: Record<string, string> };
            securityContext: { privileged: boolean; capabilities: { drop: string[]; add: string[] } };
            volumeMounts: { name: string; mountPath: string }[];
          }[];
        };
      };
    };
  };
  const pod = daemonSet.spec.template.spec;
  const [container] = pod.containers;
  t.truthy(container);
  if (!container) return;
  t.true(pod.hostNetwork);
  t.deepEqual(container.securityContext.capabilities, { drop: ['ALL'], add: ['NET_ADMIN', 'BPF', 'PERFMON'] });
  t.false(container.securityContext.privileged);
  t.deepEqual(pod.tolerations, [{ operator: 'Exists' }], 'tolerates every taint');
  t.deepEqual(daemonSet.spec.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } });
  t.truthy(container.resources.requests.cpu && container.resources.requests.memory && container.resources.limits.memory);
  const metricsPort = container.ports.find((port) => port.name === 'metrics');
  t.truthy(metricsPort);
  t.deepEqual(container.livenessProbe.httpGet, { path: '/healthz', port: 'metrics' });
  t.deepEqual(container.readinessProbe.httpGet, { path: '/readyz', port: 'metrics' });
  t.is(container.ports.find((port) => port.name === 'handshake')?.containerPort, 4250);
  const hostPaths = Object.fromEntries(pod.volumes.filter((v) => v.hostPath).map((v) => [v.name, v.hostPath?.path]));
  const mountedAt = (path: string) => container.volumeMounts.find((mount) => hostPaths[mount.name] === path)?.mountPath;
  t.is(mountedAt('/sys/fs/bpf'), '/sys/fs/bpf');
  t.is(mountedAt('/var/lib/meshauth'), '/var/lib/meshauth');
  t.is(mountedAt('/run/spire/sockets'), '/run/spire/sockets');
  t.is(pod.volumes.find((v) => v.configMap)?.configMap?.name, 'meshauth-config');

  // RBAC: the DaemonSet's service account, bound to read-only access to exactly three resources.
  // That the real client needs no more is checked against the recorded requests of the
  // kubernetes-source and agent-kubernetes tests (test/helpers/rbac.ts).
  const role = find(files, 'ClusterRole') as unknown as { metadata: { name: string }; rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[] };
  t.deepEqual(
    role.rules.flatMap((rule) => rule.resources.map((resource) => `${rule.apiGroups.join(',')}/${resource}:${[...rule.verbs].sort().join(',')}`)).sort(),
    ['/nodes:list,watch', '/pods:list,watch', `${POLICY_GROUP}/${POLICY_PLURAL}:list,watch`],
  );
  const binding = find(files, 'ClusterRoleBinding') as unknown as { roleRef: { name: string }; subjects: { kind: string; name: string; namespace: string }[] };
  t.is(binding.roleRef.name, role.metadata.name);
  t.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: pod.serviceAccountName, namespace: daemonSet.metadata.namespace }]);
  t.is(find(files, 'ServiceAccount').metadata.name, pod.serviceAccountName);

  // Service and ServiceMonitor reach the metrics port of the agent pods.
  const service = find(files, 'Service') as unknown as { metadata: { labels: Record<string, string> }; spec: { selector: Record<string, string>; ports: { name: string; targetPort: string }[] } };
  for (const [key, value] of Object.entries(service.spec.selector)) t.is(daemonSet.spec.template.metadata.labels[key], value);
  t.deepEqual(service.spec.ports.map((port) => [port.name, port.targetPort]), [['metrics', 'metrics']]);
  const monitor = find(files, 'ServiceMonitor') as unknown as {
    spec: { selector: { matchLabels: Record<string, string> }; namespaceSelector: { matchNames: string[] }; endpoints: { port: string; path: string }[] };
  };
  for (const [key, value] of Object.entries(monitor.spec.selector.matchLabels)) t.is(service.metadata.labels[key], value);
  t.deepEqual(monitor.spec.namespaceSelector.matchNames, [daemonSet.metadata.namespace]);
  t.deepEqual(monitor.spec.endpoints.map((endpoint) => [endpoint.port, endpoint.path]), [['metrics', '/metrics']]);
});

/**
 * The registry the agent builds (src/agent/agent.ts): createRegistry() and registerAgentMetrics(),
 * the one place that registers the agent's metric families, so a metric renamed, added or left
 * unregistered is seen by the dashboard test below.
 */
function agentRegistry(): Registry {
  const registry = createRegistry();
  registerAgentMetrics(registry);
  return registry;
}

const PROMQL_KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset']);

/** The metric names a PromQL expression (or a Grafana label_values() query) selects: what is left
 *  once strings, label matchers, ranges, grouping clauses, function names and keywords are gone. */
function selectedMetrics(expr: string): string[] {
  const bare = expr
    .replace(/label_values\(\s*([^,)]+),[^)]*\)/g, '$1')
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, ' ')
    .replace(/\[[^\]]*\]/g, ' ')
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  return [...bare.matchAll(/(?<![\w$:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()/g)].map((match) => match[1]!).filter((name) => !PROMQL_KEYWORDS.has(name));
}

test('the Grafana dashboard queries only metrics the agent exports, and every meshauth metric it exports', async (t) => {
  const dashboard = JSON.parse(await readFile(join(DEPLOY, 'grafana-dashboard.json'), 'utf8')) as {
    panels: { type: string; targets?: { expr: string }[] }[];
    templating: { list: { type: string; query?: { query: string } }[] };
  };
  const expressions = [
    ...dashboard.panels.flatMap((panel) => panel.targets?.map((target) => target.expr) ?? []),
    ...dashboard.templating.list.flatMap((variable) => (variable.type === 'query' && variable.query ? [variable.query.query] : [])),
  ];
  t.true(expressions.length > 10);
  const registry = agentRegistry();
  const exported = registry.getMetricsAsArray().map((metric) => metric.name);
  // A histogram is queried through its _bucket, _sum and _count series.
  const seriesOf = (name: string): string[] => (registry.getSingleMetric(name) instanceof Histogram ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name]);
  const series = new Map(exported.flatMap((name) => seriesOf(name).map((one) => [one, name] as const)));

  const queried = new Set<string>();
  for (const expr of expressions) {
    const names = selectedMetrics(expr);
    t.true(names.length > 0, `no metric found in ${expr}`);
    for (const name of names) {
      t.true(series.has(name), `the dashboard queries ${name}, which the agent does not export (in ${expr})`);
      queried.add(series.get(name) ?? name);
    }
  }
  // The standard process_* and nodejs_* metrics are left to the usual Node.js dashboards; every
  // metric of meshauth's own has a panel.
  const own = exported.filter((name) => name.startsWith('meshauth_')).sort();
  t.true(own.length > 0);
  t.deepEqual(own.filter((name) => !queried.has(name)), [], 'exported meshauth metrics without a panel');
});

test('the Dockerfile: node:24-slim stages, compilers only in the build stage, runtime tools', async (t) => {
  const text = await readFile(join(DEPLOY, 'Dockerfile'), 'utf8');
  const stages = text.split(/^FROM /m).slice(1);
  t.is(stages.length, 2);
  t.true(stages.every((stage) => stage.startsWith('node:24-slim')));
  const [build = '', runtime = ''] = stages;
  t.regex(build, /clang/);
  t.regex(build, /npm run build:bpf/);
  const scripts = (JSON.parse(await readFile(join(DEPLOY, '../package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts;
  t.regex(scripts['build:bpf'] ?? '', /clang .*-target bpf .*-o bpf\/gate\.bpf\.o/);
  t.regex(runtime, /COPY --from=build \/src\/bpf\/gate\.bpf\.o \.\/bpf\/gate\.bpf\.o/, 'where defaultObjectPath() looks');
  t.regex(build, /RUN npm run build\n/, "the package's own build (it also copies the .proto files)");
  for (const tool of ['iproute2', 'wireguard-tools', 'bpftool']) t.regex(runtime, new RegExp(`install[^\\n]*${tool}`));
  t.notRegex(runtime, /clang/);
  t.regex(runtime, /COPY --from=build/);
});

test("the README's metrics table lists exactly the agent's metric families, with their labels", async (t) => {
  const readme = await readFile(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8');
  const documented = new Map<string, string[]>();
  for (const [, names, labels] of readme.matchAll(/^\| (`meshauth_[^|]+)\| ([^|]*)\|$/gm)) {
    const labelList = [...labels!.matchAll(/`(\w+)`/g)].map((m) => m[1]!);
    for (const [, name] of names!.matchAll(/`(meshauth_\w+)`/g)) documented.set(name!, labelList);
  }
  const registry = agentRegistry();
  const exported = new Map(
    (await registry.getMetricsAsJSON())
      .filter((metric) => metric.name.startsWith('meshauth_'))
      .map((metric) => [metric.name, [...((registry.getSingleMetric(metric.name) as unknown as { labelNames: string[] }).labelNames ?? [])]]),
  );
  t.deepEqual(Object.fromEntries([...documented].sort()), Object.fromEntries([...exported].sort()));
});
