// The TypeScript mirror of bpf/meshauth.h against the compiled object's BTF (struct sizes, field
// offsets, map definitions, counter enum) and the header's constants; plus the codecs and the IP
// prefix parser. Needs bpftool and the built object, not root.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { parseIpPrefix } from '../src/datapath/ip-prefix.js';
import {
  AUTH_TYPE,
  COUNTER_NAMES,
  DEFAULT_MODE,
  DEFAULT_SIGNAL_INTERVAL_NS,
  DIRECTION,
  FAMILY,
  IPCACHE_MEMO_SLOTS,
  IPCACHE_PREFIX_BASE,
  MAP_SPECS,
  PROGRAMS,
  REASON,
  RESERVED_IDENTITY,
  RESERVED_IDENTITY_BASE,
  STRUCTS,
  TRANSPORT,
  IPSEC_REQID_FIRST,
  IPSEC_REQID_LAST,
  decodeAuthKey,
  decodeAuthValue,
  decodeConfig,
  decodeSignal,
  encodeAuthKey,
  encodeAuthValue,
  encodeConfig,
  encodeEndpointKey,
  encodeIpcacheKey,
  encodePolicyKey,
  type MapName,
} from '../src/datapath/gate/layout.js';
import { assertGateBuilt } from './helpers/datapath-fixture.js';

interface BtfType {
  id: number;
  kind: string;
  name: string;
  size?: number;
  type_id?: number;
  nr_elems?: number;
  members?: { name: string; type_id: number; bits_offset: number }[];
  values?: { name: string; val: number }[];
  vars?: { type_id: number }[];
}

const object = assertGateBuilt();
const btfTypes = execa('bpftool', ['btf', 'dump', 'file', object, '-j']).then(({ stdout }) => {
  const types = (JSON.parse(stdout) as { types: BtfType[] }).types;
  return new Map(types.map((type) => [type.id, type]));
});

function byName(types: Map<number, BtfType>, kind: string, name: string): BtfType {
  const found = [...types.values()].find((type) => type.kind === kind && type.name === name);
  if (!found) throw new Error(`no ${kind} ${name} in BTF`);
  return found;
}

/** Size in bytes of a type, through typedefs and qualifiers. */
function sizeOf(types: Map<number, BtfType>, id: number): number {
  const type = types.get(id)!;
  if (type.size !== undefined) return type.size;
  if (['TYPEDEF', 'CONST', 'VOLATILE'].includes(type.kind)) return sizeOf(types, type.type_id!);
  if (type.kind === 'ARRAY') return sizeOf(types, type.type_id!) * type.nr_elems!;
  throw new Error(`cannot size BTF ${type.kind}`);
}

for (const [name, layout] of Object.entries(STRUCTS)) {
  test(`struct ${name}: TypeScript size and offsets match the BTF`, async (t) => {
    const types = await btfTypes;
    const struct = byName(types, 'STRUCT', name);
    t.is(struct.size, layout.size, 'size');
    const offsets = Object.fromEntries(struct.members!.map((member) => [member.name, member.bits_offset / 8]));
    t.deepEqual(offsets, layout.fields as Record<string, number>, 'field offsets');
    // Each field ends where the next starts (or the struct ends): sizes agree too.
    const ordered = struct.members!.map((member) => [member.bits_offset / 8, sizeOf(types, member.type_id)] as const);
    ordered.forEach(([offset, size], i) => t.true(offset + size <= (ordered[i + 1]?.[0] ?? layout.size)));
  });
}

test('map definitions in the object match MAP_SPECS', async (t) => {
  const types = await btfTypes;
  const maps = byName(types, 'DATASEC', '.maps');
  const found: Record<string, { type: number; keySize: number; valueSize: number; maxEntries: number }> = {};
  for (const { type_id } of maps.vars!) {
    const variable = types.get(type_id)!;
    const members = new Map(types.get(variable.type_id!)!.members!.map((m) => [m.name, types.get(m.type_id)!]));
    // libbpf's __uint(name, N) is a pointer to an array of N elements; __type(name, T) a pointer to T.
    const uint = (member: string) => (members.has(member) ? types.get(members.get(member)!.type_id!)!.nr_elems! : 0);
    const pointee = (member: string) => (members.has(member) ? sizeOf(types, members.get(member)!.type_id!) : 0);
    found[variable.name] = {
      type: uint('type'),
      keySize: pointee('key') || uint('key_size'),
      valueSize: pointee('value') || uint('value_size'),
      maxEntries: uint('max_entries'), // absent (0) for the doorbell: one slot per CPU
    };
  }
  const expected = Object.fromEntries(
    (Object.entries(MAP_SPECS) as [MapName, (typeof MAP_SPECS)[MapName]][]).map(([name, spec]) => [
      name,
      { type: spec.type, keySize: spec.keySize, valueSize: spec.valueSize, maxEntries: spec.maxEntries },
    ]),
  );
  t.deepEqual(found, expected);
});

