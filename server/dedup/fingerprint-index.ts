// The fingerprint index: dedup key (domain, fingerprint) → slot of a chunk stored with those bytes,
// an LMDB b-tree keyed by random 256-bit values. New fingerprints reach it through the dedup log
// (dedup-log.ts), never at write time. A Bloom filter in front of it answers "not stored" for
// new data without a disk read; it is filled from the index in the background at start.
//
// An entry may be stale: its chunk freed since, its slot perhaps holding other bytes now. A freed
// chunk's entry is not removed then (a random b-tree delete per freed chunk was ~40% of the pages a
// commit of random overwrites wrote, and the commit thread's work for 1 MiB overwrites); every hit
// is checked against the chunk's record instead (DedupIndex.lookup), and the sweep removes stale
// entries in the background, in key order (sweepSlice).
import type { Database } from 'lmdb';
import type { CommitPart, CommitPipeline, TxnWriter } from '../meta/commit-pipeline.js';
import { FingerprintFilter } from './fingerprint-filter.js';
import { KEY_BYTES } from './fingerprinter.js';

type Taken = Map<string, number | null>; // key: latin1 of the 36-byte key; null: removed

export class FingerprintIndex implements CommitPart<Taken> {
  // Entries changed since the last commit (merged from the log, or removed), and the commit's in flight.
  private changes: Taken = new Map();
  private committing: Taken | null = null;
  readonly filter: FingerprintFilter;
  private closed = false;

  constructor(
    private readonly db: Database<number, Buffer>,
    private readonly pipeline: CommitPipeline,
    expectedEntries: number,
  ) {
    this.filter = new FingerprintFilter(expectedEntries * 1.5);
  }

  /** The slot the index gives for the key at keys[off..off+36), or -1. */
  lookup(keys: Buffer, off: number): number {
    // Most new data is not stored yet: the filter says so without touching the disk. First, before
    // the overlays: every key put there came from the dedup log, which added it to the filter (a
    // removal needs no check: a key the filter never had maps nowhere), and a lookup in them built a
    // string per write.
    if (this.filter.ready && !this.filter.mayContainKey(keys, off)) return -1;
    if (this.changes.size > 0 || (this.committing !== null && this.committing.size > 0)) {
      const k = keys.toString('latin1', off, off + KEY_BYTES);
      let v = this.changes.get(k);
      if (v === undefined && this.committing) v = this.committing.get(k);
      if (v !== undefined) return v ?? -1;
    }
    return this.db.get(keys.subarray(off, off + KEY_BYTES)) ?? -1;
  }

  /** Whether the committed index maps `key` to `slot` (loading the log at start). */
  hasCommitted(key: Buffer, slot: number): boolean {
    return this.db.get(key) === slot;
  }

  /** Maps the key at keys[off..off+36) to slot (committed with the next commit). */
  put(keys: Buffer, off: number, slot: number): void {
    this.changes.set(keys.toString('latin1', off, off + KEY_BYTES), slot);
    this.pipeline.changed();
  }

  /** Drops the entry of the key at keys[off..off+36) (committed with the next commit). */
  remove(keys: Buffer, off = 0): void {
    this.changes.set(keys.toString('latin1', off, off + KEY_BYTES), null);
    this.pipeline.changed();
  }

  /** Where the sweep goes on from: the last key it looked at (undefined: the start of the index). */
  private sweepFrom: Buffer | undefined;

  /**
   * Looks at up to `max` committed entries from where the last slice stopped, and removes those
   * `live` disowns (the chunk freed, or its slot holding other bytes). Entries with an uncommitted
   * change are left to it. Stops early once `performance.now()` passes `until` (each entry's check reads
   * a chunk record, a page fault when that part of the records is cold). Returns how many it looked
   * at, and whether it reached the end of the index (the next slice starts over).
   */
  sweepSlice(max: number, live: (key: Buffer, slot: number) => boolean, until = Infinity): { looked: number; wrapped: boolean } {
    let looked = 0;
    let removed = 0;
    let last = this.sweepFrom;
    let cut = false;
    for (const { key, value } of this.db.getRange({ start: this.sweepFrom, limit: max + 1 }) as Iterable<{ key: Buffer; value: number }>) {
      if (this.sweepFrom && key.equals(this.sweepFrom)) continue; // the range start is inclusive: looked at already
      if (looked === max) break;
      // The clock every 16 entries: a check is ~1-20 µs, a clock read ~50 ns.
      if ((looked & 15) === 15 && performance.now() > until) {
        cut = true;
        break;
      }
      looked++;
      last = Buffer.from(key);
      const k = last.toString('latin1');
      if (this.changes.has(k) || this.committing?.has(k)) continue;
      if (!live(last, value)) {
        this.changes.set(k, null);
        removed++;
      }
    }
    if (removed > 0) this.pipeline.changed(removed);
    const wrapped = !cut && looked < max;
    this.sweepFrom = wrapped ? undefined : last;
    return { looked, wrapped };
  }

  /**
   * Fills the filter (not yet ready) from the on-disk index a slice at a time; then it answers
   * lookups. Fingerprints added meanwhile go into it through the dedup log.
   */
  buildFilter(): void {
    const f = this.filter;
    let start: Buffer | undefined;
    const slice = () => {
      if (this.closed) return;
      let n = 0;
      let lastKey: Buffer | undefined;
      for (const key of this.db.getKeys({ start, limit: 20_000 }) as Iterable<Buffer>) {
        if (start && n === 0 && key.equals(start)) continue; // the range start is inclusive
        f.addKey(key, 0);
        lastKey = Buffer.from(key);
        n++;
      }
      if (lastKey && n > 0) {
        start = lastKey;
        setImmediate(slice);
        return;
      }
      f.ready = true;
    };
    setImmediate(slice);
  }

  /** Every committed entry (fsck). */
  /** Committed entries (LMDB's own count: O(1)). */
  storedCount(): number {
    return (this.db.getStats() as { entryCount: number }).entryCount;
  }

  *all(): Iterable<[Buffer, number]> {
    for (const { key, value } of this.db.getRange({})) yield [key as Buffer, value as number];
  }

  close(): void {
    this.closed = true;
  }

  take(): Taken | null {
    if (this.changes.size === 0) return null;
    const t = this.changes;
    this.committing = t;
    this.changes = new Map();
    return t;
  }

  write(t: Taken, w: TxnWriter): void {
    for (const [k, slot] of t) {
      const key = Buffer.from(k, 'latin1');
      if (slot === null) w.remove('fingerprints', this.db, key);
      else w.put('fingerprints', this.db, key, slot);
    }
  }

  settle(): void {
    this.committing = null;
  }
}
