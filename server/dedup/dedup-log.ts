// The dedup log. Inserting each new chunk's fingerprint into the on-disk index at write time (a
// b-tree keyed by random 256-bit values: every commit copies leaf pages all over it) nearly
// doubled the CPU and added a quarter to the disk writes of a unique sequential write. So new
// fingerprints go to a log first, as in ZFS's dedup log: one LMDB record per commit holding all
// of that commit's entries (a sequential append), plus a native hash table in memory that lookups
// consult first. The index takes them later, in slices (dedup-indexer.ts). A crash loses nothing:
// the log records are committed with the chunks they name and reloaded at start.
// (The table is native: see addon/src/fingerprint-table.cc for the measurement.)
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import type { ChunkRecords } from '../meta/chunk-records.js';
import type { CommitPart, CommitPipeline, TxnWriter } from '../meta/commit-pipeline.js';
import type { Superblock } from '../meta/superblock.js';
import { native, type FingerprintTableHandle } from '../native.js';
import { KEY_BYTES } from './fingerprinter.js';

/** A log entry: the 36-byte key, then the slot (48 bits, big-endian). */
const ENTRY = KEY_BYTES + 6;
/** The buffer that gathers a commit's entries starts this big, and shrinks back to it after a burst. */
const INITIAL_BUF = 64 * ENTRY;

interface Taken {
  record: { seq: number; blob: Buffer } | null;
  deletes: number[];
}

/** Where the log's entries go when merged: the index (an entry at blob[off..off+36) names slot). */
export interface LogSink {
  hasCommitted(key: Buffer, slot: number): boolean;
  put(keys: Buffer, off: number, slot: number): void;
}

export class DedupLog implements CommitPart<Taken> {
  private readonly table: FingerprintTableHandle = new (native().FingerprintTable)(); // key -> slot, not in the index yet
  private buf = Buffer.allocUnsafe(INITIAL_BUF); // entries logged since the last commit
  private len = 0; // bytes used in buf
  private readonly records: Array<{ seq: number; blob: Buffer; next: number }> = []; // durable, oldest first; next: byte offset
  private deletes: number[] = []; // records fully merged, to remove in the next commit
  private unmerged = 0; // entries of durable records not yet looked at by a merge
  /** Called after a commit made new entries durable: they can be indexed now. */
  logged: () => void = () => {};

  constructor(
    private readonly db: Database<Buffer, number>,
    private readonly sb: Superblock,
    private readonly pipeline: CommitPipeline,
  ) {}

  /**
   * Reads the log back after a restart. An entry counts only if its chunk is still live with that
   * fingerprint (it may have been freed, and its slot reused, since it was logged) and the index
   * does not already have it (a record merged in part before a crash). Each live entry is also
   * passed to `found` (the filter).
   */
  load(chunks: ChunkRecords, index: LogSink, found: (blob: Buffer, off: number) => void): void {
    for (const { key, value } of this.db.getRange({})) {
      const seq = key as number;
      const blob = Buffer.isBuffer(value) ? Buffer.from(value) : value; // kept for merging: our own copy
      if (!Buffer.isBuffer(blob) || blob.length % ENTRY !== 0) throw new ShoalError('corrupt_metadata', `fingerprint log record ${seq} is damaged`);
      let live = 0;
      for (let off = 0; off < blob.length; off += ENTRY) {
        const slot = blob.readUIntBE(off + KEY_BYTES, 6);
        if (!chunks.hasKey(slot, blob, off) || index.hasCommitted(blob.subarray(off, off + KEY_BYTES), slot)) continue;
        this.table.set(blob, off, slot);
        found(blob, off);
        live++;
      }
      if (live === 0) {
        this.deletes.push(seq); // nothing left in it
        this.pipeline.changed();
        continue;
      }
      this.records.push({ seq, blob, next: 0 });
      this.unmerged += blob.length / ENTRY;
    }
  }

  /** Fingerprints held in memory by the log (pending, durable or not). */
  get size(): number {
    return this.table.size;
  }

