// The Helm chart (deploy/helm/meshauth) renders the same objects as `kubectl kustomize deploy/`,
// with its default values: only the Namespace is left to the installer (Helm wants the release
// namespace to exist first). Needs the cluster's helm and kubectl builds, not a cluster.
import test from 'ava';
import { execa } from 'execa';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { parseAllDocuments } from 'yaml';

const repo = join(import.meta.dirname, '..', '..', '..');
const buildSh = join(repo, 'test', 'cluster', 'build.sh');

async function bin(component: string, name: string): Promise<string> {
  return join((await execa('bash', [buildSh, '--path', component])).stdout.trim(), name);
}

type Obj = { kind: string; metadata: { name: string; namespace?: string } } & Record<string, unknown>;

function objects(text: string): Map<string, Obj> {
  const out = new Map<string, Obj>();
  for (const doc of parseAllDocuments(text)) {
    const obj = doc.toJS() as Obj | null;
    if (obj) out.set(`${obj.kind}/${obj.metadata.namespace ?? ''}/${obj.metadata.name}`, obj);
  }
  return out;
}

test('helm lint is clean and helm template renders the objects of kubectl kustomize deploy/ (but the Namespace)', async (t) => {
  const helm = await bin('helm', 'helm');
  const kubectl = await bin('kubernetes', 'kubectl');
  const chart = join(repo, 'deploy', 'helm', 'meshauth');
  const lint = await execa(helm, ['lint', '--strict', chart], { reject: false });
  t.is(lint.exitCode, 0, lint.stdout);
  t.false(/\[(WARNING|ERROR)\]/.test(lint.stdout), lint.stdout);
  const rendered = objects((await execa(helm, ['template', 'meshauth', chart, '--namespace', 'meshauth-system', '--include-crds'])).stdout);
  const kustomized = objects((await execa(kubectl, ['kustomize', join(repo, 'deploy')])).stdout);
  const namespaces = [...kustomized.keys()].filter((k) => k.startsWith('Namespace/'));
  t.deepEqual(namespaces, ['Namespace//meshauth-system']);
  for (const k of namespaces) kustomized.delete(k);
  t.deepEqual([...rendered.keys()].sort(), [...kustomized.keys()].sort(), 'the same objects');
  for (const [key, obj] of kustomized) {
    t.true(isDeepStrictEqual(rendered.get(key), obj), `${key} differs:\nhelm: ${JSON.stringify(rendered.get(key))}\nkustomize: ${JSON.stringify(obj)}`);
  }
});
