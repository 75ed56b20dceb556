// Where two maps differ (changed-block tracking between snapshots). Two maps that share history —
// a snapshot and its volume, two snapshots, a clone and its origin — share every map node nothing
// has written under since (map-tree.ts copies a node only on the first write beneath it), so the
// diff walks both trees together and skips any subtree whose node id is the same on both sides:
// its cost grows with the nodes written since, not with the volume's size.
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

const NO_ENTRIES = new Float64Array(FANOUT);

/**
 * Calls `fn(first, end)` for each maximal run of chunk indices in [from, to) whose entries differ
 * between maps `a` and `b`, in ascending order. `fn` returns false to stop. Maps of different
 * heights (one was grown since) are compared as if the lower one had the taller one's height.
 */
export function diffMaps(meta: MetaStore, a: RootRecord, b: RootRecord, from: number, to: number, fn: (first: number, end: number) => boolean | void): void {
  const levels = Math.max(a.levels, b.levels);
  to = Math.min(to, POW[levels]);
  if (from >= to || a.root === b.root) return;
  const d = new MapDiff(meta, from, to, fn);
  d.node(a.root, a.levels - 1, b.root, b.levels - 1, levels - 1, 0);
  d.flush();
}

class MapDiff {
  private runStart = -1;
  private runEnd = -1;
  stopped = false;

  constructor(
    private readonly meta: MetaStore,
    private readonly from: number,
    private readonly to: number,
    private readonly fn: (first: number, end: number) => boolean | void,
  ) {}

  /**
   * Compares the subtrees `aId` (a node of level `aLevel`) and `bId` at `level`, covering chunks
   * from `base`. A node below `level` is the lower tree's root, standing at child 0 of the
   * levels the taller tree added above it (growLevels puts it there).
   */
  node(aId: number, aLevel: number, bId: number, bLevel: number, level: number, base: number): void {
    const ea = this.entries(aId, aLevel, level);
    const eb = this.entries(bId, bLevel, level);
    const childSpan = POW[level];
    const first = Math.max(0, Math.floor((this.from - base) / childSpan));
    const last = Math.min(FANOUT - 1, Math.floor((this.to - 1 - base) / childSpan));
    if (level === 0) {
      for (let i = first; i <= last && !this.stopped; i++) {
        const x = ea[i];
        const y = eb[i];
        if (x !== y && (x > ZERO_CHUNK || y > ZERO_CHUNK)) this.mark(base + i);
      }
      return;
    }
    const aChild = aLevel < level ? aLevel : level - 1;
    const bChild = bLevel < level ? bLevel : level - 1;
    for (let i = first; i <= last && !this.stopped; i++) {
      const x = ea[i];
      const y = eb[i];
      // Node ids are never reused while referenced, so one id is one subtree on both sides.
      if (x !== y) this.node(x, aChild, y, bChild, level - 1, base + i * childSpan);
    }
  }

  /** The entries of `id` seen at `level`: its own, none for a hole, or itself at child 0 when lower. */
  private entries(id: number, idLevel: number, level: number): Float64Array {
    if (id === 0) return NO_ENTRIES;
    if (idLevel === level) return this.meta.nodes.get(id).entries;
    const lifted = new Float64Array(FANOUT);
    lifted[0] = id;
    return lifted;
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
