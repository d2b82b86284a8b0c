/**
 * The agent's handle on the eBPF datapath gate (bpf/gate.bpf.c).
 *
 *   const dp = await Datapath.open({ pinDir: '/sys/fs/bpf/meshauth' }); // create or reuse the pinned maps
 *   await dp.install({ interfaces: [{ name: 'lxc1a2b' }, { name: 'veth9', netns: 'node1' }] });
 *   dp.bindInterface({ name: 'lxc1a2b' }, { identity: 1001, node: 1 });   // the workload behind it
 *   dp.setIpcache('10.0.1.5/32', { identity: 1001, node: 1 });            // and '::/0', 'fd00::/64', ...
 *   dp.setPolicy({ localIdentity: 1001, remoteIdentity: 2002, direction: 'egress' }, AUTH_TYPE.mtls);
 *   dp.setConfig({ defaultMode: 'require' });                           // pairs without a policy entry
 *   dp.setAuth({ localIdentity: 1001, remoteIdentity: 2002, remoteNode: 2 }, monotonicNowNs() + 3_600_000_000_000n);
 *   dp.batchSetAuth(entries);                                           // bulk restore, one syscall per chunk
 *   dp.onSignal((signal) => authenticate(signal));                      // or: for await (const s of dp.signals())
 *   dp.counters();                                                      // { allowed: 12n, droppedNoEntry: 3n, ... }
 *   dp.close();   // closes fds only: the gate stays attached and the maps pinned (fail closed)
 *   await Datapath.uninstall({ pinDir }); // detach from every interface, unpin everything
 *
 * Semantics (enforced in BPF, so they hold while the agent is down):
 * - the local identity is the one bound to the interface the gate sits on (bindInterface), so a
 *   workload cannot pass as a neighbour by spoofing its address; on an unbound interface it is
 *   the workload address's. The remote address resolves through the ipcache (longest prefix match);
 * - the packet passes while an auth entry {local, remote, remote node, the node's auth type}
 *   exists with an expiry (monotonic ns, the clock of process.hrtime.bigint()) in the future;
 * - otherwise it passes only if no authentication is required: the policy entry for (local,
 *   remote, direction) says AUTH_TYPE.none, or there is none and defaultMode is 'allow';
 *   a dropped pair is signalled (at most once per key per signalIntervalNs);
 * - an address not in the ipcache is an unknown identity: dropped under defaultMode 'require'
 *   (the default, fail closed), passed under 'allow'; counted either way. Add '0.0.0.0/0' and
 *   '::/0' entries for a "world" identity to give the rest of the world a policy;
 * - ARP and IPv6 neighbour discovery always pass; other non-IP frames are dropped.
 *
 * Map updates are in-process syscalls through the `bpf` package (no process per update); signals
 * arrive event-driven (signals.ts, doorbell.ts); install/uninstall use bpftool and tc. All of it
 * needs root (CAP_BPF + CAP_NET_ADMIN). Pins: pin-layout.ts, loader.ts. Layouts: bpf/meshauth.h, layout.ts.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { RawArrayMap, RawMap, RawQueueMap, type MapRef } from 'bpf';
import { openPinnedMap, updateBatch } from './bpf-maps.js';
import { DatapathError } from '../errors.js';
import { parseIpPrefix, type IpPrefix } from '../ip-prefix.js';
import {
  COUNTER_NAMES,
  MAP_SPECS,
  STRUCTS,
  decodeAuthKey,
  decodeAuthValue,
  decodeConfig,
  encodeAuthKey,
  encodeAuthValue,
  encodeConfig,
  encodeIpcacheKey,
  encodeIpcacheHostKey,
  encodeIpcacheValue,
  decodeIpcacheValue,
  encodePolicyKey,
  encodePolicyValue,
  type AuthKey,
  type Counters,
  type DatapathConfig,
  type IpcacheEntry,
  type MapName,
  type PolicyKey,
  type Signal,
} from './layout.js';
import {
  attach,
  defaultObjectPath,
  detach,
  ensureBpffs,
  ensureMaps,
  interfaceExists,
  interfaceIndex,
  loadPrograms,
  pruneGenerations,
  registeredInterfaces,
  uninstall,
  type MapCapacities,
} from './loader.js';
import { DEFAULT_PIN_DIR, PinLayout, describeInterface, validateInterface, type WorkloadInterface } from './pin-layout.js';
import { resolveAttachMode, type AttachMode, type AttachPreference } from './hooks.js';
import { SignalPoller, type SignalListener, type SignalPollerOptions } from './signals.js';

export interface DatapathOptions {
  /** bpffs directory for all pins; default /sys/fs/bpf/meshauth. One per agent. */
  pinDir?: string;
  /** Compiled gate; default bpf/gate.bpf.o of this package. */
  objectPath?: string;
  /** Capacities used only when a map is created (existing maps keep theirs). */
  capacities?: MapCapacities;
  /** How the gate hooks interfaces (hooks.ts); default auto: TCX where the kernel has it, else tc. */
  attach?: AttachPreference;
  signalPolling?: SignalPollerOptions;
}

