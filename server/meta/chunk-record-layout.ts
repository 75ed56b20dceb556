// How chunk records lie in LMDB: one key per chunk slot, or one key per group of consecutive slots,
// their records side by side, as the superblock's chunkRecordGroup says (a store keeps the layout it
// was made with). New stores keep a record per slot. Groups (of 32 from ac854a0, then of 8) made a
// 1 MiB write touch a few keys instead of 512 (the records of its 256 new chunks and of the 256 it
// freed) and gained settled 1 MiB writes ~15%, but cost random writes on several volumes more:
// each record changed at random reads its group on the event loop at the commit (a put of a record
// reads nothing) and rewrites the whole group, and bench:soak lost 10-20% of its IOPS with longer
// stalls (docs/write-path.md, "Records in groups"). Stores made with groups are read and written as
// they are.
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import type { TxnWriter } from './commit-pipeline.js';

/** Stored record: u32 refs, u32 domain, 32-byte fingerprint (all zero when written with dedup off). */
export const RECORD_BYTES = 40;
/** Slots per key a store may group its records by, at most (a group stays within LMDB's page). */
const MAX_GROUP_SLOTS = 64;

/** A record to store: refs > 0; its fingerprint is fp[fpOff..fpOff+32). */
export interface StoredRecord {
  refs: number;
  domain: number;
  fp: Buffer;
  fpOff: number;
}

function encodeInto(c: StoredRecord, b: Buffer, off: number): void {
  b.writeUInt32LE(c.refs, off);
  b.writeUInt32LE(c.domain, off + 4);
  c.fp.copy(b, off + 8, c.fpOff, c.fpOff + 32);
}

export class ChunkRecordLayout {
  /**
   * The group read last, copied (reads of neighbouring slots, as the overwritten chunks of a large
   * write are, share one LMDB read), and its number; -1: none. A random read copies its group here
   * too (one memcpy), into this one buffer, allocating nothing.
   */
  private lastGroup = -1;
  private readonly last: Buffer;
  private readonly groupBytes: number;

  /** `groupSlots`: 1 for a record per key, else slots per group. */
  constructor(
    private readonly db: Database<Buffer, number>,
    readonly groupSlots: number,
  ) {
    if (!Number.isInteger(groupSlots) || groupSlots < 1 || groupSlots > MAX_GROUP_SLOTS) throw new ShoalError('corrupt_metadata', `the superblock's chunk record group (${groupSlots}) is not one this daemon reads`);
    this.groupBytes = groupSlots * RECORD_BYTES;
    this.last = Buffer.alloc(this.groupBytes);
  }

  /**
   * Copies slot's stored record into into[0..RECORD_BYTES); false if there is none. LMDB's shared
   * buffer (valid until the next read) is copied out at once, not with Buffer#copy: lmdb-js sets its
   * `length` to the value's size over a larger array, which Buffer#copy does not take.
   */
  read(slot: number, into: Buffer): boolean {
    if (this.groupSlots === 1) {
      const b = this.db.getBinaryFast(slot);
      if (!b) return false;
      // Byte by byte: no view object per read (releases read millions of records in a row).
      for (let i = 0; i < RECORD_BYTES; i++) into[i] = b[i];
      return true;
    }
    const n = Math.floor(slot / this.groupSlots);
    if (n !== this.lastGroup) {
      this.readGroup(n, this.last);
      this.lastGroup = n;
    }
    const off = (slot % this.groupSlots) * RECORD_BYTES;
    if (this.last.readUInt32LE(off) === 0) return false;
    this.last.copy(into, 0, off, off + RECORD_BYTES);
    return true;
  }

  /** Reads group n into `into`: all zeroes (no record, refcounts 0) where none is stored. */
  private readGroup(n: number, into: Buffer): void {
    const b = this.db.getBinaryFast(n);
    if (b === undefined) return void into.fill(0);
    if (b.length !== this.groupBytes) throw new ShoalError('corrupt_metadata', `chunk record group ${n} is ${b.length} bytes, not ${this.groupBytes}`);
    into.set(b.subarray(0, this.groupBytes));
  }

  /** LMDB changed (a commit settled): the group read last may be out of date. */
  changed(): void {
    this.lastGroup = -1;
  }

  /**
   * Queues a commit's changes (slot -> record, or null: removed) into its transaction. Grouped, each
   * group touched is written whole: as LMDB holds it (commits run one at a time, so that is as the
   * commit before left it) with the changes applied; a group left with no record is removed.
   */
  write(t: Map<number, StoredRecord | null>, w: TxnWriter): void {
    if (this.groupSlots === 1) {
      for (const [slot, c] of t) {
        if (c === null) w.remove('chunks', this.db, slot);
        else {
          const b = Buffer.allocUnsafe(RECORD_BYTES);
          encodeInto(c, b, 0);
          w.put('chunks', this.db, slot, b);
        }
      }
      return;
    }
    const touched = new Map<number, Buffer>();
    for (const [slot, c] of t) {
      const n = Math.floor(slot / this.groupSlots);
      let g = touched.get(n);
      if (g === undefined) {
        g = Buffer.allocUnsafe(this.groupBytes);
        this.readGroup(n, g);
        touched.set(n, g);
      }
      const off = (slot % this.groupSlots) * RECORD_BYTES;
      if (c === null) g.fill(0, off, off + RECORD_BYTES);
      else encodeInto(c, g, off);
    }
    for (const [n, g] of touched) {
      if (this.holdsNone(g)) w.remove('chunks', this.db, n);
      else w.put('chunks', this.db, n, g);
    }
  }

  /** Whether a group holds no record (every refcount zero). */
  private holdsNone(g: Buffer): boolean {
    for (let off = 0; off < this.groupBytes; off += RECORD_BYTES) if (g.readUInt32LE(off) !== 0) return false;
    return true;
  }

  /** Every stored record, in slot order: slot and a copy of its bytes. */
  *all(): Iterable<[number, Buffer]> {
    for (const { key, value } of this.db.getRange({})) {
      const v = value as Buffer;
      if (this.groupSlots === 1) {
        yield [key as number, Buffer.from(v)];
        continue;
      }
      if (v.length !== this.groupBytes) throw new ShoalError('corrupt_metadata', `chunk record group ${String(key)} is ${v.length} bytes, not ${this.groupBytes}`);
      for (let i = 0; i < this.groupSlots; i++) {
        const off = i * RECORD_BYTES;
        if (v.readUInt32LE(off) !== 0) yield [(key as number) * this.groupSlots + i, Buffer.from(v.subarray(off, off + RECORD_BYTES))];
      }
    }
  }
}
