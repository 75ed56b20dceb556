// Chunk slots: which are free, and when a freed one may be written again. A freed slot is reused
// only after the commit that frees it is durable (else a crash could find committed metadata
// naming a slot that new bytes overwrote) and after every read that may still be reading it has
// ended. Reads hold a generation (the commit pipeline's); a slot freed at generation g is reused
// once no read holding a generation <= g is running.
import type { Database } from 'lmdb';
import type { CommitPart, CommitPipeline, TxnWriter } from './commit-pipeline.js';
import type { Superblock } from './superblock.js';

interface Taken {
  gen: number;
  adds: Set<number>;
  deletes: Set<number>;
  freed: number[];
}

export class SlotAllocator implements CommitPart<Taken> {
  /** Slots free and safe to reuse now. */
  private readonly reusable: number[] = [];
  /**
   * Slots freed since the last commit. (Plain numbers: they all get the generation of the commit
   * that makes them durable. An object per freed slot is young garbage that lives until the
   * commit, and scavenges of 5-17 ms were among the stalls other volumes saw while 8 GiB was deleted.)
   */
  private freed: number[] = [];
  /**
   * Slots whose free is durable, one group per commit, waiting for readers of an older
   * generation to finish. (Grouped: every read calls releaseReusable, which looks at a few
   * groups, not at each of thousands of slots.)
   */
  private readonly awaitingReaders: Array<{ gen: number; slots: number[] }> = [];
  private adds = new Set<number>(); // free-list entries to write
  private deletes = new Set<number>(); // free-list entries to remove (reused)
  // Reads running, by the generation they hold.
  private readonly active = new Map<number, number>();
  /** False for a store that never writes a slot twice (see ChunkStore.reusesSlots): slots only grow. */
  private reuse = true;
  /** With reuse off: told of a slot whose write failed, so the store can count its space as free. */
  private unused: (slot: number) => void = () => {};

  constructor(
    private readonly db: Database<number, number>,
    private readonly sb: Superblock,
    private readonly pipeline: CommitPipeline,
    /** Told when a slot is handed out again: anything cached under it is stale (invariant 1). */
    private readonly reused: (slot: number) => void,
  ) {
    for (const key of db.getKeys()) this.reusable.push(key as number);
  }

  /**
   * Stops handing freed slots out again (a store that places each chunk once); before any alloc().
   * `unused` hears of slots whose write failed (they are never referenced: their space is the store's to free).
   */
  neverReuse(unused: (slot: number) => void = () => {}): void {
    this.reuse = false;
    this.unused = unused;
    this.reusable.length = 0;
  }

  /** A slot for new chunk data: a free one whose free is durable, or a new one. */
  alloc(): number {
    this.pipeline.changed();
    const s = this.reusable.pop();
    if (s === undefined) return this.sb.nextSlot++;
    if (this.adds.has(s)) this.adds.delete(s);
    else this.deletes.add(s);
    this.reused(s);
    return s;
  }

  /** Returns a slot from alloc() that ended up unused (e.g. the write failed). */
  releaseUnused(slot: number): void {
    if (!this.reuse) return this.unused(slot);
    if (this.deletes.delete(slot)) {
      // It came from the durable free list and nothing references it: reusable at once.
      this.reusable.push(slot);
      return;
    }
    this.free(slot);
  }

  /** A chunk's slot was freed: reusable once this is committed and older readers are done. */
  free(slot: number): void {
    if (!this.reuse) return;
    this.freed.push(slot);
    this.adds.add(slot);
    this.pipeline.changed();
  }

  // ---------------------------------------------------------------- readers

  /** A read that may touch chunk slots begins; pass the result to exitRead. */
  enterRead(): number {
    const g = this.pipeline.generation;
    this.active.set(g, (this.active.get(g) ?? 0) + 1);
    return g;
  }

  exitRead(g: number): void {
    const n = (this.active.get(g) ?? 1) - 1;
    if (n <= 0) this.active.delete(g);
    else this.active.set(g, n);
  }

  /** Moves durably-freed slots that no running reader can still be reading to the reusable list. */
  releaseReusable(): void {
    if (this.awaitingReaders.length === 0) return;
    let oldest = Infinity;
    for (const g of this.active.keys()) if (g < oldest) oldest = g;
    // Groups are in commit order, so in generation order: release from the front.
    let k = 0;
    while (k < this.awaitingReaders.length && this.awaitingReaders[k].gen < oldest) {
      for (const slot of this.awaitingReaders[k].slots) this.reusable.push(slot);
      k++;
    }
    if (k > 0) this.awaitingReaders.splice(0, k);
  }

  /** The durable free list (fsck). */
  *allFree(): Iterable<number> {
    for (const k of this.db.getKeys()) yield k as number;
  }

  // ---------------------------------------------------------------- CommitPart

  take(gen: number): Taken | null {
    if (this.adds.size === 0 && this.deletes.size === 0 && this.freed.length === 0) return null;
    const t: Taken = { gen, adds: this.adds, deletes: this.deletes, freed: this.freed };
    this.adds = new Set();
    this.deletes = new Set();
    this.freed = [];
    return t;
  }

  write(t: Taken, w: TxnWriter): void {
    for (const s of t.adds) w.put('free-slots', this.db, s, 1);
    for (const s of t.deletes) w.remove('free-slots', this.db, s);
  }

  settle(t: Taken, ok: boolean): void {
    if (!ok) return;
    // Frees are durable now; the slots become reusable once older readers are gone.
    // (Each was freed at a generation <= t.gen: the generation only moves on at a commit.)
    if (t.freed.length > 0) this.awaitingReaders.push({ gen: t.gen, slots: t.freed });
    this.releaseReusable();
  }
}
