// Deduplication's one interface to the write path (DESIGN.md "dedup" row): fingerprint a write's
// chunks, find identical chunks already stored in the same domain, and remember the new ones.
// Behind it: the fingerprinter (BLAKE3 in the addon), the dedup log (new fingerprints, in memory
// and one sequential record per commit), the fingerprint index on disk with its Bloom filter, and
// the indexer that moves the log into the index in the background. Its records live in the
// metadata's LMDB environment and are committed with the chunk records they name. When a chunk is
// freed, the log forgets its fingerprint in the same commit; the index keeps a stale entry, which
// every hit checks against the chunk's record and a background sweep removes.
import type { DatabaseOptions } from 'lmdb';
import type { ChunkRecord } from '../meta/chunk-records.js';
import type { MetaStore } from '../meta/meta-store.js';
import { DedupLog } from './dedup-log.js';
import { native, type FingerprintTableHandle } from '../native.js';
import { FingerprintIndex } from './fingerprint-index.js';
import { Fingerprinter, KEY_BYTES } from './fingerprinter.js';
import { float64s } from '../native-arrays.js';

export interface DedupOptions {
  /** Test-only: a weak fingerprint (see Fingerprinter). */
  fingerprintOverride?: (chunk: Buffer) => Buffer;
}

/** Dedup's named databases in the metadata's environment: the index, then the log. MetaStore.open opens them before reading anything. */
export const DEDUP_DATABASES = [
  { name: 'fingerprints', encoding: 'msgpack', keyEncoding: 'binary' },
  { name: 'fingerprint-log', encoding: 'binary' },
] as const satisfies ReadonlyArray<DatabaseOptions & { name: string }>;

/** How often forget() tells the indexer the stale count grew, in entries. */
const STALE_NOTICE = 1024;
/**
 * Freed keys remembered at most (see `freed`): below the table's growth to 1 Mi entries, so it holds
 * at most 512 Ki entries of 48 bytes, 24 MiB.
 */
const FREED_KEYS_MAX = 256 * 1024 - 1;

export class DedupIndex {
  readonly log: DedupLog;
  readonly index: FingerprintIndex;
  readonly fingerprinter: Fingerprinter;
  /** forget()'s scratch key (no Buffer per freed chunk). */
  private readonly freeKey = Buffer.allocUnsafe(KEY_BYTES);
  /** Told every STALE_NOTICE stale entries (the indexer, which sweeps them). */
  staleGrew: () => void = () => {};
  /** The stale count when the sweep's current pass began (null: no pass under way). */
  private passStale: number | null = null;
  /**
   * Keys of freed chunks whose index entries are stale, key -> the freed slot, up to FREED_KEYS_MAX
   * (not kept across a restart). Data freed and then written again (a guest rewriting what it
   * wrote, a benchmark's same pseudo-random bytes) finds its key here and is a miss at once: without
   * it each such chunk paid an index read, the freed chunk's record read to see the entry stale, and
   * a random b-tree delete in the next commit (1 MiB writes ran at half the rate of fresh data,
   * docs/write-path.md). A lookup that finds a key takes it out: the chunk written for those bytes
   * next is found in the log, then in the index. Only a miss comes from here, never a hit, so a key
   * left here wrongly (two live chunks with one key, one freed) costs a lost dedup, no wrong data.
   */
  private readonly freed: FingerprintTableHandle = new (native().FingerprintTable)();

  private constructor(
    private readonly meta: MetaStore,
    opts: DedupOptions,
  ) {
    this.index = new FingerprintIndex(
      meta.openDb(DEDUP_DATABASES[0]),
      meta.pipeline,
      meta.liveChunks,
    );
    this.log = new DedupLog(meta.openDb(DEDUP_DATABASES[1]), meta.superblock, meta.pipeline);
    this.fingerprinter = new Fingerprinter(meta.chunkSize, opts.fingerprintOverride);
    meta.pipeline.add(this.index);
    meta.pipeline.add(this.log);
    meta.chunks.onFreed((slot, rec) => this.forget(slot, rec));
  }

  /**
   * Opens the dedup records of `meta`: reloads the log (checking each entry against its chunk
   * record) and, with `buildFilter`, fills the Bloom filter from the index in the background.
   */
  static open(meta: MetaStore, opts: DedupOptions = {}, buildFilter = true): DedupIndex {
    const d = new DedupIndex(meta, opts);
    d.log.load(meta.chunks, d.index, (blob, off) => d.index.filter.addKey(blob, off));
    if (buildFilter) d.index.buildFilter();
    return d;
  }

  /** The dedup keys of a write's chunks (see Fingerprinter.keys). */
  keys(chunks: Buffer[], contiguous: Buffer | null, domain: number): Promise<Buffer> | Buffer {
    return this.fingerprinter.keys(chunks, contiguous, domain);
  }

  /** Whether a fingerprint match must be confirmed byte by byte (the weak test fingerprint). */
  get weakFingerprints(): boolean {
    return this.fingerprinter.weak;
  }

