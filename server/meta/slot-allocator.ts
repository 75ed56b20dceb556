// Chunk slots: which are free, and when a freed one may be written again. A freed slot is reused
// only after the commit that frees it is durable (else a crash could find committed metadata
// naming a slot that new bytes overwrote) and after every read that may still be reading it has
// ended. Reads hold a generation (the commit pipeline's); a slot freed at generation g is reused
// once no read holding a generation <= g is running.
import type { Database, Key } from 'lmdb';
import type { CommitPart, CommitPipeline, TxnWriter } from './commit-pipeline.js';
import { SlotStack } from './slot-stack.js';
import type { Superblock } from './superblock.js';

// The durable free list, in the `free-slots` database, as pages rather than a record per slot:
//   ['r', k]        page k of the reusable stack: the slots at stack positions [k*PAGE, (k+1)*PAGE)
//   ['g', id, i]    slots a commit freed (group `id`, part i), not yet moved onto the stack
// Allocation pops from the stack's end and frees wait in their group, so a commit rewrites the
// stack's last page or two and writes one group: where a record per slot put, then removed when
// reused, was ~1,000 of the ~3,400 records of a commit of 512 random 4 KiB overwrites (and as many
// random b-tree updates). Stores made before wrote slot → 1; open() rewrites those as pages.
const PAGE = 512;

type PageKey = ['r', number];
type GroupKey = ['g', number, number];

interface Group {
  id: number;
  /** The generation of the commit that freed them. */
  gen: number;
  slots: number[];
  /** The part (the `i` of its keys) that slots[0] begins: a group half moved before a restart has lost its first parts. */
  base: number;
  /** slots[0 .. next) are on the stack already (a multiple of PAGE until the whole group is). */
  next: number;
}

/** Parts [from, to) of group `id` went onto the stack: their records go with the next commit. */
interface Moved {
  id: number;
  from: number;
  to: number;
}

/**
 * Most slots releaseReusable moves onto the stack per call. A read that held an old generation can
 * leave many commits' groups waiting, and a commit's settle moved them all in its turn: in the delete
 * benchmark (4 GiB freed) one such turn held the event loop 40-52 ms, the longest stall reads on
 * another volume saw (most of it the stack's array growing, see slot-stack.ts). Every read and commit
 * calls it, and alloc() when the stack is empty, so the backlog still goes at thousands of slots a
 * millisecond.
 */
const RELEASE_BUDGET = 4096;

interface Taken {
  gen: number;
  /** Stack pages to write, from their index on. */
  pages: Array<[number, number[]]>;
  /** Stack pages [dropFrom, dropTo) to remove (the stack got shorter). */
  dropFrom: number;
  dropTo: number;
  /** Slots freed since the last commit, written as group `group.id`. */
  group: Group | null;
  /** Parts of groups moved onto the stack since the last commit: their records go. */
  moved: Moved[];
}

function parts(n: number): number {
  return Math.ceil(n / PAGE);
}

export class SlotAllocator implements CommitPart<Taken> {
  /** Slots free and safe to reuse now: a stack, persisted page by page. */
  private readonly reusable = new SlotStack(PAGE);
  /** The lowest stack position changed since the last commit took its pages. */
  private dirtyFrom = 0;
  /** The stack's length when the last commit took its pages (it left parts() of it in LMDB). */
  private persistedLen = 0;
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
  private readonly awaitingReaders: Group[] = [];
  /** Parts of groups moved onto the stack since the last commit. */
  private moved: Moved[] = [];
  /**
   * Slots popped from the stack since the last commit (a write that fails gives its slot back). An
   * array, made a Set only when a failed write asks: a Set add per slot written was ~2% of the CPU
   * of 1 MiB writes, for a question asked only after a failed write.
   */
  private popped: number[] = [];
  /** popped[0 .. poppedIndexed) as a Set, less the slots given back; null until asked. */
  private poppedSet: Set<number> | null = null;
  private poppedIndexed = 0;
  // Reads running, by the generation they hold.
  private readonly active = new Map<number, number>();
  /** False for a store that never writes a slot twice (see ChunkStore.reusesSlots): slots only grow. */
  private reuse = true;
  /** With reuse off: told of a slot whose write failed, so the store can count its space as free. */
  private unused: (slot: number) => void = () => {};

