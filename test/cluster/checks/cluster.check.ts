// The real-cluster checks (issue #13), run in order against the cluster that run-checks.sh made
// and installed meshauth into (install-meshauth.sh). Each check's message names what it saw.
// The last one uninstalls meshauth.
import test from 'ava';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { clusterFromEnv, eventually, kubectl, kubectlOk, nodeExec } from './cluster.js';

const cluster = clusterFromEnv();
const NS = 'meshauth-system';
const CLI = ['node', '/opt/meshauth/dist/src/cli/main.js'];

interface PodInfo {
  name: string;
  node: string;
}

async function agentPods(): Promise<PodInfo[]> {
  const out = await kubectlOk(cluster, ['-n', NS, 'get', 'pods', '-l', 'app.kubernetes.io/name=meshauth', '-o', 'jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName}{"\\n"}{end}']);
  return out
    .split('\n')
    .filter(Boolean)
    .map((line) => {
      const [name = '', node = ''] = line.split(' ');
      return { name, node };
    });
}

test.serial('1a: the DaemonSet is Ready on both nodes', async (t) => {
  const ready = await eventually(async () => (await kubectl(cluster, ['-n', NS, 'rollout', 'status', 'daemonset/meshauth', '--timeout=5s'])).ok, 180_000);
  const pods = await agentPods();
  t.true(ready, `rollout status: ${(await kubectl(cluster, ['-n', NS, 'get', 'pods', '-o', 'wide'])).stdout}`);
  t.deepEqual(pods.map((p) => p.node).sort(), ['node-a', 'node-b'], `agent pods: ${JSON.stringify(pods)}`);
});

test.serial('1b: `meshauth status` through kubectl exec: each agent ready, the other node its peer, up', async (t) => {
  for (const pod of await agentPods()) {
    const other = pod.node === 'node-a' ? 'node-b' : 'node-a';
    let status: { nodeName?: string; ready?: boolean; peers?: { node: string; state: string }[] } = {};
    const up = await eventually(async () => {
      const result = await kubectl(cluster, ['-n', NS, 'exec', pod.name, '--', ...CLI, 'status', '--json']);
      if (!result.ok) return false;
      status = JSON.parse(result.stdout) as typeof status;
      return status.peers?.some((peer) => peer.node === other && peer.state === 'up') ?? false;
    }, 60_000);
    t.is(status.nodeName, pod.node, `status of ${pod.name}: ${JSON.stringify(status)}`);
    t.true(status.ready, `${pod.name} not ready: ${JSON.stringify(status)}`);
    t.true(up, `${pod.name}: peer ${other} not up; peers: ${JSON.stringify(status.peers)}`);
  }
});

