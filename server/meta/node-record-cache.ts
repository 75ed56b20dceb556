// Clean map nodes' records as stored (map-node.ts: u8 level, u8, u16 count, count × 7 bytes), kept
// for walks that read many nodes once each (map-diff.ts). A diff of a 1 TiB volume with 1 GiB of
// scattered changes reads ~330,000 leaves of one or two entries: lmdb-js costs 0.5-1 µs a read on
// this machine (most of it the call: one key read over and over costs 0.45 µs), and NodeStore's
// decoded nodes take 2 KiB each. Here a small node takes its record's ~15 bytes in an arena and an
// index entry, so a second diff of the same maps — the REST list, then nbdinfo --map, then the
// copy's own block-status calls — reads them from memory.
//
// Two generations: when the young one fills, the old one is dropped and the young one becomes old.
// NodeStore forgets a node here whenever it changes (markDirty, remove): what is here is what LMDB
// holds.
import { decodeEntries, recordLength } from './map-node.js';

/** Bytes of records, and records, per generation: at most ~2 × 16 MiB with the index. */
const ARENA_BYTES = 8 * 1024 * 1024;
const MAX_RECORDS = 256 * 1024;

class Generation {
  readonly arena = new Uint8Array(ARENA_BYTES);
  used = 0;
  readonly index = new Map<number, number>(); // node id -> offset of its record in the arena
}

export class NodeRecordCache {
  // Made on first use: a store that never diffs holds no arena.
  private young: Generation | null = null;
  private old: Generation | null = null;

  /** Node `id`'s non-zero entries into idx/val (see decodeEntries), or -1 if it is not here. */
  entriesOf(id: number, idx: Uint8Array, val: Float64Array): number {
    let g = this.young;
    let off = g?.index.get(id);
    if (off === undefined) off = (g = this.old)?.index.get(id);
    if (off === undefined || g === null) return -1;
    return decodeEntries(id, g.arena, idx, val, off, off + recordLength(g.arena, off));
  }

  /** Keeps a copy of node `id`'s record: `length` bytes of `record` (LMDB's buffer may be longer). */
  add(id: number, record: Uint8Array, length: number): void {
    let g = this.young;
    if (g === null || g.used + length > ARENA_BYTES || g.index.size >= MAX_RECORDS) {
      const recycled = this.old;
      this.old = g;
      if (recycled) {
        recycled.used = 0;
        recycled.index.clear();
        g = recycled;
      } else g = new Generation();
      this.young = g;
    }
    for (let i = 0; i < length; i++) g.arena[g.used + i] = record[i];
    g.index.set(id, g.used);
    g.used += length;
  }

  /** Node `id` changed or is gone. */
  forget(id: number): void {
    this.young?.index.delete(id);
    this.old?.index.delete(id);
  }
}
