// Where two maps differ (changed-block tracking between snapshots). Two maps that share history —
// a snapshot and its volume, two snapshots, a clone and its origin — share every map node nothing
// has written under since (map-tree.ts copies a node only on the first write beneath it), so the
// diff walks both trees together and skips any subtree whose node id is the same on both sides:
// its cost grows with the nodes written since, not with the volume's size.
//
// Nodes are compared by their non-zero entries (NodeStore.entriesOf: as stored, ascending index),
// merged like two sorted lists: a changed leaf of a big, sparsely written volume holds a few
// entries, and scanning 256 of them per leaf would cost more than the change itself.
//
// Within a leaf, equal entries are equal bytes (a slot is immutable while referenced); a hole and
// ZERO_CHUNK both read as zeroes. Different slots may still hold equal bytes (dedup gave them
// different domains, or a write put the same bytes back): those are reported, as "may differ".
//
// Synchronous, like map-tree.ts: a map changes between two awaits, never during a diff.
import { FANOUT, ZERO_CHUNK } from './map-node.js';
import type { MetaStore } from './meta-store.js';
import type { RootRecord } from './volume-records.js';

const POW: number[] = [];
for (let l = 0; l <= 8; l++) POW.push(FANOUT ** l);

/** One node's non-zero entries: idx[k], val[k] for k < n. */
interface Entries {
  idx: Uint8Array;
  val: Float64Array;
  n: number;
}

/**
 * Calls `fn(first, end)` for each maximal run of chunk indices in [from, to) whose entries differ
 * between maps `a` and `b`, in ascending order. `fn` returns false to stop. Maps of different
 * heights (one was grown since) are compared as if the lower one had the taller one's height.
 *
 * After reading about `budget` nodes the walk pauses at the next subtree boundary past `from`, so
 * a caller can yield the event loop; it returns where it paused (a run reported just before may
 * go on from there), or `to` when it went through.
 */
export function diffMaps(
  meta: MetaStore,
  a: RootRecord,
  b: RootRecord,
  from: number,
  to: number,
  fn: (first: number, end: number) => boolean | void,
  budget = Infinity,
): number {
  const levels = Math.max(a.levels, b.levels);
  to = Math.min(to, POW[levels]);
  if (from >= to || a.root === b.root) return to;
  const d = new MapDiff(meta, from, to, fn, levels, budget);
  d.node(a.root, a.levels - 1, b.root, b.levels - 1, levels - 1, 0);
  d.flush();
  return d.pausedAt ?? to;
}

const entries = (): Entries => ({ idx: new Uint8Array(FANOUT), val: new Float64Array(FANOUT), n: 0 });

class MapDiff {
  private runStart = -1;
  private runEnd = -1;
  /** fn asked to stop, or the budget ran out (then pausedAt is set). */
  private stopped = false;
  pausedAt: number | undefined;
  private reads = 0;
  // Per level, each side's entries: a parent's stay intact while its children are compared.
  private readonly sideA: Entries[] = [];
  private readonly sideB: Entries[] = [];

  constructor(
    private readonly meta: MetaStore,
    private readonly from: number,
    private readonly to: number,
    private readonly fn: (first: number, end: number) => boolean | void,
    levels: number,
    private readonly budget: number,
  ) {
    for (let l = 0; l < levels; l++) {
      this.sideA.push(entries());
      this.sideB.push(entries());
    }
  }

  /**
   * Compares the subtrees `aId` (a node of level `aLevel`) and `bId` at `level`, covering chunks
   * from `base`. A node below `level` is the lower tree's root, standing at child 0 of the
   * levels the taller tree added above it (growLevels puts it there).
   */
  node(aId: number, aLevel: number, bId: number, bLevel: number, level: number, base: number): void {
    const A = this.load(this.sideA[level], aId, aLevel, level);
    const B = this.load(this.sideB[level], bId, bLevel, level);
    const span = POW[level];
    const first = Math.max(0, Math.floor((this.from - base) / span));
    const last = Math.min(FANOUT - 1, Math.floor((this.to - 1 - base) / span));
    const aChild = aLevel < level ? aLevel : level - 1;
    const bChild = bLevel < level ? bLevel : level - 1;
    let i = 0;
    let j = 0;
    while (i < A.n && A.idx[i] < first) i++;
    while (j < B.n && B.idx[j] < first) j++;
    while (!this.stopped) {
      const ia = i < A.n ? A.idx[i] : FANOUT;
      const ib = j < B.n ? B.idx[j] : FANOUT;
      const k = ia < ib ? ia : ib;
      if (k > last) return;
      const x = ia === k ? A.val[i++] : 0;
      const y = ib === k ? B.val[j++] : 0;
      // Node ids are never reused while referenced, so one id is one subtree on both sides.
      if (x === y) continue;
      if (level === 0) {
        if (x > ZERO_CHUNK || y > ZERO_CHUNK) this.mark(base + k);
        continue;
      }
      const at = base + k * span;
      if (this.reads >= this.budget && at > this.from) {
        this.flush(); // every chunk before `at` is compared: its last run is whole so far
        this.pausedAt = at;
        this.stopped = true;
        return;
      }
      this.node(x, aChild, y, bChild, level - 1, at);
    }
  }

  /** The entries of `id` seen at `level`: none for a hole, itself at child 0 when it is lower. */
  private load(e: Entries, id: number, idLevel: number, level: number): Entries {
    if (id === 0) e.n = 0;
    else if (idLevel < level) {
      e.idx[0] = 0;
      e.val[0] = id;
      e.n = 1;
    } else {
      e.n = this.meta.nodes.entriesOf(id, e.idx, e.val);
      this.reads++;
    }
    return e;
  }

  /** Chunk `ci` differs: extends the current run or starts a new one. */
  private mark(ci: number): void {
    if (ci === this.runEnd) {
      this.runEnd++;
      return;
    }
    this.flush();
    if (this.stopped) return;
    this.runStart = ci;
    this.runEnd = ci + 1;
  }

  /** Reports the current run, if any. */
  flush(): void {
    if (this.runStart < 0 || this.stopped) return;
    const first = this.runStart;
    const end = this.runEnd;
    this.runStart = this.runEnd = -1;
    if (this.fn(first, end) === false) this.stopped = true;
  }
}
