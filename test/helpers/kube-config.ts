// A kubeconfig (0600) for an agent talking to the test Kubernetes API server with its bearer token.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import type { KubeApiServer } from '../servers/kube-api-server.js';

export async function writeKubeConfig(dir: string, server: KubeApiServer): Promise<string> {
  const path = join(dir, 'kubeconfig.yaml');
  const kubeConfig = {
    apiVersion: 'v1',
    kind: 'Config',
    // client-node refuses plain http unless TLS verification is "skipped"; there is no TLS to verify.
    clusters: [{ name: 'test', cluster: { server: server.url, 'insecure-skip-tls-verify': true } }],
    users: [{ name: 'meshauth', user: { token: server.token } }],
    contexts: [{ name: 'test', context: { cluster: 'test', user: 'meshauth' } }],
    'current-context': 'test',
  };
  await writeFile(path, stringify(kubeConfig), { mode: 0o600 });
  return path;
}
