// Loads the native addon built from addon/ by `npm install` (scripts/build-addon.mjs).
import { createRequire } from 'node:module';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { existsSync } from 'node:fs';

export interface NativeAddon {
  /**
   * BLAKE3-256 of each chunkSize piece of data, 32 bytes each, on the calling thread. With a
   * domain id, 36 bytes each: the domain (4 bytes, big-endian), then the digest (a dedup key).
   */
  fingerprintSync(data: Uint8Array, chunkSize: number, domain?: number): Buffer;
  /** fingerprintSync's dedup keys (with a domain), written into out[outOffset..]; a RangeError if they do not fit. */
  fingerprintInto(data: Uint8Array, chunkSize: number, domain: number, out: Uint8Array, outOffset: number): void;
  /** The same on libuv's thread pool. */
  fingerprint(data: Uint8Array, chunkSize: number, domain?: number): Promise<Buffer>;
  /** The 36-byte keys of several batches (batch i in domain domains[i]), one after another, in one thread-pool job. */
  fingerprintMany(datas: Uint8Array[], domains: Float64Array, chunkSize: number): Promise<Buffer>;
  /** fingerprintSync by one BLAKE3 hasher per chunk: the reference its SIMD-wide path is tested against. */
  fingerprintReference(data: Uint8Array, chunkSize: number): Buffer;
  /** Dedup-log table: 36-byte fingerprint key -> chunk slot, off the V8 heap (addon/src/fingerprint-table.cc). */
  FingerprintTable: new () => FingerprintTableHandle;
  /** The shared chunk cache arena (addon/src/chunk-cache.cc); wrapped by server/cache/chunk-cache.ts. */
  NativeChunkCache: new (capacityBytes: number, chunkSize: number) => NativeCacheHandle;
  /** Opens a file O_DIRECT (read-only unless `writable`); throws an Error with `code` (EINVAL on tmpfs). */
  openDirect(path: string, writable?: boolean): number;
  /**
   * Sets the nice value of each of the thread pool's `threads` threads (one job on each at once,
   * addon/src/thread-priority.cc); resolves with the thread ids reached.
   */
  setPoolNice(threads: number, nice: number): Promise<number[]>;
  /** posix_fadvise(POSIX_FADV_DONTNEED) on a range, on the thread pool: drops its clean page-cache pages. */
  fadviseDontNeed(fd: number, offset: number, length: number): Promise<void>;
  /**
   * Writes run r, the next counts[r] buffers of bufs, at byte positions[r], all runs in one thread-pool
   * job (pwritev each, a short write carried on). Rejects with the first failure's errno error, its
   * `runsWritten` the runs before it.
   */
  writeRuns(fd: number, bufs: Buffer[], counts: Uint32Array, positions: Float64Array, runs: number): Promise<void>;
  /**
   * writeRuns for a descriptor opened O_DIRECT (positions and run lengths multiples of 512): the runs
   * copied into aligned memory and written in parallel through Linux AIO, in one thread-pool job.
   * Resolves with each run's errno (0: written).
   */
  writeRunsDirect(fd: number, bufs: Buffer[], counts: Uint32Array, positions: Float64Array, runs: number): Promise<Int32Array>;
  /** flock(fd, LOCK_EX | LOCK_NB): true if taken, false if another open file holds the lock. */
  tryLock(fd: number): boolean;
  /** A Buffer of `bytes` at a page boundary (for O_DIRECT), outside the V8 heap; unmapped when collected. */
  alignedBuffer(bytes: number): Buffer;
  /** MD5 of `data` (16 bytes) on the thread pool, for an upload's Content-MD5; `data` must not change meanwhile. */
  md5(data: Uint8Array): Promise<Buffer>;
  /** zlib's CRC-32 of each chunkSize piece of data (4 bytes little-endian each), on the thread pool; `data` must not change meanwhile. */
  crc32Chunks(data: Uint8Array, chunkSize: number): Promise<Buffer>;
  /** The same at once, into out[at..]: for a pack's chunks as they are appended (addon/src/crc32-fold.cc). */
  crc32ChunksInto(data: Uint8Array, chunkSize: number, out: Uint32Array, at: number): void;
}

export interface FingerprintTableHandle {
  /** The slot keys[offset..offset+36) maps to, or -1. */
  get(keys: Uint8Array, offset: number): number;
  /** out[i] = the slot of keys[36i..36i+36), or -1, for i < n; returns how many were found. */
  getMany(keys: Uint8Array, n: number, out: Float64Array): number;
  set(keys: Uint8Array, offset: number, slot: number): void;
  /**
   * For i < n: maps key number which[i] of `keys` to slots[i] and appends its dedup-log entry (the
   * key, then the slot in 6 bytes big-endian) at log[logOff..]; returns the new logOff.
   */
  logMany(keys: Uint8Array, which: Uint32Array, slots: Float64Array, n: number, log: Uint8Array, logOff: number): number;
  /** Removes the key if it maps to `slot`; true if it did. */
  deleteIf(keys: Uint8Array, offset: number, slot: number): boolean;
  readonly size: number;
  /** Memory held by the table. */
  readonly bytes: number;
}

