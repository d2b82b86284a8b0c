/**
 * IPsec (kernel XFRM, ESP tunnel mode) transport between nodes, keyed by the node handshake.
 *
 *   const ipsec = await IpsecTransport.open({});           // adopts states of a previous run
 *   const [spi] = await ipsec.allocateSpis(1);             // goes into this node's handshake frame
 *   await ipsec.setPeer({ nodeName, localAddress, remoteAddress, localCidrs, remoteCidrs,
 *                         inSpi: spi, outSpi: peerFrame.ipsecSpis[0], inKey, outKey });
 *   await ipsec.setPeer(sameNodeWithNewSpisAndKeys);       // re-authentication: make-before-break
 *   await ipsec.setPeers(all);                             // the complete set; others removed
 *   await ipsec.removePeer(nodeName);
 *   await ipsec.uninstall();                               // every meshauth state and policy
 *
 * Per peer: two ESP states, rfc4106(gcm(aes)) with a 128-bit ICV, 64-bit sequence numbers and
 * kernel soft/hard lifetimes (time, bytes, packets) as a safety net should the agent stop
 * re-authenticating; and for each same-family pair of (local CIDR, remote CIDR) three policies
 * (out, in, fwd) whose template binds them to the states through the peer's reqid. meshauth owns
 * exactly the states and policies whose reqid lies in REQID_BASE…REQID_LAST: it never lists,
 * changes or removes anything else.
 *
 * Keys and SPIs come from the node handshake: the TLS exporter gives a 20-byte key (AES-128 +
 * 4-byte salt) per direction, each agent allocates the SPI it receives on (allocateSpis) and
 * sends it in its frame, so outSpi is the SPI the peer allocated. Every command goes to
 * `ip -batch -` on stdin: keys never appear on a command line.
 *
 * Make-before-break re-keying (setPeer for an installed peer with new SPIs and keys):
 *   1. the new inbound state is added: the peer may start sending on it at any moment;
 *   2. after switchDelayMs (time for the peer agent to add its own new inbound state), the new
 *      outbound state is added. For the same reqid and addresses the kernel picks the newest
 *      valid outbound state (xfrm_state_find prefers the later add_time, and adding a state
 *      bumps the genid of the older ones so cached bundles are rebuilt), so traffic moves over
 *      at once: verified by the guest test, which counts packets on both SAs;
 *   3. after retireAfterMs, the old states are deleted (the peer's packets in flight on the old
 *      inbound SA still decrypt until then).
 *
 * Routes are not this module's: XFRM policies transform whatever the routing table sends toward
 * the remote pod CIDRs (the CNI routes them to the node), and the outer packet is routed to the
 * remote node address. Without a peer, traffic follows those routes unencrypted; keeping
 * unauthenticated traffic out is the eBPF gate's job. Policies cover pod-to-pod traffic only
 * (node addresses are not in the selectors).
 */
import { randomInt } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { silentLogger, type Logger } from '../../util/logger.js';
import { DatapathError } from '../errors.js';
import { checkDisjointOwners, parseCidr, type Cidr } from './cidrs.js';
import { NetnsExec } from './exec.js';
import { REQID_BASE, REQID_LAST, parseAllSpis, policyDeleteLine, policyUpdateLine, stateAddLine, stateDeleteLine, type Lifetime, type PolicySpec } from './xfrm.js';
import { policyLines, runPhase, type Line } from './ipsec-batch.js';
import { canonicalPolicy, leftoversByReqid, listOwn, removeOwn, type Leftover } from './ipsec-kernel.js';
import { checkedOptions, type IpsecOptions } from './ipsec-options.js';
import { MIN_SPI, peerSpec, policiesOf, sameSa, wipe, type IpsecPeer, type PeerSpec } from './ipsec-peer.js';
import { SaRetirements } from './ipsec-retirements.js';
import type { TransportMetrics, TransportOperation } from './metrics.js';

/** Owner of the batch lines that remove what a previous run left. */
const PREVIOUS_RUN = '(previous run)';

interface InstalledPeer extends PeerSpec {
  reqid: number;
  policies: PolicySpec[];
}

