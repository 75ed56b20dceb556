// Clean map nodes' records as stored (map-node.ts: u8 level, u8, u16 count, count × 7 bytes), kept
// for walks that read many nodes once each (map-diff.ts). A diff of a 1 TiB volume with 1 GiB of
// scattered changes reads ~330,000 leaves of one or two entries: lmdb-js costs 0.5-1 µs a read on
// this machine (most of it the call: one key read over and over costs 0.45 µs), and NodeStore's
// decoded nodes take 2 KiB each. Here a small node takes its record's ~15 bytes in an arena and 16
// bytes of index, so a second diff of the same maps — the REST list, then nbdinfo --map, then the
// copy's own block-status calls — reads them from memory.
//
// The index is an open-addressing table in one Float64Array ([id, offset] pairs): a JS Map of
// 256 Ki entries cost 0.28 µs a lookup here, a third of a diff's time over cached records.
//
// Two generations: when the young one fills, the old one is dropped and the young one becomes old.
// NodeStore forgets a node here whenever it changes (markDirty, remove): what is here is what LMDB
// holds.
import { decodeEntries, recordLength } from './map-node.js';

/** Bytes of records, and records, per generation: at most 2 × (8 + 8) MiB. */
const ARENA_BYTES = 8 * 1024 * 1024;
const MAX_RECORDS = 256 * 1024;
const SLOT_BITS = 19; // 512 Ki slots: at most half of them used, forgotten ones included
const SLOTS = 1 << SLOT_BITS;
const EMPTY = 0; // node ids start at 1
const FORGOTTEN = -1; // keeps later records of the same probe sequence reachable

class Generation {
  readonly arena = new Uint8Array(ARENA_BYTES);
  used = 0;
  /** Slots taken, forgotten ones included (they still lengthen probes). */
  taken = 0;
  readonly table = new Float64Array(2 * SLOTS);

  /** The slot holding `id`, or the empty slot where it would go. */
  slot(id: number): number {
    const t = this.table;
    // Fibonacci hashing of the id's two 32-bit halves (ids exceed 2^32 only on very old stores).
    let i = Math.imul((id >>> 0) ^ Math.floor(id / 0x100000000), 0x9e3779b1) >>> (32 - SLOT_BITS);
    for (;;) {
      const k = t[2 * i];
      if (k === id || k === EMPTY) return i;
      i = (i + 1) & (SLOTS - 1);
    }
  }

  clear(): void {
    this.used = 0;
    this.taken = 0;
    this.table.fill(EMPTY);
  }
}

export class NodeRecordCache {
  // Made on first use: a store that never diffs holds no arena.
  private young: Generation | null = null;
  private old: Generation | null = null;

  /** Node `id`'s non-zero entries into idx/val (see decodeEntries), or -1 if it is not here. */
  entriesOf(id: number, idx: Uint8Array, val: Float64Array): number {
    // The fuller generation first: a probe is a cache miss, and most records are in it.
    const y = this.young;
    const o = this.old;
    if (o !== null && y !== null && o.taken > y.taken) return entriesIn(o, id, idx, val) ?? entriesIn(y, id, idx, val) ?? -1;
    return entriesIn(y, id, idx, val) ?? entriesIn(o, id, idx, val) ?? -1;
  }

  /** Keeps a copy of node `id`'s record: `length` bytes of `record` (LMDB's buffer may be longer). */
  add(id: number, record: Uint8Array, length: number): void {
    let g = this.young;
    if (g === null || g.used + length > ARENA_BYTES || g.taken >= MAX_RECORDS) {
      const recycled = this.old;
      this.old = g;
      if (recycled) recycled.clear();
      this.young = g = recycled ?? new Generation();
    }
    const i = g.slot(id);
    if (g.table[2 * i] === EMPTY) g.taken++;
    g.table[2 * i] = id;
    g.table[2 * i + 1] = g.used;
    for (let k = 0; k < length; k++) g.arena[g.used + k] = record[k];
    g.used += length;
  }

  /** Node `id` changed or is gone. */
  forget(id: number): void {
    forgetIn(this.young, id);
    forgetIn(this.old, id);
  }
}

function entriesIn(g: Generation | null, id: number, idx: Uint8Array, val: Float64Array): number | undefined {
  if (g === null) return undefined;
  const i = g.slot(id);
  if (g.table[2 * i] !== id) return undefined;
  const off = g.table[2 * i + 1];
  return decodeEntries(id, g.arena, idx, val, off, off + recordLength(g.arena, off));
}

function forgetIn(g: Generation | null, id: number): void {
  if (g === null) return;
  const i = g.slot(id);
  if (g.table[2 * i] === id) g.table[2 * i] = FORGOTTEN;
}
