// The TypeScript mirror of bpf/meshauth.h: map names and kinds, struct sizes and field offsets,
// constants, and the codecs between those bytes and agent-side values. The codecs read their
// offsets from STRUCTS, and test/datapath-layout.test.ts checks STRUCTS and the constants
// against the BTF of the compiled object and the header, so a drift fails a test instead of
// silently corrupting maps. Integers are little-endian (host order on x86-64 and arm64);
// addresses are network order.
import { MapType } from 'bpf';
import type { IpPrefix } from '../ip-prefix.js';

export const FAMILY = { ipv4: 4, ipv6: 6 } as const;
export const IPCACHE_PREFIX_BASE = 32;
/** Slots of the gate's per-CPU memo of ipcache answers (see bpf/meshauth.h). */
export const IPCACHE_MEMO_SLOTS = 256;

export const DIRECTION = { egress: 0, ingress: 1 } as const;
export type Direction = keyof typeof DIRECTION;

export const AUTH_TYPE = { none: 0, mtls: 1 } as const;
export const DEFAULT_MODE = { require: 0, allow: 1 } as const;
export type DefaultMode = keyof typeof DEFAULT_MODE;
export const DEFAULT_SIGNAL_INTERVAL_NS = 250_000_000n;

export const REASON = { noEntry: 1, expired: 2 } as const;

/** Identities above this one are reserved (bpf/meshauth.h); the agent numbers workloads from 1. */
export const RESERVED_IDENTITY_BASE = 0xffff_ff00;
/**
 * Peers that are not workloads. `service` marks a Service range: the gate judges the real peer it
 * finds in conntrack (or, for the first packet to a VIP, leaves it to the backend's gate).
 */
export const RESERVED_IDENTITY = {
  host: RESERVED_IDENTITY_BASE + 1,
  world: RESERVED_IDENTITY_BASE + 2,
  service: RESERVED_IDENTITY_BASE + 3,
  remoteNode: RESERVED_IDENTITY_BASE + 6,
  kubeApiserver: RESERVED_IDENTITY_BASE + 7,
} as const;
/** In an ipcache entry: no identity (an address of the cluster's pod CIDRs no endpoint holds). */
export const NO_IDENTITY = 0;
/** config_value.transport: how another node's packets must arrive (0, unset, admits none). */
export const TRANSPORT = { unset: 0, none: 1, wireguard: 2, ipsec: 3 } as const;
export type TransportKind = Exclude<keyof typeof TRANSPORT, 'unset'>;
/** meshauth's IPsec reqids, as the gate checks them (the transport's REQID_BASE..REQID_LAST). */
export const IPSEC_REQID_FIRST = 0x6d61_0000;
export const IPSEC_REQID_LAST = 0x6d61_ffff;

/** enum meshauth_counter, in index order. */
export const COUNTER_NAMES = [
  'allowed',
  'notRequired',
  'exempt',
  'droppedNoEntry',
  'droppedExpired',
  'unknownIdentity',
  'droppedMalformed',
  'droppedNotIp',
  'signalsSent',
  'signalsSuppressed',
  'signalsLost',
  'droppedSpoofedSource',
  'droppedUnverifiedArrival',
  'serviceDeferred',
] as const;
export type CounterName = (typeof COUNTER_NAMES)[number];
export type Counters = Record<CounterName, bigint>;