interface NativeCacheStats {
  capacityBytes: number;
  /** floor(capacity / chunkSize) × chunkSize: the arena's size, never exceeded. */
  arenaBytes: number;
  frames: number;
  bytes: number;
  entries: number;
  hits: number;
  misses: number;
  evictions: number;
  coalesced: number;
  servedBytes: number;
  /** Frames with at least one pin (being sent). */
  pinned: number;
  /** Pinned frames already evicted or dropped: unindexed, memory reused at unpin. */
  orphaned: number;
  /** Frames reserved for store reads in flight. */
  loading: number;
  /** Σ over entries of distinct readers (at most 64 each). */
  readerRefs: number;
  /** Chunks loaded by readahead (not counted as misses). */
  readahead: number;
  ghosts: number;
  /** Arena bytes faulted in by prefault() so far. */
  prefaultedBytes: number;
  /** Whether prefault()'s thread is still at work (false once it has ended, however far it got). */
  prefaulting: boolean;
}

/** The native cache object; slots are non-negative integers, frames index the arena. */
export interface NativeCacheHandle {
  /** Copies `len` bytes at `from` of a cached chunk into dst; false on a miss. Counts a hit unless count is false. */
  lookupCopy(slot: number, dst: Uint8Array, dstOff: number, from: number, len: number, reader: number, count?: boolean): boolean;
  /**
   * One request over n consecutive chunks (slots[k] < 0: a hole, left untouched): chunk k covers
   * request bytes [k·cs − skip, (k+1)·cs − skip) ∩ [0, length), copied to out[outOff + …].
   * hit[k]: 1 copied, 0 miss, 2 hole. Returns the number of misses.
   */
  gather(slots: Float64Array, n: number, out: Uint8Array, outOff: number, skip: number, length: number, reader: number, hit: Uint8Array, count?: boolean): number;
  /** Pins a cached chunk (counts a hit): its frame number, or -1 on a miss. */
  pin(slot: number, reader: number, count?: boolean): number;
  /** Ends one pin of a frame. */
  unpin(frame: number): void;
  /** Pins every stored slot of slots[0..n) (slot < 0: a hole) or none: returns the misses; frames[k] = frame or -1. */
  pinMany(slots: Float64Array, n: number, frames: Int32Array, reader: number, count: boolean): number;
  /** Ends the pins of pinMany. */
  unpinMany(frames: Int32Array, n: number): void;
  /** Copies one whole chunk in; false if no frame could be freed (all pinned or loading). */
  insert(slot: number, src: Uint8Array, reader?: number): boolean;
  /** Forgets a slot: its entry, and any load of it in flight (never stale). */
  drop(slot: number): void;
  has(slot: number): boolean;
  /**
   * The first half of a load: for each of slots[0..n), outcome[i] = 0 cached (a hit), 1 already
   * loading (coalesced: loads[i] is that load's id), 2 a frame reserved now for load `loadId` (≥ 1),
   * 3 no frame free. The reserved frames go to frames[0..r) in slot order; returns r. Each reserved
   * frame must be completed once.
   */
  reserve(slots: Float64Array, n: number, reader: number, readahead: boolean, outcome: Uint8Array, frames: Uint32Array, loadId: number, loads: Uint32Array): number;
  /** The second half: the frames were filled (ok) and enter the cache, or they go back to the free list. */
  complete(frames: Uint32Array, n: number, ok: boolean): void;
  /**
   * Fills reserved frames[k] from byte offset offsets[k] of fd on the thread pool (one preadv per
   * run of back-to-back offsets); resolves with the number of preadv calls. Does not complete them.
   */
  readFile(fd: number, frames: Uint32Array, offsets: Float64Array, n: number): Promise<number>;
  /** External Buffers over the arena, one per GiB: frame f is at (f % perView) × chunkSize of views[f / perView]. */
  views(): Buffer[];
  stats(): NativeCacheStats;
  /**
   * Faults the arena's pages in on a thread of idle priority (chunk-cache.cc says why), or with
   * `false` holds that thread until the next prefault(). True if that thread was started (now or
   * before): false if the kernel cannot (no MADV_POPULATE_WRITE before Linux 5.14), and for a hold
   * before any start.
   */
  prefault(run?: boolean): boolean;
}

function findRoot(): string {
  // dist/server/native.js or server/native.ts: the package root is the first parent with addon/.
  let d = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 4; i++) {
    if (existsSync(join(d, 'addon', 'binding.gyp'))) return d;
    d = dirname(d);
  }
  throw new Error('cannot find the Shoal package root (addon/binding.gyp)');
}

let cached: NativeAddon | undefined;
export function native(): NativeAddon {
  if (cached) return cached;
  const path = join(findRoot(), 'addon', 'build', 'Release', 'shoal.node');
  if (!existsSync(path)) throw new Error(`the native addon is not built (${path} is missing): run \`npm install\` or \`npm run build:addon\``);
  cached = createRequire(import.meta.url)(path) as NativeAddon;
  return cached;
}
