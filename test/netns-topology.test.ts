// The namespace builder (src/netns) on real namespaces: what it makes is reachable as described,
// names are unique, and destroy() leaves nothing behind — also after a create that failed
// half-way, and when it is called before create has made anything.
import test from 'ava';
import { readdir } from 'node:fs/promises';
import { execa } from 'execa';
import { namespaceExists } from '../src/netns/cleanup.js';
import { FORWARDING, NetnsTopology, QUIET_IPV6, randomTag, type TopologySpec } from '../src/netns/topology.js';
import { privileged } from './helpers/privileged.js';

const PREFIX = 'mnt';

/**
 *   left ── router ── [sw: br0] ── right
 *
 * left 10.61.1.2 / fd00:61:1::2, right 10.61.2.2 / fd00:61:2::2; the router forwards between them,
 * and reaches right through a bridge (10.61.2.9) in its own namespace. `hostLink` adds a veth from the host's
 * namespace (no addresses) to left; `extraRoute` a route appended to left's.
 */
function spec(options: { hostLink?: string; extraRoute?: { to: string; via: string } } = {}): TopologySpec {
  return {
    prefix: PREFIX,
    namespaces: [
      {
        name: 'left',
        sysctls: QUIET_IPV6,
        routes: [{ to: 'default', via: '10.61.1.1' }, { to: 'default', via: 'fd00:61:1::1' }, ...(options.extraRoute ? [options.extraRoute] : [])],
      },
      { name: 'router', sysctls: { ...QUIET_IPV6, ...FORWARDING } },
      { name: 'sw', sysctls: QUIET_IPV6, bridges: [{ name: 'br0', addresses: ['10.61.2.9/24'] }] },
      { name: 'right', sysctls: QUIET_IPV6, routes: [{ to: 'default', via: '10.61.2.1' }, { to: 'default', via: 'fd00:61:2::1' }] },
    ],
    veths: [
      {
        ends: [
          { netns: 'left', name: 'eth0', index: 30, addresses: ['10.61.1.2/24', 'fd00:61:1::2/64'] },
          { netns: 'router', name: 'r-left', index: 31, addresses: ['10.61.1.1/24', 'fd00:61:1::1/64'] },
        ],
      },
      {
        ends: [
          { netns: 'router', name: 'r-right', mtu: 1400, addresses: ['10.61.2.1/24', 'fd00:61:2::1/64'] },
          { netns: 'sw', name: 'p1', master: 'br0' },
        ],
      },
      {
        ends: [
          { netns: 'sw', name: 'p2', master: 'br0' },
          { netns: 'right', name: 'eth0', addresses: ['10.61.2.2/24', 'fd00:61:2::2/64'] },
        ],
      },
      ...(options.hostLink ? [{ ends: [{ name: options.hostLink }, { netns: 'left', name: 'from-host' }] as const }] : []),
    ],
  };
}

/** Namespaces on the host whose names start with `<prefix>-<tag>-`. */
async function namespacesTagged(tag: string): Promise<string[]> {
  const all = await readdir('/run/netns').catch(() => []);
  return all.filter((name) => name.startsWith(`${PREFIX}-${tag}-`));
}

function hostLinkExists(name: string): Promise<boolean> {
  return execa('ip', ['link', 'show', 'dev', name], { reject: false }).then((result) => result.exitCode === 0);
}

async function pings(topology: NetnsTopology, from: string, to: string): Promise<boolean> {
  return (await topology.run(from, 'ping', ['-n', '-q', '-c', '1', '-W', '5', to], { reject: false })).exitCode === 0;
}

privileged('create builds the described namespaces, reachable across the router and the bridge; destroy removes them', async (t) => {
  const hostLink = `mnt${randomTag()}h`;
  const topology = await NetnsTopology.create(spec({ hostLink }), { teardown: (destroy) => t.teardown(destroy) });
  t.deepEqual(topology.namespaces, ['left', 'router', 'sw', 'right'].map((name) => `${PREFIX}-${topology.tag}-${name}`));
  t.is(topology.netns('router'), `${PREFIX}-${topology.tag}-router`);
  t.throws(() => topology.netns('nowhere'), { message: /no namespace nowhere/ });
  t.true(topology.namespaces.every(namespaceExists));

  t.true(await pings(topology, 'left', '10.61.2.2'), 'IPv4 across the router and the bridge');
  t.true(await pings(topology, 'right', 'fd00:61:1::2'), 'IPv6 back');
  t.true(await pings(topology, 'router', '10.61.2.9'), "the bridge's own address");
  t.is((await topology.run('router', 'sysctl', ['-n', 'net.ipv6.conf.all.forwarding'])).stdout, '1');
  t.is((await topology.run('left', 'sysctl', ['-n', 'net.ipv6.conf.default.accept_dad'])).stdout, '0');
  const routerLinks = JSON.parse((await topology.run('router', 'ip', ['-j', 'link', 'show'])).stdout) as { ifname: string; ifindex: number; mtu: number }[];
  t.is(routerLinks.find((link) => link.ifname === 'r-left')?.ifindex, 31, 'the explicit ifindex of a peer');
  t.is(routerLinks.find((link) => link.ifname === 'r-right')?.mtu, 1400, 'the explicit MTU');
  const ports = JSON.parse((await topology.run('sw', 'ip', ['-j', 'link', 'show', 'master', 'br0'])).stdout) as { ifname: string }[];
  t.deepEqual(ports.map((port) => port.ifname).sort(), ['p1', 'p2']);
  t.true(await hostLinkExists(hostLink), 'the host end of a veth to the host');

  // Something still running inside is killed, not left holding the namespace.
  const sleeper = topology.run('left', 'sleep', ['600'], { reject: false });
  await topology.destroy();
  t.is((await sleeper).signal, 'SIGKILL');
  t.deepEqual(await namespacesTagged(topology.tag), []);
  t.false(await hostLinkExists(hostLink));
  await t.notThrowsAsync(topology.destroy(), 'destroy again');
});