/** Field byte offsets and struct sizes, exactly as in meshauth.h. */
export const STRUCTS = {
  ipcache_key: { size: 24, fields: { prefixlen: 0, family: 4, pad: 5, addr: 8 } },
  ipv6_host_key: { size: 16, fields: { addr: 0 } },
  endpoint_key: { size: 24, fields: { ifindex: 0, family: 4, pad: 5, addr: 8 } },
  ipcache_memo_entry: { size: 40, fields: { generation: 0, addr: 8, family: 24, pad: 25, value: 28, ifindex: 36 } },
  ipcache_value: { size: 8, fields: { identity: 0, node: 4, pad: 6 } },
  policy_key: { size: 12, fields: { local_identity: 0, remote_identity: 4, direction: 8, pad: 9 } },
  policy_value: { size: 4, fields: { auth_type: 0, pad: 1 } },
  auth_key: { size: 12, fields: { local_identity: 0, remote_identity: 4, remote_node: 8, auth_type: 10, pad: 11 } },
  auth_value: { size: 8, fields: { expiry_ns: 0 } },
  signal_event: {
    size: 24,
    fields: {
      local_identity: 0,
      remote_identity: 4,
      remote_node: 8,
      auth_type: 10,
      protocol: 11,
      direction: 12,
      reason: 13,
      family: 14,
      pad: 15,
      ktime_ns: 16,
    },
  },
  config_value: {
    size: 24,
    fields: {
      signal_interval_ns: 0,
      default_mode: 8,
      default_auth_type: 9,
      transport: 10,
      pad: 11,
      local_node: 12,
      pad2: 14,
      wg_ifindex: 16,
      pad3: 20,
    },
  },
} as const;

const F = {
  ipcacheKey: STRUCTS.ipcache_key.fields,
  endpointKey: STRUCTS.endpoint_key.fields,
  ipcacheValue: STRUCTS.ipcache_value.fields,
  policyKey: STRUCTS.policy_key.fields,
  policyValue: STRUCTS.policy_value.fields,
  authKey: STRUCTS.auth_key.fields,
  authValue: STRUCTS.auth_value.fields,
  signal: STRUCTS.signal_event.fields,
  config: STRUCTS.config_value.fields,
};

export type MapName =
  | 'ipcache'
  | 'ipcache_hosts4'
  | 'ipcache_hosts6'
  | 'endpoints'
  | 'ipcache_memo'
  | 'ipcache_gen'
  | 'policy'
  | 'auth'
  | 'ratelimit'
  | 'signals'
  | 'doorbell'
  | 'counters'
  | 'config';

export interface MapSpec {
  type: MapType;
  keySize: number;
  valueSize: number;
  /** 0: one entry per possible CPU. */
  maxEntries: number;
  /** BPF_F_NO_PREALLOC, required by LPM tries. */
  noPrealloc?: boolean;
  /**
   * Holds nothing worth keeping across an upgrade (the agent rewrites it, or it is a cache): a
   * pinned one of another shape is replaced rather than refused.
   */
  replaceable?: boolean;
}

/** The maps the gate references, with the capacities used when the loader creates them. */
export const MAP_SPECS: Record<MapName, MapSpec> = {
  ipcache: { type: MapType.LPM_TRIE, keySize: 24, valueSize: 8, maxEntries: 65_536, noPrealloc: true },
  // 150,000 pod addresses per family and some room: the defaults fit a cluster of 150,000 pods.
  ipcache_hosts4: { type: MapType.HASH, keySize: 4, valueSize: 8, maxEntries: 163_840 },
  ipcache_hosts6: { type: MapType.HASH, keySize: STRUCTS.ipv6_host_key.size, valueSize: 8, maxEntries: 163_840 },
  endpoints: { type: MapType.HASH, keySize: STRUCTS.endpoint_key.size, valueSize: 8, maxEntries: 8_192 },
  ipcache_memo: { type: MapType.PERCPU_ARRAY, keySize: 4, valueSize: STRUCTS.ipcache_memo_entry.size, maxEntries: IPCACHE_MEMO_SLOTS, replaceable: true },
  ipcache_gen: { type: MapType.ARRAY, keySize: 4, valueSize: 8, maxEntries: 1 },
  policy: { type: MapType.HASH, keySize: 12, valueSize: 4, maxEntries: 65_536 },
  auth: { type: MapType.HASH, keySize: 12, valueSize: 8, maxEntries: 524_288 },
  ratelimit: { type: MapType.LRU_HASH, keySize: 12, valueSize: 8, maxEntries: 65_536 },
  signals: { type: MapType.QUEUE, keySize: 0, valueSize: 24, maxEntries: 4_096 },
  doorbell: { type: MapType.PERF_EVENT_ARRAY, keySize: 4, valueSize: 4, maxEntries: 0 },
  counters: { type: MapType.PERCPU_ARRAY, keySize: 4, valueSize: 8, maxEntries: 32 },
  config: { type: MapType.ARRAY, keySize: 4, valueSize: STRUCTS.config_value.size, maxEntries: 1, replaceable: true },
};