test.serial('1c: Prometheus (Debian) scrapes both agents through the headless Service meshauth-metrics', async (t) => {
  // Debian builds Prometheus without its Kubernetes service discovery (kubernetes_sd_configs is
  // refused), so it finds the agents as any client of the headless Service does: its DNS name,
  // which CoreDNS answers with every agent's address. Prometheus runs as a process of node-a's
  // host, with the cluster's DNS in its resolv.conf.
  const dir = await mkdtemp(join(cluster.dir, 'prometheus-'));
  await writeFile(
    join(dir, 'prometheus.yml'),
    [
      'global: { scrape_interval: 2s }',
      'scrape_configs:',
      '  - job_name: meshauth',
      '    dns_sd_configs:',
      `      - { names: [meshauth-metrics.${NS}.svc.cluster.local], type: A, port: 9465, refresh_interval: 5s }`,
      '',
    ].join('\n'),
  );
  const prometheus = spawn(
    join(cluster.dir, 'bin', 'node-exec'),
    ['a', 'unshare', '--mount', '--', 'sh', '-c', `mount --bind ${cluster.dir}/resolv.conf /etc/resolv.conf && exec prometheus --config.file=${dir}/prometheus.yml --storage.tsdb.path=${dir}/data --web.listen-address=127.0.0.1:9090`],
    { stdio: 'ignore', detached: true },
  );
  t.teardown(async () => {
    if (prometheus.pid) process.kill(-prometheus.pid, 'SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });
  type Sample = { metric: Record<string, string>; value: [number, string] };
  const query = async (q: string): Promise<Sample[]> => {
    const result = await nodeExec(cluster, 'a', ['busybox', 'wget', '-qO-', `http://127.0.0.1:9090/api/v1/query?query=${encodeURIComponent(q)}`]);
    if (!result.ok) return [];
    return (JSON.parse(result.stdout) as { data: { result: Sample[] } }).data.result;
  };
  let seen: Sample[] = [];
  const both = await eventually(async () => {
    seen = await query('up{job="meshauth"}');
    return seen.length === 2 && seen.every((s) => s.value[1] === '1');
  }, 90_000);
  t.true(both, `up{job="meshauth"}: ${JSON.stringify(seen)}`);
  t.deepEqual(
    seen.map((s) => s.metric.instance).sort(),
    [`${cluster.env.CLUSTER_NODE_A_IP}:9465`, `${cluster.env.CLUSTER_NODE_B_IP}:9465`],
    `targets: ${JSON.stringify(seen.map((s) => s.metric))}`,
  );
  const identities = await query('count by (instance) ({__name__=~"meshauth_.*"})');
  t.is(identities.length, 2, `meshauth_* series per agent: ${JSON.stringify(identities.map((s) => [s.metric.instance, s.value[1]]))}`);
  t.log(`meshauth_* series per agent: ${JSON.stringify(identities.map((s) => [s.metric.instance, s.value[1]]))}`);
});

test.serial('1d: the CRD and RBAC are accepted; invalid MutualAuthPolicies are rejected by server-side validation', async (t) => {
  t.true((await kubectl(cluster, ['get', 'crd', 'mutualauthpolicies.meshauth.io'])).ok);
  t.true((await kubectl(cluster, ['auth', 'can-i', 'watch', 'mutualauthpolicies.meshauth.io', `--as=system:serviceaccount:${NS}:meshauth`])).ok, 'meshauth may watch policies');
  t.false((await kubectl(cluster, ['auth', 'can-i', 'create', 'pods', `--as=system:serviceaccount:${NS}:meshauth`])).ok, 'meshauth may not create pods');
  const invalid: [string, string][] = [
    ['mode: sometimes', 'mode: sometimes\n  destination: { serviceAccount: db }'],
    ['no mode', 'destination: { serviceAccount: db }'],
    ['service account not a DNS name', 'mode: required\n  destination: { serviceAccount: Bad_SA }'],
    ['source SPIFFE ID not spiffe://', 'mode: required\n  source: { spiffeId: "https://partner.example/x" }'],
    ['unknown field', 'mode: required\n  destination: { serviceAccount: db }\n  colour: blue'],
  ];
  for (const [what, spec] of invalid) {
    const manifest = `apiVersion: meshauth.io/v1alpha1\nkind: MutualAuthPolicy\nmetadata: { name: bad, namespace: default }\nspec:\n  ${spec}\n`;
    const result = await kubectl(cluster, ['apply', '--dry-run=server', '-f', '-'], manifest);
    t.false(result.ok, `${what}: accepted`);
    t.log(`${what}: ${result.stderr.trim()}`);
  }
});

// --- check 2: pods on two nodes ----------------------------------------------------------------

const APP_NS = 'check-pairs';

function probePod(name: string, node: string, serviceAccount: string): string {
  return `apiVersion: v1
kind: ServiceAccount
metadata: { name: ${serviceAccount}, namespace: ${APP_NS} }
---
apiVersion: v1
kind: Pod
metadata: { name: ${name}, namespace: ${APP_NS}, labels: { app: ${name} } }
spec:
  nodeName: ${node}
  serviceAccountName: ${serviceAccount}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers:
    - name: probe
      image: ${cluster.env.IMAGE_PROBE}
      imagePullPolicy: Never
      args: [serve, "8080"]
`;
}

async function podIp(name: string): Promise<string> {
  return (await kubectlOk(cluster, ['-n', APP_NS, 'get', 'pod', name, '-o', 'jsonpath={.status.podIP}'])).trim();
}

type Proto = 'tcp' | 'udp' | 'icmp';

/** One exchange from a pod (or from a node's host network) to ip:8080, or one ping. */
async function reach(from: { pod: string } | { node: 'a' | 'b' }, proto: Proto, ip: string): Promise<boolean> {
  const cmd = proto === 'icmp' ? ['ping', '-c', '1', '-W', '2', ip] : ['probe', proto, `${ip}:8080`];
  if ('pod' in from) return (await kubectl(cluster, ['-n', APP_NS, 'exec', from.pod, '--', ...cmd])).ok;
  // The node's host: probe and busybox ping from the image cache's build dirs are on the host.
  const probe = process.env.CLUSTER_PROBE_BIN ?? 'probe';
  return (await nodeExec(cluster, from.node, proto === 'icmp' ? ['busybox', ...cmd] : [probe, ...cmd.slice(1)])).ok;
}

interface AgentStatus {
  identities: { spiffeId: string }[];
  pairs: unknown[];
  datapath: { counters: Record<string, string> };
}

async function agentStatus(node: string): Promise<AgentStatus> {
  const pod = (await agentPods()).find((p) => p.node === node);
  if (!pod) throw new Error(`no agent on ${node}`);
  return JSON.parse(await kubectlOk(cluster, ['-n', NS, 'exec', pod.name, '--', ...CLI, 'status', '--json'])) as AgentStatus;
}

test.serial('2: pod to pod on two nodes: without a policy nothing changes; with one the authenticated pair passes TCP/UDP/ICMP both ways, through the gate', async (t) => {
  await kubectlOk(cluster, ['create', 'namespace', APP_NS]);
  await kubectlOk(cluster, ['apply', '-f', '-'], [probePod('server', 'node-b', 'server'), probePod('client', 'node-a', 'client')].join('---\n'));
  await kubectlOk(cluster, ['-n', APP_NS, 'wait', '--for=condition=Ready', 'pod/server', 'pod/client', '--timeout=120s']);
  const ips = { server: await podIp('server'), client: await podIp('client') };
  const protos: Proto[] = ['tcp', 'udp', 'icmp'];
  const directions = [
    { from: 'client' as const, to: 'server' as const, fromNode: 'node-a', toNode: 'node-b', host: 'a' as const },
    { from: 'server' as const, to: 'client' as const, fromNode: 'node-b', toNode: 'node-a', host: 'b' as const },
  ];

  for (const d of directions) {
    for (const proto of protos) {
      t.true(await reach({ pod: d.from }, proto, ips[d.to]), `no policy: ${d.from} -> ${d.to} ${proto} failed`);
      t.true(await reach({ node: d.host }, proto, ips[d.to]), `no policy: node-${d.host} host -> ${d.to} ${proto} failed`);
    }
  }
  const before = { a: await agentStatus('node-a'), b: await agentStatus('node-b') };
  t.is(before.a.pairs.length + before.b.pairs.length, 0, `pairs without a policy: ${JSON.stringify([before.a.pairs, before.b.pairs])}`);

  // Both pods require authentication of all their inbound traffic.
  await kubectlOk(
    cluster,
    ['apply', '-f', '-'],
    (['server', 'client'] as const)
      .map((sa) => `apiVersion: meshauth.io/v1alpha1\nkind: MutualAuthPolicy\nmetadata: { name: require-${sa}, namespace: ${APP_NS} }\nspec:\n  mode: required\n  destination: { serviceAccount: ${sa} }\n`)
      .join('---\n'),
  );
  for (const d of directions) {
    const to = ips[d.to];
    // The pair is authenticated within a bounded time (a handshake between the agents).
    const passes = await eventually(() => reach({ pod: d.from }, 'tcp', to), 60_000);
    t.true(passes, `policy: ${d.from} -> ${d.to} tcp never passed`);
    for (const proto of protos) t.true(await reach({ pod: d.from }, proto, to), `policy: authenticated ${d.from} -> ${d.to} ${proto} failed`);
    const receiver = await agentStatus(d.toNode);
    const ids = JSON.stringify(receiver.pairs);
    t.true(ids.includes(`/ns/${APP_NS}/sa/${d.from}`) && ids.includes(`/ns/${APP_NS}/sa/${d.to}`), `${d.toNode} pairs: ${ids}`);
    t.true(BigInt(receiver.datapath.counters.allowed ?? '0') > 0n, `${d.toNode} gate counters: ${JSON.stringify(receiver.datapath.counters)}`);
    // What the node's own host network sees under the policy (kubelet probes come from there):
    // the host is no workload, so a policy whose source is "any workload" does not cover it.
    const host = await Promise.all(protos.map((proto) => reach({ node: d.host }, proto, to)));
    t.log(`policy: node-${d.host} host -> ${d.to} tcp/udp/icmp: ${host.map((ok) => (ok ? 'passed' : 'dropped')).join('/')}`);
  }
  t.log(`node-b counters: ${JSON.stringify((await agentStatus('node-b')).datapath.counters)}`);
});

test.serial('2b: through a ClusterIP Service and a NodePort (kube-proxy iptables), with the policy', async (t) => {
  await kubectlOk(
    cluster,
    ['apply', '-f', '-'],
    `apiVersion: v1\nkind: Service\nmetadata: { name: server, namespace: ${APP_NS} }\nspec:\n  type: NodePort\n  selector: { app: server }\n  ports:\n    - { name: tcp, port: 8080, protocol: TCP }\n    - { name: udp, port: 8080, protocol: UDP }\n`,
  );
  const clusterIp = (await kubectlOk(cluster, ['-n', APP_NS, 'get', 'svc', 'server', '-o', 'jsonpath={.spec.clusterIP}'])).trim();
  const nodePort = (await kubectlOk(cluster, ['-n', APP_NS, 'get', 'svc', 'server', '-o', 'jsonpath={.spec.ports[0].nodePort}'])).trim();
  for (const proto of ['tcp', 'udp'] as const) {
    const ok = await eventually(() => reach({ pod: 'client' }, proto, clusterIp), 30_000);
    t.true(ok, `client -> ClusterIP ${clusterIp}:8080 ${proto} failed under the policy`);
  }
  const viaNodePort = (await kubectl(cluster, ['-n', APP_NS, 'exec', 'client', '--', 'probe', 'tcp', `${cluster.env.CLUSTER_NODE_B_IP}:${nodePort}`])).ok;
  t.log(`client -> NodePort ${cluster.env.CLUSTER_NODE_B_IP}:${nodePort} tcp: ${viaNodePort ? 'passed' : 'dropped'} (kube-proxy SNATs NodePort traffic: the server sees the node, not the client)`);
});

test.serial('4: a deleted pod\'s IP given to a new pod with another service account: the new pod gets its own identity and pair, not the old one\'s', async (t) => {
  const server = await podIp('server');
  await kubectlOk(cluster, ['apply', '-f', '-'], probePod('reuse-old', 'node-a', 'old-sa'));
  await kubectlOk(cluster, ['-n', APP_NS, 'wait', '--for=condition=Ready', 'pod/reuse-old', '--timeout=120s']);
  const ip = await podIp('reuse-old');
  t.true(await eventually(() => reach({ pod: 'reuse-old' }, 'tcp', server), 60_000), 'reuse-old -> server never passed');
  await kubectlOk(cluster, ['-n', APP_NS, 'delete', 'pod', 'reuse-old', '--wait=true']);
  // host-local hands out addresses round-robin after the last one it reserved: make that the
  // address before the freed one, so the next pod on node-a gets the freed address.
  const octets = ip.split('.').map(Number);
  const before = [...octets.slice(0, 3), (octets[3] ?? 1) - 1].join('.');
  const reserve = await nodeExec(cluster, 'a', ['sh', '-c', `printf %s ${before} > /var/lib/cni/networks/meshauth-test/last_reserved_ip.0`]);
  t.true(reserve.ok, reserve.stderr);
  await kubectlOk(cluster, ['apply', '-f', '-'], probePod('reuse-new', 'node-a', 'new-sa'));
  await kubectlOk(cluster, ['-n', APP_NS, 'wait', '--for=condition=Ready', 'pod/reuse-new', '--timeout=120s']);
  t.is(await podIp('reuse-new'), ip, 'the new pod did not get the freed address');
  t.true(await eventually(() => reach({ pod: 'reuse-new' }, 'tcp', server), 60_000), 'reuse-new -> server never passed');
  const a = await agentStatus('node-a');
  const ids = a.identities.map((i) => i.spiffeId);
  t.true(ids.includes(`spiffe://cluster.local/ns/${APP_NS}/sa/new-sa`), `node-a identities: ${JSON.stringify(ids)}`);
  t.false(ids.includes(`spiffe://cluster.local/ns/${APP_NS}/sa/old-sa`), `node-a still holds the old pod's identity: ${JSON.stringify(ids)}`);
  let pairs = '';
  const withdrawn = await eventually(async () => {
    pairs = JSON.stringify((await agentStatus('node-b')).pairs);
    return !pairs.includes('/sa/old-sa');
  }, 30_000);
  t.true(withdrawn, `node-b still holds a pair of the deleted pod's identity: ${pairs}`);
  t.true(pairs.includes('/sa/new-sa'), `node-b pairs: ${pairs}`);
  t.log(`node-b pairs after the reuse: ${pairs}`);
  await kubectlOk(cluster, ['-n', APP_NS, 'delete', 'pod', 'reuse-new', '--wait=false']);
});

test.serial('5: kubectl rollout restart of the DaemonSet during a UDP stream of an authenticated pair: the stream goes on', async (t) => {
  const server = await podIp('server');
  // 40 s of one datagram every 10 ms from client (node-a) to server (node-b), both under a policy.
  const stream = kubectl(cluster, ['-n', APP_NS, 'exec', 'client', '--', 'probe', 'udp-stream', `${server}:8080`, '40']);
  await new Promise((resolve) => setTimeout(resolve, 3_000));
  const restarted = await kubectl(cluster, ['-n', NS, 'rollout', 'restart', 'daemonset/meshauth']);
  t.true(restarted.ok, restarted.stderr);
  const rolled = await kubectl(cluster, ['-n', NS, 'rollout', 'status', 'daemonset/meshauth', '--timeout=180s']);
  t.true(rolled.ok, `rollout status: ${rolled.stderr}`);
  const result = await stream;
  const m = /sent (\d+) received (\d+)/.exec(result.stdout);
  t.truthy(m, `udp-stream: ${result.stdout} ${result.stderr}`);
  const [sent, received] = [Number(m?.[1]), Number(m?.[2])];
  t.log(`during the rollout: sent ${sent}, echoed ${received}, lost ${sent - received} (${(((sent - received) / sent) * 100).toFixed(1)}%)`);
  // The pinned maps keep enforcing and admitting the pair while each agent restarts.
  t.true(received > 0 && received <= sent, `sent ${sent} received ${received}`);
  const after = await eventually(() => reach({ pod: 'client' }, 'udp', server), 60_000);
  t.true(after, 'client -> server udp after the rollout');
});

/** The cgroup v1 directory (below a controller) of an agent pod's container, as kubelet's cgroupfs driver makes it. */
async function agentCgroup(pod: PodInfo): Promise<string> {
  const [uid = '', containerId = ''] = (
    await kubectlOk(cluster, ['-n', NS, 'get', 'pod', pod.name, '-o', 'jsonpath={.metadata.uid} {.status.containerStatuses[0].containerID}'])
  ).split(' ');
  return `meshauth-${cluster.env.CLUSTER_RUN}-${pod.node.slice(-1)}/kubepods/burstable/pod${uid}/${containerId.replace('containerd://', '')}`;
}

test.serial('5b: kill -9 of the server node\'s agent during a UDP stream of an authenticated pair: the stream goes on, the agent comes back', async (t) => {
  const server = await podIp('server');
  const agent = (await agentPods()).find((p) => p.node === 'node-b');
  if (!agent) throw new Error('no agent on node-b');
  const procs = (await readFile(`/sys/fs/cgroup/pids/${await agentCgroup(agent)}/cgroup.procs`, 'utf8')).split('\n').filter(Boolean);
  t.true(procs.length > 0, 'agent container has no processes');
  const stream = kubectl(cluster, ['-n', APP_NS, 'exec', 'client', '--', 'probe', 'udp-stream', `${server}:8080`, '30']);
  await new Promise((resolve) => setTimeout(resolve, 3_000));
  for (const pid of procs) process.kill(Number(pid), 'SIGKILL');
  const result = await stream;
  const m = /sent (\d+) received (\d+)/.exec(result.stdout);
  t.truthy(m, `udp-stream: ${result.stdout} ${result.stderr}`);
  const [sent, received] = [Number(m?.[1]), Number(m?.[2])];
  t.log(`kill -9 of node-b's agent: sent ${sent}, echoed ${received}, lost ${sent - received}`);
  t.true(received > 0, `sent ${sent} received ${received}`);
  const back = await eventually(async () => (await kubectl(cluster, ['-n', NS, 'rollout', 'status', 'daemonset/meshauth', '--timeout=2s'])).ok, 120_000);
  t.true(back, 'the DaemonSet is not Ready again after the kill');
  const restarts = await kubectlOk(cluster, ['-n', NS, 'get', 'pod', agent.name, '-o', 'jsonpath={.status.containerStatuses[0].restartCount}']);
  t.is(restarts.trim(), '1', `restartCount of ${agent.name}`);
  t.true(await eventually(() => reach({ pod: 'client' }, 'udp', server), 60_000), 'client -> server udp after the agent came back');
});

test.serial('resources: each agent container\'s peak memory and CPU time (cgroup v1 accounting), for deploy/ requests and limits', async (t) => {
  for (const pod of await agentPods()) {
    const dir = await agentCgroup(pod);
    const read = async (file: string) => (await readFile(`/sys/fs/cgroup/${file}`, 'utf8').catch(() => '')).trim();
    const peak = Number(await read(`memory/${dir}/memory.max_usage_in_bytes`));
    const now = Number(await read(`memory/${dir}/memory.usage_in_bytes`));
    const cpu = Number(await read(`cpuacct/${dir}/cpuacct.usage`));
    t.true(peak > 0, `no memory accounting for ${pod.name} in ${dir}`);
    t.log(`${pod.node} agent: memory now ${(now / 2 ** 20).toFixed(0)} MiB, peak ${(peak / 2 ** 20).toFixed(0)} MiB; CPU ${(cpu / 1e9).toFixed(1)} s since its start`);
  }
});

test.serial('7: kubectl delete -k after the documented uninstall leaves no gate, map, WireGuard link or XFRM state on either node', async (t) => {
  await kubectl(cluster, ['delete', 'namespace', APP_NS, '--wait=false']);
  for (const pod of await agentPods()) {
    const result = await kubectl(cluster, ['-n', NS, 'exec', pod.name, '--', ...CLI, 'datapath', 'uninstall']);
    t.true(result.ok, `datapath uninstall in ${pod.name}: ${result.stderr}`);
  }
  const overlay = join(cluster.dir, 'overlay');
  t.true((await kubectl(cluster, ['delete', '-k', overlay, '--wait=true', '--timeout=120s'])).ok, 'kubectl delete -k');
  const gone = await eventually(async () => (await agentPods().catch(() => [])).length === 0, 120_000);
  t.true(gone, 'agent pods still present');
  for (const node of ['a', 'b'] as const) {
    // progs.debug and maps.debug: the kernel's own (bpf_preload), in every bpffs.
    const pins = await nodeExec(cluster, node, ['find', '/sys/fs/bpf', '-mindepth', '1', '!', '-name', '*.debug']);
    t.is(pins.stdout.trim(), '', `node-${node} /sys/fs/bpf still holds: ${pins.stdout}`);
    const net = await nodeExec(cluster, node, ['bpftool', 'net', 'show']);
    t.false(/meshauth|gate/i.test(net.stdout), `node-${node} bpftool net show: ${net.stdout}`);
    const wg = await nodeExec(cluster, node, ['ip', '-d', 'link', 'show', 'type', 'wireguard']);
    t.is(wg.stdout.trim(), '', `node-${node} WireGuard links: ${wg.stdout}`);
    for (const what of ['state', 'policy']) {
      const xfrm = await nodeExec(cluster, node, ['ip', 'xfrm', what]);
      t.is(xfrm.stdout.trim(), '', `node-${node} ip xfrm ${what}: ${xfrm.stdout}`);
    }
  }
  t.false((await kubectl(cluster, ['get', 'crd', 'mutualauthpolicies.meshauth.io'])).ok, 'the CRD is still there');
});

test.serial('8: helm install of deploy/helm/meshauth (after the kustomize uninstall): both agents Ready, peers up; helm uninstall', async (t) => {
  const overlay = join(cluster.dir, 'overlay');
  const digest = /digest: (sha256:[0-9a-f]+)/.exec(await readFile(join(overlay, 'kustomization.yaml'), 'utf8'))?.[1];
  if (!digest) throw new Error('no image digest in the overlay');
  const helmBin = join((await execa('bash', [join(import.meta.dirname, '..', 'build.sh'), '--path', 'helm'])).stdout.trim(), 'helm');
  const helm = (args: string[]) =>
    execa('nsenter', [`--net=/run/netns/${cluster.env.CLUSTER_NS_CP}`, '--', helmBin, '--kubeconfig', join(cluster.dir, 'admin.kubeconfig'), ...args], { reject: false });
  const config = join(cluster.dir, 'helm-config.yaml');
  await writeFile(
    config,
    'trustDomain: cluster.local\nstateDir: /var/lib/meshauth\nidentity:\n  provider: dev\n  dev:\n    caDir: /etc/meshauth-secrets/dev-ca\n    ttl: 1h\n' +
      'kubernetes:\n  enabled: true\ntransport:\n  mode: none\ncluster:\n  policy:\n    default: disabled\n',
  );
  await kubectlOk(cluster, ['apply', '-f', join(import.meta.dirname, '..', '..', '..', 'deploy', 'namespace.yaml')]);
  await kubectlOk(cluster, ['-n', NS, 'create', 'secret', 'generic', 'meshauth-dev-ca', `--from-file=${overlay}/dev-ca/ca.pem`, `--from-file=${overlay}/dev-ca/ca.key`]);
  const installed = await helm([
    'install', 'meshauth', join(import.meta.dirname, '..', '..', '..', 'deploy', 'helm', 'meshauth'), '-n', NS,
    '--set', `image.repository=${(cluster.env.IMAGE_MESHAUTH ?? '').replace(/:[^:/]*$/, '')}`, '--set', `image.digest=${digest}`,
    '--set-file', `config=${config}`, '--set', 'serviceMonitor.enabled=false', '--wait', '--timeout', '3m',
  ]);
  t.is(installed.exitCode, 0, `helm install: ${installed.stderr}`);
  const pods = await agentPods();
  t.deepEqual(pods.map((p) => p.node).sort(), ['node-a', 'node-b'], `agent pods: ${JSON.stringify(pods)}`);
  for (const pod of pods) {
    const up = await eventually(async () => {
      const result = await kubectl(cluster, ['-n', NS, 'exec', pod.name, '--', ...CLI, 'status', '--json']);
      return result.ok && (JSON.parse(result.stdout) as { peers: { state: string }[] }).peers.some((peer) => peer.state === 'up');
    }, 60_000);
    t.true(up, `${pod.name}: no peer up after helm install`);
  }
  for (const pod of pods) await kubectl(cluster, ['-n', NS, 'exec', pod.name, '--', ...CLI, 'datapath', 'uninstall']);
  const removed = await helm(['uninstall', 'meshauth', '-n', NS, '--wait']);
  t.is(removed.exitCode, 0, `helm uninstall: ${removed.stderr}`);
});