test('counter names and order match enum meshauth_counter', async (t) => {
  const types = await btfTypes;
  const values = byName(types, 'ENUM', 'meshauth_counter').values!;
  const camel = (name: string) =>
    name
      .replace(/^MESHAUTH_CTR_/, '')
      .toLowerCase()
      .replace(/_([a-z])/g, (_, letter: string) => letter.toUpperCase());
  t.deepEqual(
    values.filter((v) => v.name !== 'MESHAUTH_CTR_MAX').map((v) => [camel(v.name), v.val]),
    COUNTER_NAMES.map((name, index) => [name, index]),
  );
  t.is(values.find((v) => v.name === 'MESHAUTH_CTR_MAX')?.val, COUNTER_NAMES.length);
  t.true(COUNTER_NAMES.length <= MAP_SPECS.counters.maxEntries);
});

test('both programs are in the object under the names the loader attaches', async (t) => {
  const types = await btfTypes;
  for (const name of Object.values(PROGRAMS)) t.notThrows(() => byName(types, 'FUNC', name));
});

test("the header's constants match the TypeScript ones", (t) => {
  const header = readFileSync(join(object, '..', 'meshauth.h'), 'utf8');
  const defines = Object.fromEntries(
    [...header.matchAll(/^#define MESHAUTH_(\w+)\s+(\d+)(?:ULL)?\b/gm)].map((m) => [m[1]!, BigInt(m[2]!)]),
  );
  t.deepEqual(defines, {
    FAMILY_IPV4: BigInt(FAMILY.ipv4),
    FAMILY_IPV6: BigInt(FAMILY.ipv6),
    IPCACHE_PREFIX_BASE: BigInt(IPCACHE_PREFIX_BASE),
    IPCACHE_MEMO_SLOTS: BigInt(IPCACHE_MEMO_SLOTS),
    DIR_EGRESS: BigInt(DIRECTION.egress),
    DIR_INGRESS: BigInt(DIRECTION.ingress),
    AUTH_NONE: BigInt(AUTH_TYPE.none),
    AUTH_MTLS: BigInt(AUTH_TYPE.mtls),
    DEFAULT_REQUIRE: BigInt(DEFAULT_MODE.require),
    DEFAULT_ALLOW: BigInt(DEFAULT_MODE.allow),
    DEFAULT_SIGNAL_INTERVAL_NS: DEFAULT_SIGNAL_INTERVAL_NS,
    REASON_NO_ENTRY: BigInt(REASON.noEntry),
    REASON_EXPIRED: BigInt(REASON.expired),
    RESERVED_IDENTITY_BASE: BigInt(RESERVED_IDENTITY_BASE),
    IDENTITY_HOST: BigInt(RESERVED_IDENTITY.host),
    IDENTITY_WORLD: BigInt(RESERVED_IDENTITY.world),
    IDENTITY_SERVICE: BigInt(RESERVED_IDENTITY.service),
    IDENTITY_REMOTE_NODE: BigInt(RESERVED_IDENTITY.remoteNode),
    IDENTITY_KUBE_APISERVER: BigInt(RESERVED_IDENTITY.kubeApiserver),
    TRANSPORT_UNSET: BigInt(TRANSPORT.unset),
    TRANSPORT_NONE: BigInt(TRANSPORT.none),
    TRANSPORT_WIREGUARD: BigInt(TRANSPORT.wireguard),
    TRANSPORT_IPSEC: BigInt(TRANSPORT.ipsec),
    IPSEC_REQID_FIRST: BigInt(IPSEC_REQID_FIRST),
    IPSEC_REQID_LAST: BigInt(IPSEC_REQID_LAST),
  });
});

test('IP prefixes: addresses, CIDRs, host bits, bad input', (t) => {
  t.deepEqual(parseIpPrefix('10.1.2.3'), { family: 4, address: Buffer.from([10, 1, 2, 3]), length: 32 });
  t.deepEqual(parseIpPrefix('10.1.2.3/12'), { family: 4, address: Buffer.from([10, 0, 0, 0]), length: 12 });
  t.deepEqual(parseIpPrefix('0.0.0.0/0').length, 0);
  t.is(parseIpPrefix('fd00:1:2::3').address.toString('hex'), 'fd000001000200000000000000000003');
  t.is(parseIpPrefix('::ffff:10.1.2.3').address.toString('hex'), '00000000000000000000ffff0a010203');
  t.is(parseIpPrefix('fe80::1%eth0').address.toString('hex'), 'fe800000000000000000000000000001');
  t.is(parseIpPrefix('2001:db8::ff/28').address.toString('hex'), '20010db0000000000000000000000000');
  t.is(parseIpPrefix('::/0').length, 0);
  for (const bad of ['', '10.1.2', '10.1.2.3/33', 'fd00::/129', '10.0.0.0/-1', '10.0.0.0/', 'example.com', 'fd00::1/1e2']) {
    t.throws(() => parseIpPrefix(bad), { name: 'IpPrefixError' }, bad);
  }
});

test('codecs write the documented bytes and reject out-of-range values', (t) => {
  const ipcacheKey = encodeIpcacheKey(parseIpPrefix('fd00::/64'));
  t.is(ipcacheKey.readUInt32LE(0), 32 + 64);
  t.is(ipcacheKey[4], 6);
  t.is(ipcacheKey.subarray(8).toString('hex'), 'fd00' + '0'.repeat(28));
  t.is(encodeIpcacheKey(parseIpPrefix('10.0.0.1')).toString('hex'), '40000000' + '04000000' + '0a000001' + '0'.repeat(24));

  const key = { localIdentity: 0x01020304, remoteIdentity: 7, remoteNode: 0xbeef, authType: 1 };
  const encoded = encodeAuthKey(key);
  t.is(encoded.toString('hex'), '04030201' + '07000000' + 'efbe' + '01' + '00');
  t.deepEqual(decodeAuthKey(encoded), key);
  t.is(decodeAuthKey(encodeAuthKey({ localIdentity: 1, remoteIdentity: 2, remoteNode: 0 })).authType, AUTH_TYPE.mtls);
  t.is(decodeAuthValue(encodeAuthValue(2n ** 64n - 1n)), 2n ** 64n - 1n);
  t.is(encodePolicyKey({ localIdentity: 1, remoteIdentity: 2, direction: 'ingress' }).toString('hex'), '010000000200000001000000');

  t.throws(() => encodeAuthKey({ ...key, localIdentity: 0 }), { instanceOf: RangeError });
  t.throws(() => encodeAuthKey({ ...key, remoteIdentity: 2 ** 32 }), { instanceOf: RangeError });
  t.throws(() => encodeAuthKey({ ...key, remoteNode: 65536 }), { instanceOf: RangeError });
  t.throws(() => encodeAuthKey({ ...key, authType: 1.5 }), { instanceOf: RangeError });
  t.throws(() => encodeAuthValue(-1n), { instanceOf: RangeError });
  t.throws(() => encodeAuthValue(2n ** 64n), { instanceOf: RangeError });
  t.throws(() => encodeAuthValue(5 as unknown as bigint), { instanceOf: RangeError });
  t.throws(() => encodePolicyKey({ localIdentity: 1, remoteIdentity: 2, direction: 'up' as 'egress' }), {
    instanceOf: RangeError,
  });

  t.is(encodeEndpointKey(0x01020304, parseIpPrefix('10.0.0.1')).toString('hex'), '04030201' + '04000000' + '0a000001' + '0'.repeat(24));
  t.throws(() => encodeEndpointKey(0, parseIpPrefix('10.0.0.1')), { instanceOf: RangeError });

  // A zeroed config is the fail-closed default: no transport, so no other node's packets.
  t.deepEqual(decodeConfig(Buffer.alloc(STRUCTS.config_value.size)), {
    defaultMode: 'require',
    defaultAuthType: AUTH_TYPE.mtls,
    signalIntervalNs: DEFAULT_SIGNAL_INTERVAL_NS,
    transport: 'unset',
    localNode: 0,
    wireguardIfindex: 0,
  });
  const config = { defaultMode: 'allow', defaultAuthType: 1, signalIntervalNs: 5n, transport: 'wireguard', localNode: 0xbeef, wireguardIfindex: 0x01020304 } as const;
  t.deepEqual(decodeConfig(encodeConfig(config)), config);
  t.is(encodeConfig(config).subarray(10).toString('hex'), '02' + '00' + 'efbe' + '0000' + '04030201' + '00000000');
  t.throws(() => encodeConfig({ ...config, signalIntervalNs: 0n }), { instanceOf: RangeError });
  t.throws(() => encodeConfig({ ...config, localNode: 65536 }), { instanceOf: RangeError });
  t.throws(() => encodeConfig({ ...config, transport: 'gre' as 'none' }), { instanceOf: RangeError });

  // local 101, remote 201, node 2, auth 1, UDP, ingress, expired, IPv6, pad; then the ktime.
  const signal = Buffer.from('65000000' + 'c9000000' + '0200' + '01' + '11' + '01' + '02' + '06' + '00' + '0807060504030201', 'hex');
  t.deepEqual(decodeSignal(signal), {
    localIdentity: 101,
    remoteIdentity: 201,
    remoteNode: 2,
    authType: 1,
    protocol: 0x11,
    direction: 'ingress',
    reason: 'expired',
    family: 6,
    ktimeNs: 0x0102030405060708n,
  });
});