export interface AuthEntry {
  key: AuthKey;
  /** Monotonic ns (process.hrtime.bigint() clock) after which the gate stops passing traffic. */
  expiryNs: bigint;
}

/** The kernel's CLOCK_MONOTONIC in ns: the clock of auth expiries and signal timestamps. */
export function monotonicNowNs(): bigint {
  return process.hrtime.bigint();
}

const BATCH_CHUNK = 65_536;

/** An unbound interface slot: the gate resolves the local identity from the address. */
const UNBOUND = Buffer.alloc(STRUCTS.ipcache_value.size);

export class Datapath {
  private closed = false;
  /** ifindex of each interface this handle attached the gate to, by describeInterface label. */
  private readonly ifindexes = new Map<string, number>();
  /** The program generation this handle loaded (progs/<generation>), reused by later installs. */
  private generation?: string;
  private attachMode?: Promise<AttachMode>;
  private readonly authKeyScratch = Buffer.alloc(STRUCTS.auth_key.size);
  private readonly authValueScratch = Buffer.alloc(STRUCTS.auth_value.size);
  private readonly counterKeys = COUNTER_NAMES.map((_, index) => {
    const key = Buffer.alloc(4);
    key.writeUInt32LE(index);
    return key;
  });

  private constructor(
    readonly layout: PinLayout,
    private readonly objectPath: string,
    private readonly refs: Record<MapName, MapRef>,
    private readonly ipcache: RawMap,
    private readonly ipcacheHosts4: RawMap,
    private readonly ipcacheHosts6: RawMap,
    private readonly interfaces: RawArrayMap,
    private readonly ipcacheGen: RawArrayMap,
    private readonly policy: RawMap,
    private readonly auth: RawMap,
    private readonly countersMap: RawMap,
    private readonly configMap: RawArrayMap,
    private readonly poller: SignalPoller,
    private readonly attachPreference: AttachPreference,
  ) {}

  /** Ensures bpffs and the pinned maps (creating missing ones, reusing existing ones) and opens them. */
  static async open(options: DatapathOptions = {}): Promise<Datapath> {
    const layout = new PinLayout(options.pinDir ?? DEFAULT_PIN_DIR);
    await ensureBpffs(layout);
    await ensureMaps(layout, options.capacities);
    const refs = {} as Record<MapName, MapRef>;
    try {
      for (const name of Object.keys(MAP_SPECS) as MapName[]) refs[name] = openPinnedMap(layout.mapPath(name), MAP_SPECS[name]);
    } catch (err) {
      for (const ref of Object.values(refs)) ref.close();
      throw err;
    }
    return new Datapath(
      layout,
      options.objectPath ?? defaultObjectPath(),
      refs,
      new RawMap(refs.ipcache),
      new RawMap(refs.ipcache_hosts4),
      new RawMap(refs.ipcache_hosts6),
      new RawArrayMap(refs.interfaces),
      new RawArrayMap(refs.ipcache_gen),
      new RawMap(refs.policy),
      new RawMap(refs.auth),
      new RawMap(refs.counters),
      new RawArrayMap(refs.config),
      new SignalPoller(new RawQueueMap(refs.signals), options.signalPolling, layout.mapPath('doorbell')),
      options.attach ?? 'auto',
    );
  }

  /** Detaches the gate from every interface it was attached to and removes the pin directory. */
  static async uninstall(options: Pick<DatapathOptions, 'pinDir'> = {}): Promise<void> {
    await uninstall(new PinLayout(options.pinDir ?? DEFAULT_PIN_DIR));
  }

  get pinDir(): string {
    return this.layout.root;
  }