  /**
   * For each of the n keys in `keys`: out[i] = a live chunk holding those bytes in that domain if
   * one is known, else -1.
   */
  lookup(keys: Buffer, n: number, out: Float64Array): void {
    // The log's table first, for all of them in one call; then what is not in it.
    const inLog = this.log.getMany(keys, n, out);
    if (inLog === n) return;
    const chunks = this.meta.chunks;
    // New data finds nothing in the log: then the freed keys are probed in one call too, not one a
    // key (a native call each was ~3% of the event loop for 1 MiB writes). With some keys in the
    // log, the rest are probed one by one: a batch would probe the found ones for nothing.
    const freedAt = inLog === 0 && n > 1 && this.freed.size > 0 ? float64s(n) : null;
    if (freedAt) this.freed.getMany(keys, n, freedAt);
    // Data already stored usually comes back in the order it was first written, and new chunks
    // take consecutive slots: after a match at slot s, chunk s + 1 is tried first, by its record
    // (which the dedup hit reads anyway), before a random read of the on-disk index.
    let guess = -1;
    for (let i = 0; i < n; i++) {
      const off = i * KEY_BYTES;
      if (out[i] >= 0) {
        guess = out[i] + 1;
        continue;
      }
      if (guess >= 0 && chunks.hasKey(guess, keys, off)) {
        out[i] = guess++;
        continue;
      }
      if (this.freed.size > 0) {
        const s = freedAt ? freedAt[i] : this.freed.get(keys, off);
        if (s >= 0) {
          // Stale in the index: a miss, and the entry is left for the sweep (or for the index to
          // take the new chunk's entry over it).
          this.freed.deleteIf(keys, off, s);
          out[i] = guess = -1;
          continue;
        }
      }
      out[i] = this.index.lookup(keys, off);
      // The entry may be stale (its chunk freed, the slot perhaps holding other bytes now): a hit
      // counts only if the chunk's record still carries this key (invariant 6). Its record is read
      // for the reference anyway, and kept for that (ChunkRecords.recent).
      if (out[i] >= 0 && !chunks.hasKey(out[i], keys, off)) {
        this.index.remove(keys, off);
        this.staleDropped(1);
        out[i] = -1;
      }
      guess = out[i] >= 0 ? out[i] + 1 : -1;
    }
  }

  /**
   * Makes chunks just stored findable: for i < n, key number which[i] of `keys` names slots[i].
   * Only for chunks whose bytes the caller found nowhere else (not for a collision).
   */
  remember(keys: Buffer, which: Uint32Array, slots: Float64Array, n: number): void {
    this.log.append(keys, which, slots, n);
    for (let i = 0; i < n; i++) this.index.filter.addKey(keys, which[i] * KEY_BYTES);
  }

  /** Counts a write mapped to a chunk already stored. */
  countHit(): void {
    this.meta.superblock.dedupHits++;
    this.meta.pipeline.changed();
  }

  get hits(): number {
    return this.meta.superblock.dedupHits;
  }

  /**
   * A chunk was freed: its fingerprint must not find it any more (invariants 1 and 6). The log's
   * table drops it. An index entry stays, stale, until the sweep: lookup() checks every index hit
   * against the chunk's record. (Removing it here was a random b-tree delete per freed chunk.)
   */
  private forget(slot: number, rec: ChunkRecord): void {
    const key = this.freeKey;
    key.writeUInt32BE(rec.domain, 0);
    rec.fp.copy(key, 4, rec.fpOff, rec.fpOff + 32);
    // In the log, it never reached the index; chunks written with dedup off (an all-zero
    // fingerprint) were never indexed at all.
    if (this.log.forget(key, slot) || isZero(rec.fp, rec.fpOff)) return;
    const sb = this.meta.superblock;
    sb.staleIndexEntries = (sb.staleIndexEntries ?? 0) + 1;
    if (this.freed.size < FREED_KEYS_MAX) this.freed.set(key, 0, slot);
    if (sb.staleIndexEntries % STALE_NOTICE === 0) this.staleGrew();
  }

  /** Freed chunks' keys held for lookups (see `freed`). */
  get freedKeys(): number {
    return this.freed.size;
  }

  /** Index entries left behind by freed chunks and not swept yet (an estimate, an upper bound). */
  get staleEntries(): number {
    return this.meta.superblock.staleIndexEntries ?? 0;
  }

  /** Whether the sweep has a pass under way (it finishes the pass once begun). */
  get sweeping(): boolean {
    return this.passStale !== null;
  }

  private staleDropped(n: number): void {
    const sb = this.meta.superblock;
    sb.staleIndexEntries = Math.max(0, (sb.staleIndexEntries ?? 0) - n);
  }

  /**
   * Looks at up to `max` index entries where the sweep left off and removes the stale ones
   * (committed with the next commit). A pass walks the whole index in key order, so its removals
   * share b-tree pages. At the end of a pass, what was stale when it began is swept: the count
   * keeps only what was freed since. Stops early past `until` (performance.now()). Returns how many
   * entries it looked at.
   */
  sweepSlice(max: number, until = Infinity): number {
    const chunks = this.meta.chunks;
    const sb = this.meta.superblock;
    if (this.passStale === null) this.passStale = sb.staleIndexEntries ?? 0;
    const freed = this.freed;
    const r = this.index.sweepSlice(max, (key, slot) => {
      if (chunks.holdsKey(slot, key, 0)) return true;
      if (freed.size > 0) freed.deleteIf(key, 0, slot); // removed from the index: no lookup will find it
      return false;
    }, until);
    if (r.wrapped) {
      sb.staleIndexEntries = Math.max(0, (sb.staleIndexEntries ?? 0) - this.passStale);
      this.passStale = null;
    }
    this.meta.pipeline.changed();
    return r.looked;
  }

  /** Moves up to `max` logged fingerprints into the index (committed with the next commit). */
  indexSlice(max: number): number {
    return this.log.merge(max, this.index);
  }

  close(): void {
    this.index.close();
  }
}

function isZero(b: Buffer, off: number): boolean {
  for (let i = off; i < off + 32; i++) if (b[i] !== 0) return false;
  return true;
}
