// Chunk records: for each stored chunk, its refcount (the leaf entries that point at it), its
// dedup domain and its fingerprint. A chunk is freed when its refcount reaches zero: the record
// goes, its slot returns to the allocator, and the listeners (the dedup index, the shared cache)
// forget it (invariants 1 and 3).
import type { Database } from 'lmdb';
import { ShoalError } from '../errors.js';
import type { CommitPart, CommitPipeline, TxnWriter } from './commit-pipeline.js';
import { ChunkRecordLayout, RECORD_BYTES } from './chunk-record-layout.js';
import type { Superblock } from './superblock.js';

export interface ChunkRecord {
  refs: number;
  domain: number;
  /** The 32-byte fingerprint is fp[fpOff..fpOff+32): records made by a write share one buffer of keys. */
  fp: Buffer;
  fpOff: number;
}

/** Blind references folded into records per turn (see foldSlice), at most this long. */
const FOLD_SLICE_MS = 2;

/** `b` must be the caller's own bytes: the record keeps a view of them. */
function decode(b: Buffer): ChunkRecord {
  return { refs: b.readUInt32LE(0), domain: b.readUInt32LE(4), fp: b, fpOff: 8 };
}

/** `c` with `d` more references (a new record: the ones in the overlays and in `recent` are not changed in place). */
function plusRefs(c: ChunkRecord, d: number): ChunkRecord {
  return { refs: c.refs + d, domain: c.domain, fp: c.fp, fpOff: c.fpOff };
}

/** Whether `c` is a live chunk's record carrying the key keys[off..off+36) (domain, fingerprint). */
function carriesKey(c: ChunkRecord | undefined, keys: Buffer, off: number): boolean {
  return c !== undefined && c.refs > 0 && c.domain === keys.readUInt32BE(off) && c.fp.compare(keys, off + 4, off + 36, c.fpOff, c.fpOff + 32) === 0;
}

/** Told when a chunk is freed; `rec` is valid only during the call. */
export type ChunkFreedListener = (slot: number, rec: ChunkRecord) => void;

type Taken = Map<number, ChunkRecord | null>; // null: removed

export class ChunkRecords implements CommitPart<Taken> {
  private changes = new Map<number, ChunkRecord | null>();
  /**
   * References added by inc() to chunks whose records were not in `changes`: slot -> how many. The
   * record is read when something needs it (a release, a lookup: fold()) or else when a commit takes
   * the changes (then LMDB holds what the commit before left, and the commit only whole records). A
   * write to a clone copies the shared leaf it lands in, one reference for each of its 256 chunks:
   * reading each record there cost 0.5-0.7 ms a leaf in the write's turn, and the writes that start
   * on a fresh clone copy a leaf each (64 in one turn at bench:soak's start). docs/write-path.md,
   * "Blind references".
   */
  private incs = new Map<number, number>();
  /** Chunks with blind references not yet folded into their records (the commit folds what is left). */
  get unfoldedReferences(): number {
    return this.incs.size;
  }
  /** Chunks freed since the last commit took the changes. */
  private freedSinceTake = 0;
  /**
   * Of the chunk records the last commit wrote, the share that were frees: about half when writes
   * overwrite chunks (one record freed, one made), none when they fill fresh space.
   */
  freedShare = 0;
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
  /** Blind references found pointing at no chunk when a commit took them (corrupt metadata; see take()). */
  lostReferences = 0;

  private readonly stored: ChunkRecordLayout;

  constructor(
    db: Database<Buffer, number>,
    private readonly sb: Superblock,
    private readonly pipeline: CommitPipeline,
  ) {
    this.stored = new ChunkRecordLayout(db, sb.chunkRecordGroup ?? 1);
  }

  /** Calls `fn` for every chunk freed from now on, in registration order. */
  onFreed(fn: ChunkFreedListener): void {
    this.listeners.push(fn);
  }

  get(slot: number): ChunkRecord | undefined {
    const v = this.changes.get(slot);
    if (v !== undefined) return v ?? undefined;
    const d = this.incs.get(slot);
    if (d !== undefined) return this.fold(slot, d);
    return this.below(slot);
  }

  /** The record as the commit in flight leaves it: its record, else LMDB's. */
  private below(slot: number): ChunkRecord | undefined {
    const v = this.committing?.get(slot);
    if (v !== undefined) return v ?? undefined;
    const r = this.recent.get(slot);
    if (r !== undefined) return r;
    const b = Buffer.allocUnsafe(RECORD_BYTES);
    if (!this.stored.read(slot, b)) return undefined;
    const c = decode(b);
    if (this.recent.size >= 4096) this.recent.clear();
    this.recent.set(slot, c);
    return c;
  }

  /** Turns a slot's blind references into a whole record in `changes`, read from below. */
  private fold(slot: number, d: number): ChunkRecord {
    const r = this.foldLean(slot, d);
    if (!r) throw new ShoalError('corrupt_metadata', `chunk ${slot} was referenced after it was freed`);
    return r;
  }

  /**
   * fold() without a throw, and with no decoded copy kept in `recent`: null (the references dropped
   * and counted in lostReferences) where there is no live chunk to hold them.
   */
  private foldLean(slot: number, d: number): ChunkRecord | null {
    this.incs.delete(slot);
    const r = this.withRefs(slot, d);
    if (r) this.changes.set(slot, r);
    return r;
  }