  /**
   * Loads the gate and attaches it to the given interfaces and to every interface it was attached
   * to before that still exists (so a restart moves them all to the new programs). Later calls on
   * the same handle attach only the given interfaces, with the programs already loaded: a new pod
   * costs one attach, not a reload and a re-attach of every other. Each hook's program is replaced
   * in one step (hooks.ts): no ungated window.
   * An interface new to the gate starts unbound (see bindInterface); a re-attached one keeps its
   * binding. Idempotent. Throws after trying every interface if any could not be attached.
   */
  async install(request: { interfaces: WorkloadInterface[] }): Promise<void> {
    this.checkOpen();
    request.interfaces.forEach(validateInterface);
    const requested = new Set(request.interfaces.map(describeInterface));
    const registered = await registeredInterfaces(this.layout);
    const known = new Set(registered.map(describeInterface));
    // Another process (`meshauth datapath install`) may have loaded newer programs and pruned ours.
    const reuse = this.generation !== undefined && existsSync(this.generation) ? this.generation : undefined;
    const all = new Map<string, WorkloadInterface>();
    for (const iface of [...(reuse ? [] : registered), ...request.interfaces]) all.set(describeInterface(iface), iface);
    const mode = await this.hookMode();
    const generation = reuse ?? (await loadPrograms(this.layout, this.objectPath));
    const failures: string[] = [];
    for (const [label, iface] of all) {
      try {
        const ifindex = await interfaceIndex(iface);
        // A binding left at this ifindex by a vanished interface must not name the new workload.
        if (ifindex !== undefined && !known.has(label)) this.writeBinding(ifindex, undefined);
        await attach(this.layout, generation, iface, mode);
        if (ifindex !== undefined) this.ifindexes.set(label, ifindex);
      } catch (err) {
        if (!requested.has(label) && !(await interfaceExists(iface))) await detach(this.layout, iface);
        else failures.push(`${label}: ${(err as Error).message}`);
      }
    }
    if (!reuse) {
      await pruneGenerations(this.layout, generation);
      this.generation = generation;
    }
    if (failures.length > 0) throw new DatapathError(`could not attach the gate to ${failures.join('; ')}`);
  }

  /** How this handle hooks interfaces: its attach preference, resolved against the kernel once. */
  hookMode(): Promise<AttachMode> {
    this.attachMode ??= resolveAttachMode(this.attachPreference);
    return this.attachMode;
  }

  /** Removes the gate from these interfaces (a workload went away) and clears their bindings. */
  async detach(interfaces: WorkloadInterface[]): Promise<void> {
    this.checkOpen();
    for (const iface of interfaces) {
      const label = describeInterface(iface);
      const ifindex = this.ifindexes.get(label) ?? (await interfaceIndex(iface));
      await detach(this.layout, iface);
      if (ifindex !== undefined) this.writeBinding(ifindex, undefined);
      this.ifindexes.delete(label);
    }
  }

  /**
   * Binds the local identity of the traffic through an interface this handle attached the gate to
   * (the workload behind it), or unbinds it (undefined: the gate falls back to the workload's
   * address, e.g. when endpoints of different identities share the interface). Returns false when
   * the interface cannot be bound: not attached by this handle, or an ifindex beyond the map.
   */
  bindInterface(iface: WorkloadInterface, entry: IpcacheEntry | undefined): boolean {
    this.checkOpen();
    const ifindex = this.ifindexes.get(describeInterface(iface));
    return ifindex !== undefined && this.writeBinding(ifindex, entry);
  }

  /** The identity bound to an interface this handle attached the gate to, if any. */
  interfaceBinding(iface: WorkloadInterface): IpcacheEntry | undefined {
    this.checkOpen();
    const ifindex = this.ifindexes.get(describeInterface(iface));
    if (ifindex === undefined || ifindex >= this.interfaces.ref.maxEntries) return undefined;
    const entry = decodeIpcacheValue(this.interfaces.get(ifindex));
    return entry.identity === 0 ? undefined : entry;
  }

  private writeBinding(ifindex: number, entry: IpcacheEntry | undefined): boolean {
    if (ifindex >= this.interfaces.ref.maxEntries) return false;
    this.interfaces.set(ifindex, entry ? encodeIpcacheValue(entry) : UNBOUND);
    return true;
  }

  /** Interfaces the gate is registered on (attached, unless the interface vanished since). */
  attachedInterfaces(): Promise<WorkloadInterface[]> {
    return registeredInterfaces(this.layout);
  }

  // ---- ipcache ----

