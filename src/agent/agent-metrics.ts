import { Counter, Gauge, type Registry } from 'prom-client';
import type { CounterName, Counters } from '../datapath/gate/layout.js';
import type { AuthTrigger, PairState, SignalStatus } from '../auth/types.js';
import type { PeerStatus } from '../control/status.js';

export type PeerState = PeerStatus['state'];

/** Re-authentications of a known pair, by what caused them (PairStatus.trigger values). */
export type ReauthTrigger = Extract<AuthTrigger, 'reauth' | 'rotation' | 'bundle-change' | 'restored'>;

const PAIR_STATES: readonly PairState[] = ['authenticated', 'pending', 'failed'];
const PEER_STATES: readonly PeerState[] = ['up', 'pending', 'failed'];
const SIGNAL_STATUSES: readonly SignalStatus[] = ['handled', 'deduplicated', 'unresolved', 'dropped'];
const REAUTH_TRIGGERS: readonly ReauthTrigger[] = ['reauth', 'rotation', 'bundle-change', 'restored'];

/** The pinned gate maps swept after a restart (see pinned-state.ts). */
export type StaleEntryMap = 'ipcache' | 'policy' | 'interfaces';
const STALE_ENTRY_MAPS: readonly StaleEntryMap[] = ['ipcache', 'policy', 'interfaces'];

/**
 * Where each BPF counter (enum meshauth_counter) is exported. The first eight partition the
 * packets the gate saw by verdict; the last three count the gate's own signal bookkeeping, which
 * are not packets. A Record, so a counter added to the gate fails to compile until it is placed.
 */
const DATAPATH_COUNTERS: Record<CounterName, { metric: 'packets' | 'signals'; label: string }> = {
  allowed: { metric: 'packets', label: 'allowed' },
  notRequired: { metric: 'packets', label: 'not_required' },
  exempt: { metric: 'packets', label: 'exempt' },
  droppedNoEntry: { metric: 'packets', label: 'dropped_no_entry' },
  droppedExpired: { metric: 'packets', label: 'dropped_expired' },
  unknownIdentity: { metric: 'packets', label: 'unknown_identity' },
  droppedMalformed: { metric: 'packets', label: 'dropped_malformed' },
  droppedNotIp: { metric: 'packets', label: 'dropped_not_ip' },
  signalsSent: { metric: 'signals', label: 'sent' },
  signalsSuppressed: { metric: 'signals', label: 'suppressed' },
  signalsLost: { metric: 'signals', label: 'lost' },
};

/** The label value and sample of each counter of one metric; a counter that is missing or not a
 *  non-negative bigint (a reader bug) is left out rather than exported wrong. */
function datapathValues(counters: Counters | undefined, metric: 'packets' | 'signals'): [string, number][] {
  if (!counters) return [];
  const values: [string, number][] = [];
  for (const [name, target] of Object.entries(DATAPATH_COUNTERS) as [CounterName, (typeof DATAPATH_COUNTERS)[CounterName]][]) {
    const value: unknown = counters[name];
    if (target.metric === metric && typeof value === 'bigint' && value >= 0n) values.push([target.label, Number(value)]);
  }
  return values;
}

export interface AgentMetricsOptions {
  /** Reads the gate's per-CPU counters, summed; undefined while no datapath is attached (the
   *  datapath metrics then have no samples). Called at every scrape, so it must be cheap. */
  datapathCounters?: () => Counters | undefined;
  /** Told when datapathCounters throws; that scrape then has no datapath samples. */
  onCollectError?: (err: unknown) => void;
}

/**
 * The agent's own Prometheus metrics: pairs, the auth map, re-authentications, signals, peers,
 * transport rekeys, and the gate's counters. Handshake and identity metrics live in their own
 * classes. Labels are fixed enumerations (never identities, never key material), and every known
 * label value is exported from the start at 0, so rate() and absent() behave from the first scrape.
 */
export class AgentMetrics {
  readonly pairs: Gauge<'state'>;
  readonly authMapEntries: Gauge;
  readonly authMapCapacity: Gauge;
  readonly ungatedEndpoints: Gauge;
  readonly reauths: Counter<'trigger'>;
  readonly signals: Counter<'status'>;
  readonly peers: Gauge<'state'>;
  readonly transportRekeys: Counter;
  readonly staleEntriesRemoved: Counter<'map'>;
  readonly datapathPackets: Counter<'verdict'>;
  readonly datapathSignals: Counter<'result'>;