  constructor(
    private readonly db: Database<number[] | number, Key>,
    private readonly sb: Superblock,
    private readonly pipeline: CommitPipeline,
    /** Told when a slot is handed out again: anything cached under it is stale (invariant 1). */
    private readonly reused: (slot: number) => void,
    /**
     * Rewrites a free list of before the pages, running this too in the same transaction (the
     * superblock's new version); false: read it as it is (a check that must change nothing).
     */
    upgrade: false | (() => void),
  ) {
    const legacy: number[] = [];
    const groups: Group[] = [];
    for (const { key, value } of db.getRange({})) {
      if (typeof key === 'number') legacy.push(key);
      else if (Array.isArray(key) && key[0] === 'r') for (const s of value as number[]) this.reusable.push(s);
      else if (Array.isArray(key) && key[0] === 'g') {
        const id = key[1] as number;
        let g = groups.at(-1);
        // Parts go in order, so a group's parts left are a run [base, ...) (see moveParts).
        if (g?.id !== id) groups.push((g = { id, gen: 0, slots: [], base: key[2] as number, next: 0 }));
        for (const s of value as number[]) g.slots.push(s);
      }
    }
    this.persistedLen = this.dirtyFrom = this.reusable.length;
    // Frees a crash (or a stop) left waiting for readers: no reader of before the start is left, so
    // they go onto the stack, and their records with the next commit.
    for (const g of groups) this.moveParts(g, Infinity);
    if (legacy.length === 0) return;
    if (upgrade) this.rewriteLegacy(legacy, upgrade);
    else for (const s of legacy) this.reusable.push(s); // read as it is; the next daemon rewrites it
  }

  /** A store of before the pages: its free list (a record per slot) becomes stack pages, in one transaction. */
  private rewriteLegacy(legacy: number[], alsoInTxn: () => void): void {
    for (const s of legacy) this.reusable.push(s);
    const db = this.db;
    db.transactionSync(() => {
      for (const s of legacy) db.removeSync(s);
      for (let k = 0; k < parts(this.reusable.length); k++) db.putSync(['r', k], this.reusable.page(k));
      for (const m of this.moved) for (let i = m.from; i < m.to; i++) db.removeSync(['g', m.id, i]);
      alsoInTxn();
    });
    this.moved = [];
    this.persistedLen = this.dirtyFrom = this.reusable.length;
  }

  private push(slot: number): void {
    if (this.reusable.length < this.dirtyFrom) this.dirtyFrom = this.reusable.length;
    this.reusable.push(slot);
  }

  /**
   * Moves whole parts of `g`, from g.next on, onto the stack: at least one part, else as many as
   * fit in `max` slots. Always from the front, so the parts a commit has not yet removed are a run
   * to the group's end, which is how a restart finds them (their `base`). Returns the slots moved.
   */
  private moveParts(g: Group, max: number): number {
    const from = g.next;
    const len = g.slots.length;
    const to = max >= len - from ? len : Math.min(len, from + Math.max(PAGE, max - (max % PAGE)));
    const slots = g.slots;
    for (let i = from; i < to; i++) this.push(slots[i]);
    this.moved.push({ id: g.id, from: g.base + from / PAGE, to: g.base + parts(to) });
    g.next = to;
    this.pipeline.changed();
    return to - from;
  }

  /**
   * Stops handing freed slots out again (a store that places each chunk once); before any alloc().
   * `unused` hears of slots whose write failed (they are never referenced: their space is the store's to free).
   */
  neverReuse(unused: (slot: number) => void = () => {}): void {
    this.reuse = false;
    this.unused = unused;
    this.reusable.clear();
  }

  /**
   * A slot for new chunk data: a free one whose free is durable, or a new one. `cached`: the caller
   * puts the slot's new bytes into the cache itself before anything can read them (an insert drops
   * whatever the cache held for the slot), so the reuse is not told.
   */
  alloc(cached = false): number {
    this.pipeline.changed();
    if (this.reusable.length === 0 && this.awaitingReaders.length > 0) this.releaseReusable();
    const s = this.reusable.pop();
    if (s === undefined) return this.sb.nextSlot++;
    if (this.reusable.length < this.dirtyFrom) this.dirtyFrom = this.reusable.length;
    this.popped.push(s);
    if (!cached) this.reused(s);
    return s;
  }

  /**
   * alloc() for the n chunks of one write, lowest first. The stack hands freed slots out last freed
   * first, so the slots of an overwritten range come back in descending order; sorted, they form runs
   * the store writes with one pwritev each, where descending they were n one-chunk writes for the
   * write batcher to sort and join again.
   */
  allocMany(n: number, cached = false): number[] {
    const out = new Array<number>(n);
    for (let i = 0; i < n; i++) out[i] = this.alloc(cached);
    if (n > 1) out.sort((a, b) => a - b);
    return out;
  }

