// Make-before-break leaves a re-keyed peer's old states in place for a while after the switch:
// the peer's packets in flight on the old inbound SA still decrypt. This module deletes them when
// that time is up, in one batch for the retirements that fall due together (a burst of re-keys).
import type { SaId } from './xfrm.js';

interface Retirement {
  owner: string;
  sas: SaId[];
  timer: NodeJS.Timeout;
  done: Promise<void>;
  fire: () => void;
}

export class SaRetirements {
  private readonly pending = new Map<string, Set<Retirement>>();
  private readonly due: Retirement[] = [];

  constructor(
    private readonly afterMs: number,
    /** Deletes the states of the retirements that fell due; owners are their peers' node names. */
    private readonly deleteStates: (owners: string[], sas: SaId[]) => Promise<void>,
  ) {}

  /** Deletes the given states afterMs from now (or sooner: cancel, when the peer goes). */
  schedule(owner: string, sas: SaId[]): void {
    let fire!: () => void;
    const done = new Promise<void>((resolve) => {
      fire = resolve;
    });
    const retirement: Retirement = {
      owner,
      sas,
      done,
      fire,
      timer: setTimeout(() => this.fallDue(retirement), this.afterMs),
    };
    const set = this.pending.get(owner) ?? new Set<Retirement>();
    set.add(retirement);
    this.pending.set(owner, set);
  }

  has(owner: string): boolean {
    return this.pending.has(owner);
  }

  /** The states of this peer still waiting to be deleted. */
  sasOf(owner: string): SaId[] {
    return [...(this.pending.get(owner) ?? [])].flatMap((r) => r.sas);
  }

  /** The SPIs of every state still waiting to be deleted (not free for a new inbound SA). */
  spis(): number[] {
    return [...this.pending.values()].flatMap((set) => [...set].flatMap((r) => r.sas.map((sa) => sa.spi)));
  }

  /** One promise per retirement, resolved once its states are deleted (or it was cancelled). */
  settling(): Promise<void>[] {
    return [...this.pending.values()].flatMap((set) => [...set].map((r) => r.done));
  }

  /** Forgets the peer's retirements: the caller deletes their states with the peer. */
  cancel(owner: string): void {
    for (const retirement of this.pending.get(owner) ?? []) {
      clearTimeout(retirement.timer);
      retirement.fire();
    }
    this.pending.delete(owner);
  }

  /** Forgets every retirement; their states stay in the kernel. */
  cancelAll(): void {
    for (const owner of [...this.pending.keys()]) this.cancel(owner);
  }

  private fallDue(retirement: Retirement): void {
    this.due.push(retirement);
    if (this.due.length > 1) return;
    setImmediate(() => {
      const due = this.due.splice(0);
      const owners = [...new Set(due.map((r) => r.owner))];
      void this.deleteStates(
        owners,
        due.flatMap((r) => r.sas),
      ).finally(() => {
        for (const r of due) {
          this.pending.get(r.owner)?.delete(r);
          if (this.pending.get(r.owner)?.size === 0) this.pending.delete(r.owner);
          r.fire();
        }
      });
    });
  }
}