export const PROGRAMS = { fromWorkload: 'from_workload', toWorkload: 'to_workload' } as const;

// ---- value types the agent works with ----

export interface IpcacheEntry {
  /** Node-local numeric identity; 0 is reserved. */
  identity: number;
  /** Node id of the host that owns the address. */
  node: number;
}

/** One address of the workload behind a gated interface, and who it is. */
export interface BoundAddress extends IpcacheEntry {
  /** A host address, IPv4 or IPv6 ('10.0.1.5', 'fd00::5'). */
  address: string;
}

export interface PolicyKey {
  localIdentity: number;
  remoteIdentity: number;
  direction: Direction;
}

export interface AuthKey {
  localIdentity: number;
  remoteIdentity: number;
  remoteNode: number;
  /** Defaults to AUTH_TYPE.mtls. */
  authType?: number;
}

export interface DatapathConfig {
  /** Pairs without a policy entry, and addresses not in the ipcache: 'require' (fail closed) or 'allow'. */
  defaultMode: DefaultMode;
  /** The node's auth type, in every auth key the gate looks up (AUTH_TYPE.mtls). */
  defaultAuthType: number;
  /** Per-key signal rate limit, in ns. */
  signalIntervalNs: bigint;
  /** How packets of another node's workloads must arrive; unset: none is admitted. */
  transport: TransportKind | 'unset';
  /** This node's id: the node of the ipcache entries of its own workloads (0: unset). */
  localNode: number;
  /** transport 'wireguard': the ifindex of meshauth's WireGuard device, in the gate's namespace. */
  wireguardIfindex: number;
}

export interface Signal {
  localIdentity: number;
  remoteIdentity: number;
  remoteNode: number;
  authType: number;
  /** IP protocol number (IPv6: the upper-layer header). */
  protocol: number;
  direction: Direction;
  reason: 'noEntry' | 'expired';
  family: 4 | 6;
  /** Monotonic ns when the gate queued the signal (compare with process.hrtime.bigint()). */
  ktimeNs: bigint;
}

// ---- codecs ----

function checkUint(name: string, value: number, bits: 8 | 16 | 32): void {
  if (!Number.isInteger(value) || value < 0 || value >= 2 ** bits) {
    throw new RangeError(`${name} must be an integer in [0, 2^${bits}), got ${value}`);
  }
}

function checkIdentity(name: string, value: number): void {
  checkUint(name, value, 32);
  if (value === 0) throw new RangeError(`${name} 0 is reserved`);
}

export function encodeIpcacheKey(prefix: IpPrefix, out = Buffer.alloc(STRUCTS.ipcache_key.size)): Buffer {
  out.fill(0);
  out.writeUInt32LE(IPCACHE_PREFIX_BASE + prefix.length, F.ipcacheKey.prefixlen);
  out.writeUInt8(prefix.family === 4 ? FAMILY.ipv4 : FAMILY.ipv6, F.ipcacheKey.family);
  prefix.address.copy(out, F.ipcacheKey.addr);
  return out;
}

/** The endpoints key: an address bound to the interface with this ifindex. */
export function encodeEndpointKey(ifindex: number, address: IpPrefix): Buffer {
  checkUint('ifindex', ifindex, 32);
  if (ifindex === 0) throw new RangeError('ifindex 0 names no interface');
  const out = Buffer.alloc(STRUCTS.endpoint_key.size);
  out.writeUInt32LE(ifindex, F.endpointKey.ifindex);
  out.writeUInt8(address.family === 4 ? FAMILY.ipv4 : FAMILY.ipv6, F.endpointKey.family);
  address.address.copy(out, F.endpointKey.addr);
  return out;
}