  /**
   * Maps an address or prefix ('10.0.0.0/8', 'fd00::1') to an identity and its node. Host
   * addresses go to a hash map per family, keyed by the bare address, shorter prefixes to the
   * LPM trie; the gate tries the hash first, which is the same longest-prefix match at the cost
   * of one hash lookup for workload addresses.
   */
  setIpcache(prefix: string | IpPrefix, entry: IpcacheEntry): void {
    this.checkOpen();
    const [map, key] = this.ipcacheSlot(toPrefix(prefix));
    map.set(key, encodeIpcacheValue(entry));
    this.invalidateIpcacheMemo();
  }

  deleteIpcache(prefix: string | IpPrefix): boolean {
    this.checkOpen();
    const [map, key] = this.ipcacheSlot(toPrefix(prefix));
    const deleted = map.delete(key);
    if (deleted) this.invalidateIpcacheMemo();
    return deleted;
  }

  /**
   * The gate memoizes ipcache answers per CPU under the current generation: a new one, after the
   * write, voids them all. Random rather than counted, so that two processes writing one pin dir
   * (the agent and `meshauth datapath`) can never both set the same value.
   */
  private invalidateIpcacheMemo(): void {
    this.ipcacheGen.set(0, randomBytes(8));
  }

  private ipcacheSlot(prefix: IpPrefix): [RawMap, Buffer] {
    if (prefix.length < prefix.address.length * 8) return [this.ipcache, encodeIpcacheKey(prefix)];
    return [prefix.family === 4 ? this.ipcacheHosts4 : this.ipcacheHosts6, encodeIpcacheHostKey(prefix)];
  }

  // ---- policy and config ----

  /**
   * Whether the pair needs authentication in that direction: AUTH_TYPE.none (no) or the node's
   * auth type (AUTH_TYPE.mtls, yes). Without an entry, the config's defaultMode decides.
   */
  setPolicy(key: PolicyKey, authType: number): void {
    this.checkOpen();
    this.policy.set(encodePolicyKey(key), encodePolicyValue(authType));
  }

  deletePolicy(key: PolicyKey): boolean {
    this.checkOpen();
    return this.policy.delete(encodePolicyKey(key));
  }

  config(): DatapathConfig {
    this.checkOpen();
    return decodeConfig(this.configMap.get(0));
  }

  setConfig(update: Partial<DatapathConfig>): void {
    this.checkOpen();
    this.configMap.set(0, encodeConfig({ ...this.config(), ...update }));
  }

  // ---- auth ----

  setAuth(key: AuthKey, expiryNs: bigint): void {
    this.checkOpen();
    this.auth.set(encodeAuthKey(key, this.authKeyScratch), encodeAuthValue(expiryNs, this.authValueScratch));
  }

  /** The expiry of the pair's entry, or undefined. */
  getAuth(key: AuthKey): bigint | undefined {
    this.checkOpen();
    const value = this.auth.get(encodeAuthKey(key, this.authKeyScratch));
    return value === undefined ? undefined : decodeAuthValue(value);
  }

  deleteAuth(key: AuthKey): boolean {
    this.checkOpen();
    return this.auth.delete(encodeAuthKey(key, this.authKeyScratch));
  }

  /** Sets many entries with one syscall per chunk (bulk restore after a restart). */
  batchSetAuth(entries: readonly AuthEntry[]): void {
    this.checkOpen();
    const keySize = STRUCTS.auth_key.size;
    const valueSize = STRUCTS.auth_value.size;
    for (let start = 0; start < entries.length; start += BATCH_CHUNK) {
      const count = Math.min(BATCH_CHUNK, entries.length - start);
      // Packed key and value buffers, encoded in place: no allocation per entry.
      const keys = Buffer.allocUnsafe(count * keySize);
      const values = Buffer.allocUnsafe(count * valueSize);
      for (let i = 0; i < count; i++) {
        const entry = entries[start + i]!;
        encodeAuthKey(entry.key, keys.subarray(i * keySize, (i + 1) * keySize));
        encodeAuthValue(entry.expiryNs, values.subarray(i * valueSize, (i + 1) * valueSize));
      }
      updateBatch(this.refs.auth, keys, values, count);
    }
  }

  /** Every auth entry, expired ones included (the gate ignores those; the agent collects them). */
  dumpAuth(): AuthEntry[] {
    this.checkOpen();
    const entries: AuthEntry[] = [];
    for (const batch of this.auth.getBatch(4096)) {
      for (const [key, value] of batch) entries.push({ key: decodeAuthKey(key), expiryNs: decodeAuthValue(value) });
    }
    return entries;
  }

