// Chunk records: for each stored chunk, its refcount (the leaf entries that point at it), its
// dedup domain and its fingerprint. A chunk is freed when its refcount reaches zero: the record
// goes, its slot returns to the allocator, and the listeners (the dedup index, the shared cache)
// forget it (invariants 1 and 3).
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import type { CommitPart, CommitPipeline, TxnWriter } from './commit-pipeline.js';
import type { Superblock } from './superblock.js';

export interface ChunkRecord {
  refs: number;
  domain: number;
  /** The 32-byte fingerprint is fp[fpOff..fpOff+32): records made by a write share one buffer of keys. */
  fp: Buffer;
  fpOff: number;
}

/** Stored layout: u32 refs, u32 domain, 32-byte fingerprint (all zero when written with dedup off). */
const RECORD_BYTES = 40;

function encode(c: ChunkRecord): Buffer {
  const b = Buffer.allocUnsafe(RECORD_BYTES);
  b.writeUInt32LE(c.refs, 0);
  b.writeUInt32LE(c.domain, 4);
  c.fp.copy(b, 8, c.fpOff, c.fpOff + 32);
  return b;
}

/** `b` must be the caller's own bytes (getBinary returns a copy): the record keeps a view of them. */
function decode(b: Uint8Array): ChunkRecord {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
  return { refs: buf.readUInt32LE(0), domain: buf.readUInt32LE(4), fp: buf, fpOff: 8 };
}

/** Whether `c` is a live chunk's record carrying the key keys[off..off+36) (domain, fingerprint). */
function carriesKey(c: ChunkRecord | undefined, keys: Buffer, off: number): boolean {
  return c !== undefined && c.refs > 0 && c.domain === keys.readUInt32BE(off) && c.fp.compare(keys, off + 4, off + 36, c.fpOff, c.fpOff + 32) === 0;
}

/** Told when a chunk is freed; `rec` is valid only during the call. */
export type ChunkFreedListener = (slot: number, rec: ChunkRecord) => void;

type Taken = Map<number, ChunkRecord | null>; // null: removed

export class ChunkRecords implements CommitPart<Taken> {
  private changes: Taken = new Map();
  private committing: Taken | null = null;
  // Records read from LMDB, kept until the next commit changes LMDB: a write of data already
  // stored reads each candidate's record to check it, then again to add the reference, a whole
  // request's worth in between.
  private readonly recent = new Map<number, ChunkRecord>();
  private readonly listeners: ChunkFreedListener[] = [];
  /**
   * Chunks stored or referenced again by writes so far: background work compares it over time to
   * see writes pause (a write of data already stored adds no chunk, but still needs the disk).
   */
  writeActivity = 0;

  constructor(
    private readonly db: Database<Buffer, number>,
    private readonly sb: Superblock,
    private readonly pipeline: CommitPipeline,
  ) {}

  /** Calls `fn` for every chunk freed from now on, in registration order. */
  onFreed(fn: ChunkFreedListener): void {
    this.listeners.push(fn);
  }

  get(slot: number): ChunkRecord | undefined {
    let v = this.changes.get(slot);
    if (v === undefined && this.committing) v = this.committing.get(slot);
    if (v !== undefined) return v ?? undefined;
    const r = this.recent.get(slot);
    if (r !== undefined) return r;
    const b = this.db.getBinary(slot);
    if (!b) return undefined;
    const c = decode(b);
    if (this.recent.size >= 4096) this.recent.clear();
    this.recent.set(slot, c);
    return c;
  }

  /** Whether slot holds a live chunk with the fingerprint key keys[off..off+36) (domain, fingerprint). */
  hasKey(slot: number, keys: Buffer, off: number): boolean {
    return carriesKey(this.get(slot), keys, off);
  }

  /**
   * hasKey() for a walk over many chunks read once each (the fingerprint index's sweep): read as
   * dec() reads, with no record object and no `recent` entry per chunk.
   */
  holdsKey(slot: number, keys: Buffer, off: number): boolean {
    return carriesKey(this.forRelease(slot), keys, off);
  }

  refCount(slot: number): number {
    return this.get(slot)?.refs ?? 0;
  }