  constructor(registry: Registry, options: AgentMetricsOptions = {}) {
    const registers = [registry];
    this.pairs = new Gauge({
      name: 'meshauth_auth_pairs',
      help: 'Workload identity pairs known to the agent, by state (authenticated, pending, failed)',
      labelNames: ['state'],
      registers,
    });
    this.authMapEntries = new Gauge({
      name: 'meshauth_auth_map_entries',
      help: 'Entries in the pinned BPF auth map',
      registers,
    });
    this.authMapCapacity = new Gauge({
      name: 'meshauth_auth_map_capacity',
      help: 'Maximum entries of the pinned BPF auth map',
      registers,
    });
    this.ungatedEndpoints = new Gauge({
      name: 'meshauth_gate_ungated_endpoints',
      help: 'Local endpoints whose host-side interface the agent has not found yet: their traffic passes ungated',
      registers,
    });
    this.reauths = new Counter({
      name: 'meshauth_reauth_total',
      help: 'Re-authentications of known pairs, by trigger (reauth before expiry, rotation, bundle-change, restored)',
      labelNames: ['trigger'],
      registers,
    });
    this.signals = new Counter({
      name: 'meshauth_signals_total',
      help: 'Authentication-required signals read from the gate, by what the agent did (handled, deduplicated, unresolved, dropped)',
      labelNames: ['status'],
      registers,
    });
    this.peers = new Gauge({
      name: 'meshauth_peers',
      help: 'Peer nodes by transport state (up, pending, failed)',
      labelNames: ['state'],
      registers,
    });
    this.transportRekeys = new Counter({
      name: 'meshauth_transport_rekeys_total',
      help: 'Transport keys replaced after a node re-authentication',
      registers,
    });

    this.staleEntriesRemoved = new Counter({
      name: 'meshauth_gate_stale_entries_removed_total',
      help: 'Pinned gate entries a previous run left for what went while the agent was down, removed after the first complete plan (ipcache, policy, interfaces)',
      labelNames: ['map'],
      registers,
    });

    // Both read the BPF counters at scrape time, each on its own (a read is a few map lookups), so
    // either can be scraped alone. The counters are u64, exported as float64: exact up to 2^53,
    // then rounded, as Prometheus stores every sample anyway.
    const read = (): Counters | undefined => {
      try {
        return options.datapathCounters?.();
      } catch (err) {
        (options.onCollectError ?? (() => undefined))(err);
        return undefined;
      }
    };
    this.datapathPackets = new Counter({
      name: 'meshauth_datapath_packets_total',
      help: 'Packets seen by the eBPF gate, by verdict (read from its per-CPU counters at scrape time)',
      labelNames: ['verdict'],
      registers,
      collect(this: Counter<'verdict'>) {
        this.reset();
        for (const [verdict, value] of datapathValues(read(), 'packets')) this.inc({ verdict }, value);
      },
    });
    this.datapathSignals = new Counter({
      name: 'meshauth_datapath_signals_total',
      help: 'Authentication-required signals in the gate: sent to the agent, suppressed by the per-pair rate limit, lost to a full queue',
      labelNames: ['result'],
      registers,
      collect(this: Counter<'result'>) {
        this.reset();
        for (const [result, value] of datapathValues(read(), 'signals')) this.inc({ result }, value);
      },
    });

    for (const state of PAIR_STATES) this.pairs.set({ state }, 0);
    for (const state of PEER_STATES) this.peers.set({ state }, 0);
    for (const status of SIGNAL_STATUSES) this.signals.inc({ status }, 0);
    for (const trigger of REAUTH_TRIGGERS) this.reauths.inc({ trigger }, 0);
    for (const map of STALE_ENTRY_MAPS) this.staleEntriesRemoved.inc({ map }, 0);
  }

  /** Sets the pair gauge for every state; a state not given has no pairs. */
  setPairs(counts: Partial<Record<PairState, number>>): void {
    for (const state of PAIR_STATES) this.pairs.set({ state }, counts[state] ?? 0);
  }

  /** Sets the peer gauge for every state; a state not given has no peers. */
  setPeers(counts: Partial<Record<PeerState, number>>): void {
    for (const state of PEER_STATES) this.peers.set({ state }, counts[state] ?? 0);
  }

  setAuthMap(entries: number, capacity: number): void {
    this.authMapEntries.set(entries);
    this.authMapCapacity.set(capacity);
  }

  setUngatedEndpoints(count: number): void {
    this.ungatedEndpoints.set(count);
  }

  reauth(trigger: ReauthTrigger): void {
    this.reauths.inc({ trigger });
  }

  signal(status: SignalStatus, count = 1): void {
    this.signals.inc({ status }, count);
  }

  transportRekey(): void {
    this.transportRekeys.inc();
  }

  staleEntries(map: StaleEntryMap, count: number): void {
    this.staleEntriesRemoved.inc({ map }, count);
  }
}