  // ---- after a restart: what the previous run left behind ----
  // The agent writes changes as differences between its plans, and a restarted agent has no
  // previous plan: whatever was removed while it was down (an exemption, an endpoint, a binding)
  // would stay pinned and keep deciding. These sweep a map down to the complete desired state.

  /** Deletes every ipcache entry (host hashes and LPM trie) whose prefix is not in `keep`; returns how many. */
  retainIpcache(keep: Iterable<string | IpPrefix>): number {
    this.checkOpen();
    const kept = new Map<RawMap, Set<string>>([this.ipcache, this.ipcacheHosts4, this.ipcacheHosts6].map((map) => [map, new Set()]));
    for (const prefix of keep) {
      const [map, key] = this.ipcacheSlot(toPrefix(prefix));
      kept.get(map)!.add(key.toString('hex'));
    }
    let deleted = 0;
    for (const [map, keys] of kept) deleted += deleteKeysExcept(map, keys);
    if (deleted > 0) this.invalidateIpcacheMemo();
    return deleted;
  }

  /** Deletes every policy entry whose key is not in `keep`; returns how many. */
  retainPolicy(keep: Iterable<PolicyKey>): number {
    this.checkOpen();
    return deleteKeysExcept(this.policy, new Set([...keep].map((key) => encodePolicyKey(key).toString('hex'))));
  }

  /**
   * Unbinds every interface slot but those of `keep` (interfaces this handle attached the gate
   * to): a slot left bound by a workload that went while the agent was down would otherwise
   * name whoever is behind that ifindex next. Returns how many slots were cleared.
   */
  retainBindings(keep: Iterable<WorkloadInterface>): number {
    this.checkOpen();
    const kept = new Set<number>();
    for (const iface of keep) {
      const ifindex = this.ifindexes.get(describeInterface(iface));
      if (ifindex !== undefined) kept.add(ifindex);
    }
    const stale: number[] = [];
    let index = 0;
    for (const batch of this.interfaces.getBatch(4096)) {
      for (const value of batch) {
        if (!kept.has(index) && !value.equals(UNBOUND)) stale.push(index);
        index++;
      }
    }
    for (const ifindex of stale) this.writeBinding(ifindex, undefined);
    return stale.length;
  }

  // ---- counters and signals ----

  /** Counters summed over CPUs, by verdict (see enum meshauth_counter). */
  counters(): Counters {
    this.checkOpen();
    const result = {} as Counters;
    COUNTER_NAMES.forEach((name, index) => {
      const perCpu = this.countersMap.get(this.counterKeys[index]!);
      let sum = 0n;
      for (let offset = 0; perCpu && offset < perCpu.length; offset += 8) sum += perCpu.readBigUInt64LE(offset);
      result[name] = sum;
    });
    return result;
  }

  /** Calls `listener` for each "authentication required" signal; returns the unsubscribe function. */
  onSignal(listener: SignalListener): () => void {
    this.checkOpen();
    return this.poller.subscribe(listener);
  }

  /** How signals reach onSignal: 'event' (doorbell reader running) or 'polling' (fallback, or nobody subscribed). */
  get signalDelivery(): 'event' | 'polling' {
    return this.poller.mode;
  }

  /** The same signals as an async iterator; `break` unsubscribes. */
  signals(): AsyncIterableIterator<Signal> {
    this.checkOpen();
    return this.poller.iterate();
  }

  /** Stops signal delivery and closes the map fds. The gate keeps enforcing; pins stay. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.poller.stop();
    for (const ref of Object.values(this.refs)) ref.close();
  }

  /** close() and then Datapath.uninstall() for this pin dir. */
  async uninstall(): Promise<void> {
    this.close();
    await uninstall(this.layout);
  }

  private checkOpen(): void {
    if (this.closed) throw new DatapathError('the datapath handle is closed');
  }
}

/** Deletes the keys of `map` whose hex form is not in `keep` (collected first: deleting while
 *  walking with get_next_key could skip entries). */
function deleteKeysExcept(map: RawMap, keep: ReadonlySet<string>): number {
  const stale = [...map.keys()].filter((key) => !keep.has(key.toString('hex')));
  let deleted = 0;
  for (const key of stale) if (map.delete(key)) deleted++;
  return deleted;
}

function toPrefix(prefix: string | IpPrefix): IpPrefix {
  return typeof prefix === 'string' ? parseIpPrefix(prefix) : prefix;
}