privileged('a create that fails half-way removes what it made, host links too, and throws', async (t) => {
  const tag = randomTag();
  const hostLink = `mnt${tag}h`;
  // The last step fails: left has no route to this gateway.
  const broken = spec({ hostLink, extraRoute: { to: '10.62.0.0/16', via: '10.99.99.99' } });
  await t.throwsAsync(NetnsTopology.create(broken, { tag }), { message: /Nexthop has invalid gateway/ });
  t.deepEqual(await namespacesTagged(tag), []);
  t.false(await hostLinkExists(hostLink));
});

privileged('destroy called before create has made anything: create fails and nothing is left', async (t) => {
  const tag = randomTag();
  // The hook gets destroy before anything is made; calling it at once is the earliest a
  // teardown can come (a test that timed out while its topology was being built).
  await t.throwsAsync(NetnsTopology.create(spec(), { tag, teardown: (destroy) => void destroy() }), { message: /destroyed while it was being created/ });
  t.deepEqual(await namespacesTagged(tag), []);
});

privileged('names are unique: two topologies of one spec coexist; a tag in use fails without touching its owner', async (t) => {
  const teardown = (destroy: () => Promise<void>) => t.teardown(destroy);
  const [first, second] = await Promise.all([NetnsTopology.create(spec(), { teardown }), NetnsTopology.create(spec(), { teardown })]);
  t.not(first.tag, second.tag);
  t.is(new Set([...first.namespaces, ...second.namespaces]).size, 8);
  await t.throwsAsync(NetnsTopology.create(spec(), { tag: first.tag }), { message: /File exists|exists/ });
  t.true(first.namespaces.every(namespaceExists), 'the owner keeps its namespaces');
  t.true(await pings(first, 'left', '10.61.2.2'));
});

test('a spec that could not be built is refused before anything is made', async (t) => {
  const tag = randomTag();
  const bad: [string, TopologySpec][] = [
    ['repeated', { prefix: PREFIX, namespaces: [{ name: 'a' }, { name: 'a' }] }],
    ['unknown namespace', { prefix: PREFIX, namespaces: [{ name: 'a' }], veths: [{ ends: [{ netns: 'a', name: 'x' }, { netns: 'b', name: 'y' }] }] }],
    ['host to host', { prefix: PREFIX, namespaces: [{ name: 'a' }], veths: [{ ends: [{ name: 'x' }, { name: 'y' }] }] }],
    ['long interface name', { prefix: PREFIX, namespaces: [{ name: 'a' }, { name: 'b' }], veths: [{ ends: [{ netns: 'a', name: 'sixteen-chars-xx' }, { netns: 'b', name: 'y' }] }] }],
    ['long bridge name', { prefix: PREFIX, namespaces: [{ name: 'a', bridges: [{ name: 'a-bridge-too-long' }] }] }],
    ['no such bridge', { prefix: PREFIX, namespaces: [{ name: 'a' }, { name: 'b' }], veths: [{ ends: [{ netns: 'a', name: 'x', master: 'br0' }, { netns: 'b', name: 'y' }] }] }],
    ['bad name', { prefix: PREFIX, namespaces: [{ name: 'a/b' }] }],
    ['peer index alone', { prefix: PREFIX, namespaces: [{ name: 'a' }, { name: 'b' }], veths: [{ ends: [{ netns: 'a', name: 'x' }, { netns: 'b', name: 'y', index: 40 }] }] }],
  ];
  for (const [what, broken] of bad) await t.throwsAsync(NetnsTopology.create(broken, { tag }), { message: /^topology: / }, what);
  t.deepEqual(await namespacesTagged(tag), []);
});
