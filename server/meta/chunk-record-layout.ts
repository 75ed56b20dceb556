// How chunk records lie in LMDB: one key per chunk slot, or (stores made since metadata version 4)
// one key per group of GROUP_SLOTS consecutive slots, its records side by side. A 1 MiB write stores
// 256 chunks in consecutive slots and frees the 256 it overwrote: with a record per key a commit put
// and deleted 512 b-tree entries for it (a commit of 1 MiB writes at QD8: 26,368 puts and as many
// deletes, 50-80 ms on LMDB's write thread, plus each put's encoding on the event loop), and each
// freed chunk's record was one b-tree search of its own (~1.3 µs, 11.5% of the event loop).
// Grouped, the same write touches ~64 keys, and reads of neighbouring slots share one group read.
// (docs/write-path.md, "Records in groups".)
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import type { TxnWriter } from './commit-pipeline.js';

/** Stored record: u32 refs, u32 domain, 32-byte fingerprint (all zero when written with dedup off). */
export const RECORD_BYTES = 40;
/**
 * Slots per group in stores that group their records (the superblock says how many: a store keeps
 * the size it was made with). 8 records are 320 bytes, ~12 groups to an LMDB page. Groups of 32
 * (1,280 bytes) gained settled 1 MiB writes no more, and cost random writes on several volumes:
 * each record changed puts and copies its whole group, and bench:soak's longest stalls rose from
 * 33-47 ms to 67-70 ms, its IOPS by 5-14% (docs/write-path.md, "Records in groups").
 */
export const GROUP_SLOTS = 8;

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
   * too (320 bytes in one memcpy), into this one buffer, allocating nothing.
   */
  private lastGroup = -1;
  private lastHeld = false;
  private readonly last: Buffer;
  private readonly groupBytes: number;

  /** `groupSlots`: 1 for a record per key (stores made before version 4), else slots per group (GROUP_SLOTS when made). */
  constructor(
    private readonly db: Database<Buffer, number>,
    readonly groupSlots: number,
  ) {
    if (!Number.isInteger(groupSlots) || groupSlots < 1 || groupSlots > 64) throw new ShoalError('corrupt_metadata', `the superblock's chunk record group (${groupSlots}) is not one this daemon reads`);
    this.groupBytes = groupSlots * RECORD_BYTES;
    this.last = Buffer.alloc(this.groupBytes);
  }

  /**
   * Copies slot's stored record into into[0..RECORD_BYTES); false if there is none. LMDB's shared
   * buffer (valid until the next read) is copied from through subarray(): lmdb-js sets its `length`
   * to the value's size over a larger array, which Buffer#copy does not take.
   */
  read(slot: number, into: Buffer): boolean {
    if (this.groupSlots === 1) {
      const b = this.db.getBinaryFast(slot);
      if (!b) return false;
      into.set(b.subarray(0, RECORD_BYTES));
      return true;
    }
    const n = Math.floor(slot / this.groupSlots);
    if (n !== this.lastGroup) this.readGroup(n, this.last);
    if (!this.lastHeld) return false;
    const off = (slot % this.groupSlots) * RECORD_BYTES;
    if (this.last.readUInt32LE(off) === 0) return false;
    this.last.copy(into, 0, off, off + RECORD_BYTES);
    return true;
  }

  /** Reads group n into `into` (zeroes where none is stored); false if none is. */
  private readGroup(n: number, into: Buffer): boolean {
    const b = this.db.getBinaryFast(n);
    const held = b !== undefined;
    if (held) {
      if (b.length !== this.groupBytes) throw new ShoalError('corrupt_metadata', `chunk record group ${n} is ${b.length} bytes, not ${this.groupBytes}`);
      into.set(b.subarray(0, this.groupBytes));
    } else into.fill(0);
    if (into === this.last) {
      this.lastGroup = n;
      this.lastHeld = held;
    }
    return held;
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