export class IpsecTransport {
  private readonly installed = new Map<string, InstalledPeer>();
  /** What each node's pending or installed configuration claims: checked for conflicts at call time. */
  private readonly claims = new Map<string, { remote: string; remoteCidrs: Cidr[] }>();
  private readonly reservedSpis = new Set<number>();
  private readonly retirements: SaRetirements;
  private readonly busy = new Map<string, Promise<unknown>>();
  private closed = false;

  private constructor(
    private readonly exec: NetnsExec,
    private readonly lifetime: Lifetime,
    private readonly switchDelayMs: number,
    retireAfterMs: number,
    private readonly priority: number,
    private readonly logger: Logger,
    /** States and policies in meshauth's reqid range from a previous run, not yet adopted. */
    private readonly leftovers: Leftover[],
    private readonly metrics: TransportMetrics | undefined,
  ) {
    this.retirements = new SaRetirements(retireAfterMs, (owners, sas) =>
      this.withPeers(owners, async () => {
        const result = await this.exec.ipBatch(sas.map(stateDeleteLine), { force: true });
        // "No such process": the state expired or was removed already; anything else is logged.
        const unexpected = result.stderr.split('\n').filter((line) => line.trim() !== '' && !/No such process|Command failed/.test(line));
        if (unexpected.length > 0) this.logger.warn({ nodes: owners, error: unexpected.join('; ') }, 'could not delete retired IPsec states');
      }),
    );
  }

  /** Checks the options and finds what a previous run left in the kernel (it keeps working). */
  static async open(options: IpsecOptions = {}): Promise<IpsecTransport> {
    const { lifetime, switchDelayMs, retireAfterMs, priority } = checkedOptions(options);
    const exec = new NetnsExec(options.netns);
    const logger = options.logger ?? silentLogger();
    const { states, policies } = await listOwn(exec);
    const leftovers = leftoversByReqid(states, policies);
    if (leftovers.length > 0) logger.info({ peers: leftovers.length, states: states.length, policies: policies.length }, 'found IPsec states of a previous run');
    return new IpsecTransport(exec, lifetime, switchDelayMs, retireAfterMs, priority, logger, leftovers, options.metrics);
  }

  /**
   * Random SPIs (≥ 256, < 2^32) not used by any state in the kernel nor reserved before. They
   * stay reserved until setPeer installs them as an inSpi or releaseSpis() gives them back
   * (a handshake that failed).
   */
  async allocateSpis(count = 1): Promise<number[]> {
    if (!Number.isInteger(count) || count < 1 || count > 1024) throw new DatapathError('allocateSpis: count must be 1-1024');
    const inUse = parseAllSpis(await this.exec.run('ip', ['xfrm', 'state', 'list', 'nokeys']));
    const spis: number[] = [];
    while (spis.length < count) {
      const spi = randomInt(MIN_SPI, 0x1_0000_0000);
      if (inUse.has(spi) || this.reservedSpis.has(spi) || this.installedSpis().has(spi)) continue;
      this.reservedSpis.add(spi);
      spis.push(spi);
    }
    return spis;
  }

  releaseSpis(spis: readonly number[]): void {
    for (const spi of spis) this.reservedSpis.delete(spi);
  }

  nodeNames(): string[] {
    return [...this.installed.keys()].sort();
  }

  /**
   * Installs a peer, re-keys it make-before-break (new SPIs and keys), or updates its CIDRs.
   * Resolves once traffic uses the new outbound state; the old states go retireAfterMs later.
   */
  async setPeer(peer: IpsecPeer): Promise<void> {
    const spec = peerSpec(peer);
    this.claim([spec]);
    return this.withPeers([spec.nodeName], () => {
      const current = this.installed.get(spec.nodeName);
      const sameSas = current && sameSa(current.inSa, spec.inSa) && sameSa(current.outSa, spec.outSa) && current.inKey.equals(spec.inKey) && current.outKey.equals(spec.outKey);
      return this.measured(!current ? 'add' : sameSas ? 'update' : 'rekey', () => this.apply([spec], [], false));
    });
  }