  /**
   * refCount() for a walk over many chunks read once each (a volume's sharing figures): read as
   * dec() reads, with no record object and no `recent` entry per chunk.
   */
  refsOf(slot: number): number {
    return this.forRelease(slot)?.refs ?? 0;
  }

  /**
   * Registers freshly written chunk data with one reference. Its fingerprint is fp[fpOff..+32).
   * (No Buffer per chunk: the records of one write share its buffer of keys, which kept 256 Ki
   * views per GiB written off the GC's hands.)
   */
  add(slot: number, domain: number, fp: Buffer, fpOff: number): void {
    this.changes.set(slot, { refs: 1, domain, fp, fpOff });
    this.writeActivity++;
    this.sb.liveChunks++;
    this.pipeline.changed();
  }

  /**
   * One more reference to a chunk, if it is still live (a dedup candidate may have been freed
   * since it was looked up); false if it is not. One record read, where refCount() then inc()
   * read it twice.
   */
  incIfLive(slot: number): boolean {
    const c = this.get(slot);
    if (!c || c.refs <= 0) return false;
    this.changes.set(slot, { refs: c.refs + 1, domain: c.domain, fp: c.fp, fpOff: c.fpOff });
    this.writeActivity++;
    this.pipeline.changed();
    return true;
  }

  inc(slot: number): void {
    if (!this.incIfLive(slot)) throw new ShoalError('corrupt_metadata', `chunk ${slot} was referenced after it was freed`);
  }

  /**
   * dec()'s (and refsOf()'s) record read: from the overlays as get(), or else from LMDB into one
   * scratch record, valid until the next call, without allocating. (Space reclaim frees millions of chunks that
   * are read once: a Buffer, an object and a `recent` entry each were young garbage, and the
   * delete benchmark ran three times as many scavenges of 5 ms and more as without it.)
   */
  private forRelease(slot: number): ChunkRecord | undefined {
    let v = this.changes.get(slot);
    if (v === undefined && this.committing) v = this.committing.get(slot);
    if (v !== undefined) return v ?? undefined;
    const r = this.recent.get(slot);
    if (r !== undefined) return r;
    // LMDB's shared buffer, overwritten by the next read: copied out at once, byte by byte (lmdb-js
    // sets its `length` to the value's size over a larger array, which Buffer#copy does not take).
    const b = this.db.getBinaryFast(slot);
    if (!b) return undefined;
    const s = this.scratch;
    for (let i = 0; i < RECORD_BYTES; i++) s.fp[i] = b[i];
    s.refs = s.fp.readUInt32LE(0);
    s.domain = s.fp.readUInt32LE(4);
    return s;
  }
  private readonly scratch: ChunkRecord = { refs: 0, domain: 0, fp: Buffer.alloc(RECORD_BYTES), fpOff: 8 };

  /** Drops one reference; at zero the chunk is freed and the listeners told. */
  dec(slot: number): void {
    const c = this.forRelease(slot);
    if (!c || c.refs <= 0) throw new ShoalError('corrupt_metadata', `chunk ${slot} lost more references than it had`);
    this.pipeline.changed();
    if (c.refs > 1) {
      // A record kept in the overlay needs its own bytes, not the scratch record's.
      const fp = c === this.scratch ? Buffer.from(c.fp) : c.fp;
      this.changes.set(slot, { refs: c.refs - 1, domain: c.domain, fp, fpOff: c.fpOff });
      return;
    }
    this.changes.set(slot, null);
    this.sb.liveChunks--;
    for (const fn of this.listeners) fn(slot, c);
  }

  /** Every stored record (fsck: with nothing uncommitted). */
  *all(): Iterable<[number, ChunkRecord]> {
    for (const { key, value } of this.db.getRange({})) yield [key as number, decode(Buffer.from(value as Buffer))];
  }

  // ---------------------------------------------------------------- CommitPart

  take(): Taken | null {
    if (this.changes.size === 0) return null;
    const t = this.changes;
    this.committing = t;
    this.changes = new Map();
    return t;
  }

  write(t: Taken, w: TxnWriter): void {
    for (const [slot, c] of t) {
      if (c === null) w.remove('chunks', this.db, slot);
      else w.put('chunks', this.db, slot, encode(c));
    }
  }

  settle(): void {
    this.committing = null;
    this.recent.clear(); // LMDB changed
  }
}