/** The ifindex of an endpoints key. */
export function endpointKeyIfindex(key: Buffer): number {
  return key.readUInt32LE(F.endpointKey.ifindex);
}

/** The address of an endpoints key, as text. */
export function endpointKeyAddress(key: Buffer): string {
  const family = key.readUInt8(F.endpointKey.family);
  const bytes = key.subarray(F.endpointKey.addr, F.endpointKey.addr + (family === FAMILY.ipv4 ? 4 : 16));
  if (family === FAMILY.ipv4) return [...bytes].join('.');
  const groups = Array.from({ length: 8 }, (_, i) => bytes.readUInt16BE(i * 2).toString(16));
  return new URL(`http://[${groups.join(':')}]/`).hostname.slice(1, -1); // the canonical (RFC 5952) form
}

/** The key of a host entry (/32, /128): the bare address, network byte order. */
export function encodeIpcacheHostKey(prefix: IpPrefix): Buffer {
  return Buffer.from(prefix.address);
}

export function encodeIpcacheValue(entry: IpcacheEntry): Buffer {
  // 0 is NO_IDENTITY here: the gate treats the address as unknown.
  checkUint('identity', entry.identity, 32);
  checkUint('node', entry.node, 16);
  const out = Buffer.alloc(STRUCTS.ipcache_value.size);
  out.writeUInt32LE(entry.identity, F.ipcacheValue.identity);
  out.writeUInt16LE(entry.node, F.ipcacheValue.node);
  return out;
}

export function decodeIpcacheValue(buf: Buffer): IpcacheEntry {
  return { identity: buf.readUInt32LE(F.ipcacheValue.identity), node: buf.readUInt16LE(F.ipcacheValue.node) };
}

export function encodePolicyKey(key: PolicyKey): Buffer {
  checkIdentity('localIdentity', key.localIdentity);
  checkIdentity('remoteIdentity', key.remoteIdentity);
  const direction = DIRECTION[key.direction] as number | undefined;
  if (direction === undefined) throw new RangeError(`direction must be egress or ingress, got ${String(key.direction)}`);
  const out = Buffer.alloc(STRUCTS.policy_key.size);
  out.writeUInt32LE(key.localIdentity, F.policyKey.local_identity);
  out.writeUInt32LE(key.remoteIdentity, F.policyKey.remote_identity);
  out.writeUInt8(direction, F.policyKey.direction);
  return out;
}

export function encodePolicyValue(authType: number): Buffer {
  if (authType !== AUTH_TYPE.none && authType !== AUTH_TYPE.mtls) {
    throw new RangeError(`policy authType must be AUTH_TYPE.none or AUTH_TYPE.mtls, got ${authType}`);
  }
  const out = Buffer.alloc(STRUCTS.policy_value.size);
  out.writeUInt8(authType, F.policyValue.auth_type);
  return out;
}

/** Writes into `out` (reused by hot paths) after validating every field. */
export function encodeAuthKey(key: AuthKey, out = Buffer.alloc(STRUCTS.auth_key.size)): Buffer {
  checkIdentity('localIdentity', key.localIdentity);
  checkIdentity('remoteIdentity', key.remoteIdentity);
  checkUint('remoteNode', key.remoteNode, 16);
  const authType = key.authType ?? AUTH_TYPE.mtls;
  checkUint('authType', authType, 8);
  out.writeUInt32LE(key.localIdentity, F.authKey.local_identity);
  out.writeUInt32LE(key.remoteIdentity, F.authKey.remote_identity);
  out.writeUInt16LE(key.remoteNode, F.authKey.remote_node);
  out.writeUInt8(authType, F.authKey.auth_type);
  out.writeUInt8(0, F.authKey.pad);
  return out;
}

export function decodeAuthKey(buf: Buffer): Required<AuthKey> {
  return {
    localIdentity: buf.readUInt32LE(F.authKey.local_identity),
    remoteIdentity: buf.readUInt32LE(F.authKey.remote_identity),
    remoteNode: buf.readUInt16LE(F.authKey.remote_node),
    authType: buf.readUInt8(F.authKey.auth_type),
  };
}

