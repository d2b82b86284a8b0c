import { readFile, rename, writeFile } from 'node:fs/promises';

// The BPF maps key on small numbers, not on SPIFFE IDs or node names. Those numbers are local to
// this node and must survive an agent restart, because the pinned auth map outlives the agent
// and is restored from: so the allocation is persisted next to the other agent state. Numbers
// are never derived from a hash, since a collision would let one identity pass as another.

interface Persisted {
  identities: Record<string, number>;
  nodes: Record<string, number>;
}

/** 0 means "unknown" in the BPF maps, so allocation starts at 1. */
const FIRST = 1;
const MAX_IDENTITY = 0xffff_ffff;
const MAX_NODE = 0xffff;

/** Names ↔ numbers with O(1) lookups both ways; released numbers are reused. */
class Allocator {
  private readonly byName = new Map<string, number>();
  private readonly byNumber = new Map<number, string>();
  private readonly released: number[] = [];
  private highest = FIRST - 1;
  /** Whether the allocation changed since it was last saved. */
  changed = false;

  constructor(
    private readonly max: number,
    entries: Record<string, number>,
  ) {
    for (const [name, num] of Object.entries(entries)) {
      this.byName.set(name, num);
      this.byNumber.set(num, name);
      this.highest = Math.max(this.highest, num);
    }
  }

  number(name: string): number {
    const existing = this.byName.get(name);
    if (existing !== undefined) return existing;
    const num = this.released.pop() ?? ++this.highest;
    if (num > this.max) throw new Error(`no free number left (max ${this.max})`);
    this.byName.set(name, num);
    this.byNumber.set(num, name);
    this.changed = true;
    return num;
  }

  name(num: number): string | undefined {
    return this.byNumber.get(num);
  }

  release(name: string): void {
    const num = this.byName.get(name);
    if (num === undefined) return;
    this.byName.delete(name);
    this.byNumber.delete(num);
    this.released.push(num);
    this.changed = true;
  }

  names(): string[] {
    return [...this.byName.keys()];
  }

  toJSON(): Record<string, number> {
    return Object.fromEntries(this.byName);
  }
}

export class NumericIds {
  private saving: Promise<void> = Promise.resolve();

  private constructor(
    private readonly path: string | undefined,
    private readonly identities: Allocator,
    private readonly nodes: Allocator,
  ) {}

  /** Loads the allocation from path (a missing file is an empty allocation). */
  static async load(path?: string): Promise<NumericIds> {
    let persisted: Persisted = { identities: {}, nodes: {} };
    if (path) {
      try {
        persisted = JSON.parse(await readFile(path, 'utf8')) as Persisted;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw new Error(`cannot read ${path}: ${(err as Error).message}`);
      }
    }
    return new NumericIds(path, new Allocator(MAX_IDENTITY, persisted.identities), new Allocator(MAX_NODE, persisted.nodes));
  }

  /** The number of a SPIFFE ID, allocated on first use. */
  identity(spiffeId: string): number {
    return this.identities.number(spiffeId);
  }

  node(name: string): number {
    return this.nodes.number(name);
  }

  identityName(num: number): string | undefined {
    return this.identities.name(num);
  }

  nodeName(num: number): string | undefined {
    return this.nodes.name(num);
  }

  /** Frees a number; the caller has removed every datapath entry that used it. */
  releaseIdentity(spiffeId: string): void {
    this.identities.release(spiffeId);
  }

  releaseNode(name: string): void {
    this.nodes.release(name);
  }

  /** Every SPIFFE ID that holds a number. */
  identityNames(): string[] {
    return this.identities.names();
  }

  nodeNames(): string[] {
    return this.nodes.names();
  }

  /**
   * Writes the allocation atomically (write + rename), so a crash leaves the old or the new one;
   * only when a number was allocated or released since the last save (at 150,000 endpoints the
   * file is megabytes, and most cluster events allocate nothing).
   */
  async save(): Promise<void> {
    // One write at a time: two overlapping saves would share the temporary file.
    const next = this.saving.then(() => this.write());
    this.saving = next.catch(() => {});
    return next;
  }

  private async write(): Promise<void> {
    if (!this.path || !(this.identities.changed || this.nodes.changed)) return;
    this.identities.changed = false;
    this.nodes.changed = false;
    const data: Persisted = { identities: this.identities.toJSON(), nodes: this.nodes.toJSON() };
    const temporary = `${this.path}.${process.pid}.tmp`;
    try {
      await writeFile(temporary, JSON.stringify(data), { mode: 0o600 });
      await rename(temporary, this.path);
    } catch (err) {
      this.identities.changed = true; // the next save tries again
      throw err;
    }
  }
}