  /** Makes `peers` the complete set: installs and re-keys them, removes every other peer and
   *  whatever a previous run left. One `ip -batch` per phase for all of them. */
  async setPeers(peers: readonly IpsecPeer[]): Promise<void> {
    const specs = peers.map(peerSpec);
    const names = new Set<string>();
    for (const spec of specs) {
      if (names.has(spec.nodeName)) throw new DatapathError(`IPsec peers: node ${spec.nodeName} listed twice`);
      names.add(spec.nodeName);
    }
    const removals = [...new Set([...this.claims.keys(), ...this.installed.keys()])].filter((name) => !names.has(name));
    this.claim(specs, removals);
    return this.withPeers([...names, ...removals], () => this.measured('sync', () => this.apply(specs, removals, true)));
  }

  /** Removes a node's policies and states (its retiring ones too); false when there were none. */
  async removePeer(nodeName: string): Promise<boolean> {
    if (this.closed) throw new DatapathError('the IPsec transport is closed');
    this.claims.delete(nodeName);
    return this.withPeers([nodeName], async () => {
      if (!this.installed.has(nodeName) && !this.retirements.has(nodeName)) return false;
      await this.measured('remove', () => this.apply([], [nodeName], false));
      return true;
    });
  }

  /** Resolves when no operation is running and every retired state is deleted. */
  async idle(): Promise<void> {
    for (;;) {
      const pending = [...this.busy.values(), ...this.retirements.settling()];
      if (pending.length === 0) return;
      await Promise.allSettled(pending);
    }
  }