export function encodeAuthValue(expiryNs: bigint, out = Buffer.alloc(STRUCTS.auth_value.size)): Buffer {
  if (typeof expiryNs !== 'bigint' || expiryNs < 0n || expiryNs >= 2n ** 64n) {
    throw new RangeError(`expiry must be a monotonic time in ns as a u64 bigint, got ${String(expiryNs)}`);
  }
  out.writeBigUInt64LE(expiryNs, F.authValue.expiry_ns);
  return out;
}

export function decodeAuthValue(buf: Buffer): bigint {
  return buf.readBigUInt64LE(F.authValue.expiry_ns);
}

const DIRECTION_BY_VALUE: Direction[] = ['egress', 'ingress'];

export function decodeSignal(buf: Buffer): Signal {
  return {
    localIdentity: buf.readUInt32LE(F.signal.local_identity),
    remoteIdentity: buf.readUInt32LE(F.signal.remote_identity),
    remoteNode: buf.readUInt16LE(F.signal.remote_node),
    authType: buf.readUInt8(F.signal.auth_type),
    protocol: buf.readUInt8(F.signal.protocol),
    direction: DIRECTION_BY_VALUE[buf.readUInt8(F.signal.direction)] ?? 'egress',
    reason: buf.readUInt8(F.signal.reason) === REASON.expired ? 'expired' : 'noEntry',
    family: buf.readUInt8(F.signal.family) === FAMILY.ipv6 ? 6 : 4,
    ktimeNs: buf.readBigUInt64LE(F.signal.ktime_ns),
  };
}

export function encodeConfig(config: DatapathConfig): Buffer {
  const mode = DEFAULT_MODE[config.defaultMode] as number | undefined;
  if (mode === undefined) throw new RangeError(`defaultMode must be require or allow, got ${String(config.defaultMode)}`);
  checkUint('defaultAuthType', config.defaultAuthType, 8);
  const transport = TRANSPORT[config.transport] as number | undefined;
  if (transport === undefined) throw new RangeError(`transport must be none, wireguard, ipsec or unset, got ${String(config.transport)}`);
  checkUint('localNode', config.localNode, 16);
  checkUint('wireguardIfindex', config.wireguardIfindex, 32);
  if (config.signalIntervalNs <= 0n || config.signalIntervalNs >= 2n ** 64n) {
    throw new RangeError('signalIntervalNs must be a positive u64 bigint');
  }
  const out = Buffer.alloc(STRUCTS.config_value.size);
  out.writeBigUInt64LE(config.signalIntervalNs, F.config.signal_interval_ns);
  out.writeUInt8(mode, F.config.default_mode);
  out.writeUInt8(config.defaultAuthType, F.config.default_auth_type);
  out.writeUInt8(transport, F.config.transport);
  out.writeUInt16LE(config.localNode, F.config.local_node);
  out.writeUInt32LE(config.wireguardIfindex, F.config.wg_ifindex);
  return out;
}

const TRANSPORT_BY_VALUE: (TransportKind | 'unset')[] = ['unset', 'none', 'wireguard', 'ipsec'];

/** Reads the config as the gate interprets it (zero fields mean the defaults). */
export function decodeConfig(buf: Buffer): DatapathConfig {
  const interval = buf.readBigUInt64LE(F.config.signal_interval_ns);
  const authType = buf.readUInt8(F.config.default_auth_type);
  return {
    defaultMode: buf.readUInt8(F.config.default_mode) === DEFAULT_MODE.allow ? 'allow' : 'require',
    defaultAuthType: authType === 0 ? AUTH_TYPE.mtls : authType,
    signalIntervalNs: interval === 0n ? DEFAULT_SIGNAL_INTERVAL_NS : interval,
    transport: TRANSPORT_BY_VALUE[buf.readUInt8(F.config.transport)] ?? 'unset',
    localNode: buf.readUInt16LE(F.config.local_node),
    wireguardIfindex: buf.readUInt32LE(F.config.wg_ifindex),
  };
}