  /** Durable entries the index has not taken in yet. */
  get backlog(): number {
    return this.unmerged;
  }

  /** out[i] = the slot of the i-th key in `keys` if the log has it, else -1; returns how many it has. */
  getMany(keys: Buffer, n: number, out: Float64Array): number {
    return this.table.getMany(keys, n, out);
  }

  /**
   * Logs new fingerprints: for i < n, key number which[i] of `keys` names slots[i]. Into the table
   * and the next commit's log record, in one native call per write.
   */
  append(keys: Buffer, which: Uint32Array, slots: Float64Array, n: number): void {
    if (n === 0) return;
    const need = this.len + n * ENTRY;
    if (need > this.buf.length) {
      let size = this.buf.length * 2;
      while (size < need) size *= 2;
      const bigger = Buffer.allocUnsafe(size);
      this.buf.copy(bigger, 0, 0, this.len);
      this.buf = bigger;
    }
    this.len = this.table.logMany(keys, which, slots, n, this.buf, this.len);
    this.pipeline.changed();
  }

  /** Drops the key if the log maps it to `slot` (the chunk was freed); true if it did. */
  forget(key: Buffer, slot: number): boolean {
    return this.table.deleteIf(key, 0, slot);
  }

  /**
   * Moves up to `max` logged fingerprints (oldest first) into the index overlay; the next commit
   * writes them to the index and drops the log records they emptied, in one transaction. Only
   * durable records are merged: one merged before its own commit could lose entries.
   * Returns how many entries it looked at.
   */
  merge(max: number, index: LogSink): number {
    let n = 0;
    while (n < max && this.records.length > 0) {
      const r = this.records[0];
      const blob = r.blob;
      while (r.next < blob.length && n < max) {
        const off = r.next;
        r.next += ENTRY;
        n++;
        this.unmerged--;
        const slot = blob.readUIntBE(off + KEY_BYTES, 6);
        // Gone from the table: freed since, or merged from a newer record.
        if (this.table.deleteIf(blob, off, slot)) index.put(blob, off, slot);
      }
      if (r.next < blob.length) break;
      this.records.shift();
      this.deletes.push(r.seq);
      this.pipeline.changed();
    }
    return n;
  }

  // ---------------------------------------------------------------- CommitPart

  take(): Taken | null {
    if (this.len === 0 && this.deletes.length === 0) return null;
    // This commit's record: the entries logged since the last one. (Some may be freed already:
    // merging and loading both skip an entry the table or the chunk record disowns.)
    let record: Taken['record'] = null;
    if (this.len > 0) {
      this.sb.fpLogNext = (this.sb.fpLogNext ?? 1) + 1;
      // The record gets its own copy of exactly its entries, and the buffer is reused. (A view of
      // the buffer, with a fresh one of the same size for the next commit, kept a burst's grown
      // size for good: every later commit, a FLUSH of one 4 KiB write included, allocated ~3 MiB
      // and its record pinned it until indexed, so V8 ran a full GC every ~10 FLUSHes.)
      record = { seq: this.sb.fpLogNext - 1, blob: Buffer.from(this.buf.subarray(0, this.len)) };
      if (this.buf.length > INITIAL_BUF && this.len * 4 < this.buf.length) this.buf = Buffer.allocUnsafe(Math.max(INITIAL_BUF, this.buf.length / 2));
      this.len = 0;
    }
    const t: Taken = { record, deletes: this.deletes };
    this.deletes = [];
    return t;
  }

  write(t: Taken, w: TxnWriter): void {
    if (t.record) w.put('fingerprint-log', this.db, t.record.seq, t.record.blob);
    for (const seq of t.deletes) w.remove('fingerprint-log', this.db, seq);
  }

  settle(t: Taken, ok: boolean): void {
    if (!ok || !t.record) return;
    this.records.push({ seq: t.record.seq, blob: t.record.blob, next: 0 });
    this.unmerged += t.record.blob.length / ENTRY;
    this.logged();
  }
}