  /**
   * Stops the timers and lets go. States and policies stay in the kernel and keep carrying
   * traffic (until their lifetimes end); the next open() adopts them.
   */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.busy.values()]);
    this.retirements.cancelAll();
    for (const peer of this.installed.values()) wipe(peer);
    this.installed.clear();
    this.claims.clear();
  }

  /** Removes every state and policy meshauth owns in this namespace, this run's or not. */
  async uninstall(): Promise<{ states: number; policies: number }> {
    await this.close();
    const removed = await IpsecTransport.uninstallAll({ netns: this.exec.netns });
    this.logger.info(removed, 'IPsec states and policies removed');
    return removed;
  }

  /** The same without an open transport (for `meshauth uninstall`). */
  static async uninstallAll(options: { netns?: string } = {}): Promise<{ states: number; policies: number }> {
    return removeOwn(new NetnsExec(options.netns));
  }

  /** Checks the new specs against every other node's claims, then records them. */
  private claim(specs: readonly PeerSpec[], removals: readonly string[] = []): void {
    if (this.closed) throw new DatapathError('the IPsec transport is closed');
    const next = new Map(this.claims);
    for (const name of removals) next.delete(name);
    for (const spec of specs) next.set(spec.nodeName, { remote: spec.remote, remoteCidrs: spec.remoteCidrs });
    const byAddress = new Map<string, string>();
    for (const [name, claim] of next) {
      const other = byAddress.get(claim.remote);
      if (other !== undefined) throw new DatapathError(`IPsec peers ${other} and ${name} have the same address ${claim.remote}`);
      byAddress.set(claim.remote, name);
    }
    checkDisjointOwners([...next].map(([owner, claim]) => ({ owner, cidrs: claim.remoteCidrs })), 'IPsec remote CIDRs');
    for (const spec of specs) {
      const current = this.installed.get(spec.nodeName);
      const unchanged = current !== undefined && sameSa(current.inSa, spec.inSa) && current.inKey.equals(spec.inKey);
      if (!unchanged && !this.reservedSpis.has(spec.inSa.spi)) {
        throw new DatapathError(`IPsec peer ${spec.nodeName}: inSpi ${spec.inSa.spi} was not allocated by allocateSpis()`);
      }
    }
    this.claims.clear();
    for (const [name, claim] of next) this.claims.set(name, claim);
  }

  private measured<T>(operation: TransportOperation, change: () => Promise<T>): Promise<T> {
    return this.metrics ? this.metrics.observe('ipsec', operation, change, () => this.installed.size) : change();
  }

  /** Runs `operation` after every earlier operation on any of these peers. */
  private withPeers<T>(names: readonly string[], operation: () => Promise<T>): Promise<T> {
    const earlier = names.map((name) => this.busy.get(name)).filter((p): p is Promise<unknown> => p !== undefined);
    const run = Promise.allSettled(earlier).then(operation);
    const settled = run.catch(() => undefined);
    for (const name of names) this.busy.set(name, settled);
    void settled.then(() => {
      for (const name of names) if (this.busy.get(name) === settled) this.busy.delete(name);
    });
    return run;
  }

  private async apply(specs: readonly PeerSpec[], removals: readonly string[], dropLeftovers: boolean): Promise<void> {
    const failures = new Map<string, string>();
    try {
      await this.program(specs, removals, dropLeftovers, failures);
    } catch (err) {
      for (const name of [...specs.map((s) => s.nodeName), ...removals]) failures.set(name, (err as Error).message);
    }
    // A failed peer keeps what it had: its claim goes back to the installed configuration.
    for (const name of failures.keys()) {
      const current = this.installed.get(name);
      if (current) this.claims.set(name, { remote: current.remote, remoteCidrs: current.remoteCidrs });
      else this.claims.delete(name);
    }
    if (failures.size > 0) {
      const detail = [...failures].map(([name, message]) => `${name}: ${message}`).join('; ');
      throw new DatapathError(`IPsec programming failed for ${detail}`);
    }
  }

  /** Plans and runs the batches; records per-peer failures and commits the rest. */
  private async program(specs: readonly PeerSpec[], removals: readonly string[], dropLeftovers: boolean, failures: Map<string, string>): Promise<void> {
    const phase1: Line[] = [];
    const phase2: Line[] = [];
    const rollback = new Map<string, string[]>();
    const commits = new Map<string, () => void>();
    const rekeyed: string[] = [];
    const reqidsTaken = new Set<number>();
    const adoptedBy = new Map<string, Leftover>();

    for (const spec of specs) {
      const name = spec.nodeName;
      const current = this.installed.get(name);
      const sameKeys = current !== undefined && current.inKey.equals(spec.inKey) && current.outKey.equals(spec.outKey);
      if (current && sameKeys && sameSa(current.inSa, spec.inSa) && sameSa(current.outSa, spec.outSa)) {
        // Same SAs: only the policies may change (new pod CIDRs).
        const policies = policiesOf(spec, current.reqid);
        phase1.push(...policyLines(name, policies, current.policies, this.priority));
        commits.set(name, () => this.installed.set(name, { ...spec, reqid: current.reqid, policies }));
        continue;
      }
      if (current && (current.inSa.spi === spec.inSa.spi || current.outSa.spi === spec.outSa.spi)) {
        failures.set(name, 'a re-key needs new SPIs in both directions (an SPI never carries a second key)');
        continue;
      }
      const adopted = current ? undefined : this.adoptLeftover(spec);
      if (adopted) adoptedBy.set(name, adopted);
      const reqid = current?.reqid ?? adopted?.reqid ?? this.newReqid(reqidsTaken);
      reqidsTaken.add(reqid);
      const policies = policiesOf(spec, reqid);
      const inLine = { owner: name, text: stateAddLine(spec.inSa, reqid, spec.inKey, this.lifetime) };
      const outLine = { owner: name, text: stateAddLine(spec.outSa, reqid, spec.outKey, this.lifetime) };
      const previous = current ? { sas: [current.inSa, current.outSa], policies: current.policies } : adopted && adopted.states.length > 0 ? adopted : undefined;
      if (!previous) {
        // New peer: states before policies, so no packet meets a policy without its state.
        phase1.push(inLine, outLine, ...policyLines(name, policies, adopted?.policies ?? [], this.priority));
        rollback.set(name, [...policies.map(policyDeleteLine), stateDeleteLine(spec.inSa), stateDeleteLine(spec.outSa)]);
        commits.set(name, () => this.installed.set(name, { ...spec, reqid, policies }));
      } else {
        // Re-key, or the first key of this run for a peer the previous run programmed (its
        // states still carry traffic): make-before-break either way.
        phase1.push(inLine);
        phase2.push(outLine, ...policyLines(name, policies, previous.policies, this.priority));
        const restore = current ? current.policies.map((p) => policyUpdateLine(p, this.priority)) : [];
        rollback.set(name, [stateDeleteLine(spec.inSa), stateDeleteLine(spec.outSa), ...restore]);
        rekeyed.push(name);
        commits.set(name, () => {
          this.installed.set(name, { ...spec, reqid, policies });
          this.retirements.schedule(name, 'sas' in previous ? previous.sas : previous.states);
          if (current) wipe(current);
        });
      }
    }

    for (const name of removals) {
      const current = this.installed.get(name);
      const sas = [...(current ? [current.inSa, current.outSa] : []), ...this.retirements.sasOf(name)];
      // Policies first: no moment where a policy demands a state that is already gone.
      phase1.push(...(current?.policies ?? []).map((p) => ({ owner: name, text: policyDeleteLine(p) })));
      phase1.push(...sas.map((sa) => ({ owner: name, text: stateDeleteLine(sa) })));
      commits.set(name, () => {
        if (current) wipe(current);
        this.installed.delete(name);
        this.retirements.cancel(name);
      });
    }
    if (dropLeftovers) {
      for (const leftover of this.leftovers.splice(0)) {
        phase1.push(...leftover.policies.map((p) => ({ owner: PREVIOUS_RUN, text: policyDeleteLine(p) })));
        phase1.push(...leftover.states.map((s) => ({ owner: PREVIOUS_RUN, text: stateDeleteLine(s) })));
      }
    }

    await runPhase(this.exec, phase1, failures);
    if (rekeyed.some((name) => !failures.has(name))) {
      await sleep(this.switchDelayMs);
      await runPhase(this.exec, phase2.filter((line) => !failures.has(line.owner)), failures);
    }
    const rollbackLines = [...failures.keys()].flatMap((name) => rollback.get(name) ?? []);
    if (rollbackLines.length > 0) await this.exec.ipBatch(rollbackLines, { force: true });

    for (const [name, adopted] of adoptedBy) if (failures.has(name)) this.leftovers.push(adopted);
    for (const [name, commit] of commits) {
      if (failures.has(name)) continue;
      commit();
      const spec = specs.find((s) => s.nodeName === name);
      if (spec) this.reservedSpis.delete(spec.inSa.spi);
    }
    this.logger.info(
      {
        installed: specs.map((s) => s.nodeName).filter((n) => !failures.has(n) && !rekeyed.includes(n)),
        rekeyed: rekeyed.filter((n) => !failures.has(n)),
        removed: removals.filter((n) => !failures.has(n)),
        failed: [...failures.keys()],
      },
      'IPsec peers programmed',
    );
  }

  /** The previous run's states for this address pair (same reqid), to be replaced. */
  private adoptLeftover(spec: PeerSpec): Leftover | undefined {
    const ends = new Set([spec.local, spec.remote]);
    const index = this.leftovers.findIndex(
      (leftover) => leftover.states.length > 0 && leftover.states.every((s) => ends.has(parseCidr(s.src, 'state').text.split('/')[0]!) && ends.has(parseCidr(s.dst, 'state').text.split('/')[0]!)),
    );
    if (index === -1) return undefined;
    const [adopted] = this.leftovers.splice(index, 1);
    return { ...adopted!, policies: adopted!.policies.map(canonicalPolicy) };
  }

  private newReqid(taken: ReadonlySet<number>): number {
    const used = new Set([...taken, ...[...this.installed.values()].map((p) => p.reqid), ...this.leftovers.map((l) => l.reqid)]);
    for (let reqid = REQID_BASE + 1; reqid <= REQID_LAST; reqid++) if (!used.has(reqid)) return reqid;
    throw new DatapathError('no free IPsec reqid: more than 65535 peers');
  }

  private installedSpis(): Set<number> {
    const spis = new Set<number>();
    for (const peer of this.installed.values()) spis.add(peer.inSa.spi);
    for (const spi of this.retirements.spis()) spis.add(spi);
    return spis;
  }
}