  /** A new record for slot with d more references than below (the commit in flight's, else LMDB's); null if none is live. */
  private withRefs(slot: number, d: number): ChunkRecord | null {
    const c = this.committing?.get(slot);
    if (c) return plusRefs(c, d);
    if (c === undefined) {
      const b = Buffer.allocUnsafe(RECORD_BYTES);
      const refs = this.stored.read(slot, b) ? b.readUInt32LE(0) : 0;
      if (refs > 0) return { refs: refs + d, domain: b.readUInt32LE(4), fp: b, fpOff: 8 };
    }
    this.lostReferences += d;
    return null;
  }

  /**
   * Folds blind references in slices of FOLD_SLICE_MS, one a turn, between the clients' requests: what
   * is left when a commit takes the changes is folded there, in its synchronous stretch.
   */
  private readonly foldSlice = (): void => {
    // A store closed without a last commit (a read-only check, a failed disk) reads nothing more.
    if (this.pipeline.isClosed) {
      this.folding = false;
      return;
    }
    const until = performance.now() + FOLD_SLICE_MS;
    let n = 0;
    for (const [slot, d] of this.incs) {
      this.foldLean(slot, d);
      if ((++n & 63) === 0 && performance.now() >= until) break;
    }
    if (this.incs.size > 0) setImmediate(this.foldSlice);
    else this.folding = false;
  };
  private folding = false;

  /** Whether slot holds a live chunk with the fingerprint key keys[off..off+36) (domain, fingerprint). */
  hasKey(slot: number, keys: Buffer, off: number): boolean {
    return carriesKey(this.get(slot), keys, off);
  }

  /**
   * hasKey() for a walk over many chunks read once each (the fingerprint index's sweep): read as
   * dec() reads, with no record object and no `recent` entry per chunk.
   */
  holdsKey(slot: number, keys: Buffer, off: number): boolean {
    return carriesKey(this.forRelease(slot, false), keys, off);
  }

  refCount(slot: number): number {
    return this.get(slot)?.refs ?? 0;
  }

  /**
   * refCount() for a walk over many chunks read once each (a volume's sharing figures): read as
   * dec() reads, with no record object and no `recent` entry per chunk.
   */
  refsOf(slot: number): number {
    return this.forRelease(slot, false)?.refs ?? 0;
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
    this.changes.set(slot, plusRefs(c, 1));
    this.writeActivity++;
    this.pipeline.changed();
    return true;
  }

  /**
   * One more reference to a chunk the caller knows is live (a leaf entry points at it: a leaf being
   * copied, a range being shared). Without its record in memory nothing is read now: the reference
   * is counted blind, and the record read when it is needed, by a slice of foldSlice, or by the
   * commit (see take()).
   */
  inc(slot: number): void {
    const v = this.changes.get(slot);
    if (v === null) throw new ShoalError('corrupt_metadata', `chunk ${slot} was referenced after it was freed`);
    if (v !== undefined) this.changes.set(slot, plusRefs(v, 1));
    else {
      this.incs.set(slot, (this.incs.get(slot) ?? 0) + 1);
      if (!this.folding) {
        this.folding = true;
        setImmediate(this.foldSlice);
      }
    }
    this.writeActivity++;
    this.pipeline.changed();
  }

  /**
   * dec()'s (and refsOf()'s) record read: from the overlays as get(), or else from LMDB into one
   * scratch record, valid until the next call, without allocating. (Space reclaim frees millions of chunks that
   * are read once: a Buffer, an object and a `recent` entry each were young garbage, and the
   * delete benchmark ran three times as many scavenges of 5 ms and more as without it.)
   */
  private forRelease(slot: number, fold = true): ChunkRecord | undefined {
    const v = this.changes.get(slot);
    if (v !== undefined) return v ?? undefined;
    const d = this.incs.get(slot);
    if (d !== undefined && fold) return this.fold(slot, d);
    // d here: a walk's read (no fold), blind references added to the record below.
    let w = this.committing?.get(slot);
    if (w === undefined) w = this.recent.get(slot);
    else if (w === null) return undefined;
    if (w !== undefined) return d === undefined ? w : plusRefs(w, d);
    const s = this.scratch;
    if (!this.stored.read(slot, s.fp)) return undefined;
    s.refs = s.fp.readUInt32LE(0) + (d ?? 0);
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
    this.freedSinceTake++;
    this.sb.liveChunks--;
    for (const fn of this.listeners) fn(slot, c);
  }

  /** Every stored record (fsck: with nothing uncommitted). */
  *all(): Iterable<[number, ChunkRecord]> {
    for (const [slot, b] of this.stored.all()) yield [slot, decode(b)];
  }

  // ---------------------------------------------------------------- CommitPart

  /**
   * Blind references become whole records here, read from LMDB as the commit before left it (commits
   * run one at a time): the commit writes records only. (Written as deltas, a reference would be
   * counted twice by a read between LMDB taking the commit and the commit settling.) A reference to a
   * chunk with no record is corrupt metadata: it is dropped and counted (lostReferences), and fsck
   * reports the map entry.
   */
  take(): Taken | null {
    const t = this.changes;
    if (this.incs.size > 0) {
      for (const [slot, d] of this.incs) {
        const r = this.withRefs(slot, d);
        if (r) t.set(slot, r);
      }
      this.incs = new Map();
    }
    if (t.size === 0) return null;
    this.freedShare = Math.min(1, this.freedSinceTake / t.size);
    this.freedSinceTake = 0;
    this.committing = t;
    this.changes = new Map();
    return t;
  }

  write(t: Taken, w: TxnWriter): void {
    this.stored.write(t, w);
  }

  settle(): void {
    this.committing = null;
    // LMDB changed
    this.recent.clear();
    this.stored.changed();
  }
}
