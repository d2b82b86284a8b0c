// The test API server's field selectors, as the real server answers them (lists and watches of a
// pod's node, phase, name or namespace; unsupported fields and label selectors refused), and the
// bytes it counts: what the scale benchmark compares watch models by.
import test from 'ava';
import { KubeApiServer } from './servers/kube-api-server.js';
import { pod } from './helpers/cluster-events.js';

async function get(server: KubeApiServer, path: string): Promise<{ status: number; body: { items?: { metadata: { name: string } }[]; message?: string } }> {
  const response = await fetch(`${server.url}${path}`, { headers: { authorization: `Bearer ${server.token}` } });
  return { status: response.status, body: (await response.json()) as { items?: { metadata: { name: string } }[]; message?: string } };
}

test('pods are listed and watched by field selector; unsupported fields are refused', async (t) => {
  const server = await KubeApiServer.start();
  t.teardown(() => server.close());
  server.create('pods', pod({ name: 'a1', node: 'node-a', ips: ['10.0.0.1'] }));
  server.create('pods', pod({ name: 'b1', node: 'node-b', ips: ['10.0.1.1'] }));
  server.create('pods', pod({ name: 'a2', node: 'node-a', phase: 'Pending' }));

  const names = async (selector: string) =>
    (await get(server, `/api/v1/pods?fieldSelector=${encodeURIComponent(selector)}`)).body.items?.map((item) => item.metadata.name);
  t.deepEqual(await names('spec.nodeName=node-a'), ['a1', 'a2']);
  t.deepEqual(await names('spec.nodeName==node-a,status.phase=Running'), ['a1']);
  t.deepEqual(await names('spec.nodeName!=node-a'), ['b1']);
  t.is((await get(server, '/api/v1/pods?fieldSelector=spec.hostname%3Dx')).status, 400);
  t.is((await get(server, '/api/v1/pods?labelSelector=app%3Dx')).status, 400);

  // A watch from now on sees only the node's pods.
  const controller = new AbortController();
  t.teardown(() => controller.abort());
  const response = await fetch(`${server.url}/api/v1/pods?watch=true&resourceVersion=${server.resourceVersion}&fieldSelector=spec.nodeName%3Dnode-a`, {
    headers: { authorization: `Bearer ${server.token}` },
    signal: controller.signal,
  });
  const before = server.bytesSent;
  server.create('pods', pod({ name: 'b2', node: 'node-b', ips: ['10.0.1.2'] }));
  server.create('pods', pod({ name: 'a3', node: 'node-a', ips: ['10.0.0.3'] }));
  const reader = response.body!.getReader();
  const { value } = await reader.read();
  const events = new TextDecoder().decode(value).trim().split('\n').map((line) => JSON.parse(line) as { type: string; object: { metadata: { name: string } } });
  t.deepEqual(events.map((event) => `${event.type} ${event.object.metadata.name}`), ['ADDED a3']);
  t.is(server.bytesSent - before, value!.byteLength, 'the bytes sent are counted');
});