  /** Returns a slot from alloc() that ended up unused (e.g. the write failed). */
  releaseUnused(slot: number): void {
    if (!this.reuse) return this.unused(slot);
    if (this.poppedSince().delete(slot)) {
      // Popped since the last commit, which still has it on the stack: back on, reusable at once.
      this.push(slot);
      return;
    }
    this.free(slot);
  }

  /** The slots popped since the last commit and not given back, as a Set brought up to date. */
  private poppedSince(): Set<number> {
    const set = (this.poppedSet ??= new Set());
    for (; this.poppedIndexed < this.popped.length; this.poppedIndexed++) set.add(this.popped[this.poppedIndexed]);
    return set;
  }

  /** A chunk's slot was freed: reusable once this is committed and older readers are done. */
  free(slot: number): void {
    if (!this.reuse) return;
    this.freed.push(slot);
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

  /**
   * Moves durably-freed slots that no running reader can still be reading to the reusable list,
   * up to RELEASE_BUDGET of them; the next call goes on.
   */
  releaseReusable(): void {
    const waiting = this.awaitingReaders;
    if (waiting.length === 0) return;
    let oldest = Infinity;
    for (const g of this.active.keys()) if (g < oldest) oldest = g;
    // Groups are in commit order, so in generation order: release from the front.
    let k = 0;
    let budget = RELEASE_BUDGET;
    while (k < waiting.length && waiting[k].gen < oldest && budget > 0) {
      const g = waiting[k];
      budget -= this.moveParts(g, budget);
      if (g.next < g.slots.length) break;
      k++;
    }
    if (k > 0) waiting.splice(0, k);
  }

  /** Freed slots whose free is durable but not yet on the stack (tests). */
  get waitingSlots(): number {
    let n = 0;
    for (const g of this.awaitingReaders) n += g.slots.length - g.next;
    return n;
  }

  /** The durable free list (fsck). */
  *allFree(): Iterable<number> {
    for (const { key, value } of this.db.getRange({})) {
      if (typeof key === 'number') yield key;
      else for (const s of value as number[]) yield s;
    }
  }

  // ---------------------------------------------------------------- CommitPart

  take(gen: number): Taken | null {
    const len = this.reusable.length;
    const pages = parts(len);
    // The stack is as the last commit left it if nothing below that length changed and it has that
    // length again. (A pop of the last slot leaves dirtyFrom equal to the new length: that page
    // changed. Testing dirtyFrom against the new length let a commit write a chunk record for a
    // slot its stack page still listed as free.)
    const same = this.dirtyFrom >= this.persistedLen && len === this.persistedLen;
    if (same && this.freed.length === 0 && this.moved.length === 0) return null;
    const t: Taken = { gen, pages: [], dropFrom: pages, dropTo: parts(this.persistedLen), group: null, moved: this.moved };
    if (!same) for (let k = Math.floor(this.dirtyFrom / PAGE); k < pages; k++) t.pages.push([k, this.reusable.page(k)]);
    if (this.freed.length > 0) t.group = { id: (this.sb.freeGroupNext = (this.sb.freeGroupNext ?? 0) + 1), gen, slots: this.freed, base: 0, next: 0 };
    this.persistedLen = this.dirtyFrom = len;
    this.freed = [];
    this.moved = [];
    this.popped = [];
    this.poppedSet = null;
    this.poppedIndexed = 0;
    return t;
  }

  write(t: Taken, w: TxnWriter): void {
    const db = this.db;
    for (const [k, slots] of t.pages) w.put('free-slots', db, ['r', k] satisfies PageKey, slots);
    for (let k = t.dropFrom; k < t.dropTo; k++) w.remove('free-slots', db, ['r', k] satisfies PageKey);
    const g = t.group;
    if (g) for (let i = 0; i < parts(g.slots.length); i++) w.put('free-slots', db, ['g', g.id, i] satisfies GroupKey, g.slots.slice(i * PAGE, (i + 1) * PAGE));
    for (const m of t.moved) for (let i = m.from; i < m.to; i++) w.remove('free-slots', db, ['g', m.id, i] satisfies GroupKey);
  }

  settle(t: Taken, ok: boolean): void {
    if (!ok) return;
    // Frees are durable now; the slots become reusable once older readers are gone.
    // (Each was freed at a generation <= t.gen: the generation only moves on at a commit.)
    if (t.group) this.awaitingReaders.push(t.group);
    this.releaseReusable();
  }
}
