// The shared chunk cache on the native arena (addon/src/chunk-cache.cc): one byte budget for
// the whole daemon, keyed by physical slot id (invariant 5), chunk bytes off the V8 heap.
// S3-FIFO eviction (a small probation FIFO, a main FIFO with a use counter, a ghost list), so a
// scan passes through without pushing out the working set. Besides get/fetch, the paths that
// make it pay: readInto (copy straight into the reply), pinned (zero-copy send), loadRuns
// (O_DIRECT reads into the arena on the thread pool) and readahead.
//
// get()/peek()/fetch() return a COPY of
// the cached chunk (the arena frame may be reused once evicted); hot paths use readInto/pinned.
import { closeSync, openSync } from 'node:fs';
import { native, type NativeCacheHandle } from '../native.js';

/** What the shared cache reports (REST /v1/stats `cache`, Prometheus shoal_cache_*). */
export interface CacheStats {
  capacityBytes: number;
  bytes: number;
  entries: number;
  hits: number;
  misses: number;
  evictions: number;
  coalesced: number;
  /** Logical bytes served from the cache since start. */
  servedBytes: number;
  /** Logical bytes the cached chunks stand for (one per distinct reader) / bytes held. */
  sharingFactor: number;
}

export interface NativeCacheStatsOut extends CacheStats {
  /** Frames being sent (pinned), of which `orphaned` were already evicted or dropped. */
  pinned: number;
  orphaned: number;
  /** Frames reserved for store reads in flight. */
  loading: number;
  readerRefs: number;
  /** Chunks brought in by readahead (not counted as misses). */
  readahead: number;
  /** preadv calls and bytes read from the chunk file by loads. */
  storeReads: number;
  storeReadBytes: number;
  /** The chunk file is read with O_DIRECT (else buffered + posix_fadvise DONTNEED). */
  direct: boolean;
}

/** A cached chunk held for a zero-copy send. `buf` is valid only until release(). */
export interface PinnedChunk {
  readonly buf: Buffer;
  release(): void;
}

interface LoaderLoad {
  p: Promise<Buffer>;
  dropped: boolean; // drop(slot) ran while it was in flight: its bytes must not be cached
}

const EMPTY = Buffer.alloc(0);
const VIEW_BYTES = 2 ** 30; // kViewBytes in chunk-cache.cc
const settled = Promise.resolve();

export class NativeChunkCache {
  private readonly h: NativeCacheHandle;
  private readonly views: Buffer[];
  private readonly framesPerView: number;
  private fd = -1;
  private direct = false;
  // Native loads in flight, and fds closed while some ran: a pool thread may still pread from
  // them, and a closed fd number reused by another file would read its bytes into the cache.
  private activeLoads = 0;
  private retiredFds: number[] = [];
  // Native loads in flight, by slot: a coalesced caller awaits the load already running.
  private readonly inflight = new Map<number, Promise<void>>();
  // Loads through a caller's loader (no chunk file attached), by slot.
  private readonly loaderInflight = new Map<number, LoaderLoad>();
  private outcome = new Uint8Array(256);

  constructor(
    readonly capacityBytes: number,
    readonly chunkSize: number,
  ) {
    this.h = new (native().NativeChunkCache)(capacityBytes, chunkSize);
    this.views = this.h.views();
    this.framesPerView = Math.max(1, Math.floor(VIEW_BYTES / chunkSize));
  }

  /**
   * Reads misses from this chunk file (slot N at N × chunkSize) straight into the arena, with
   * O_DIRECT so the kernel keeps no second copy. Where the filesystem refuses O_DIRECT (tmpfs:
   * EINVAL), or `direct: false`, reads are buffered and followed by posix_fadvise(DONTNEED).
   */
  attachFile(path: string, opts: { direct?: boolean } = {}): { direct: boolean } {
    this.close();
    if (opts.direct !== false) {
      try {
        this.fd = native().openDirect(path);
        this.direct = true;
        return { direct: true };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
      }
    }
    this.fd = openSync(path, 'r');
    this.direct = false;
    return { direct: false };
  }

  /** Detaches the chunk file; it is closed once the loads in flight from it have finished. */
  close(): void {
    if (this.fd >= 0) this.retiredFds.push(this.fd);
    this.fd = -1;
    this.closeRetired();
  }

  private closeRetired(): void {
    if (this.activeLoads > 0) return;
    for (const fd of this.retiredFds) closeSync(fd);
    this.retiredFds = [];
  }

  get bytes(): number {
    return this.h.stats().bytes;
  }

  // ------------------------------------------------------------------ hits

  /**
   * Copies `len` bytes at `from` of the cached chunk into out[outOff..]; false on a miss.
   * Counts a hit (and a use for eviction) unless `count` is false: pass false for the copy right
   * after loadRuns(), which already counted this access as a miss — counting it again would make
   * every scanned chunk look re-used and defeat scan resistance.
   */
  readInto(slot: number, out: Uint8Array, outOff: number, from: number, len: number, reader: number, count = true): boolean {
    return this.h.lookupCopy(slot, out, outOff, from, len, reader, count);
  }

  /**
   * readInto for a whole request in one native call: bytes [skip, skip + length) of the chunks
   * slots[0..n) (consecutive chunks of a volume; slot < 0 for a hole, left untouched) go to
   * out[outOff..]. hit[k] says what happened to chunk k: 1 copied, 0 miss (load it, then call
   * again with count = false), 2 hole. Returns the number of misses.
   */
  readChunks(slots: Float64Array, n: number, out: Uint8Array, outOff: number, skip: number, length: number, reader: number, hit: Uint8Array, count = true): number {
    return this.h.gather(slots, n, out, outOff, skip, length, reader, hit, count);
  }

  /**
   * The cached chunk as a zero-copy view of the arena, or undefined on a miss. Counts a hit.
   * The frame is not reused until release() (call it once the socket write has completed),
   * even if the chunk is evicted or dropped meanwhile; after release() `buf` must not be read.
   */
  pinned(slot: number, reader: number, count = true): PinnedChunk | undefined {
    const f = this.h.pin(slot, reader, count);
    if (f < 0) return undefined;
    const off = (f % this.framesPerView) * this.chunkSize;
    const buf = this.views[Math.floor(f / this.framesPerView)].subarray(off, off + this.chunkSize);
    let held = true;
    const h = this.h;
    return {
      buf,
      release() {
        if (held) h.unpin(f);
        held = false;
      },
    };
  }

  /**
   * Zero-copy views of consecutive chunks slots[0..n) (slot < 0: a hole, given as `zero`), all
   * pinned until release(), or undefined if any stored slot is not cached (nothing stays pinned).
   */
  pinnedRun(slots: Float64Array, n: number, reader: number, zero: Buffer, count = true): { bufs: Buffer[]; release(): void } | undefined {
    const frames = new Int32Array(n);
    if (this.h.pinMany(slots, n, frames, reader, count) > 0) return undefined;
    // Chunks in consecutive frames of one view (a run loaded together usually is) become one
    // view: a 1 MiB reply is then a few socket writes instead of 256.
    const bufs: Buffer[] = [];
    const cs = this.chunkSize;
    let runStart = -1; // first frame of the current run of consecutive frames
    let runLen = 0;
    const flush = () => {
      if (runLen === 0) return;
      const off = (runStart % this.framesPerView) * cs;
      bufs.push(this.views[Math.floor(runStart / this.framesPerView)].subarray(off, off + runLen * cs));
      runLen = 0;
    };
    for (let k = 0; k < n; k++) {
      const f = frames[k];
      if (f < 0) {
        flush();
        bufs.push(zero);
      } else if (runLen > 0 && f === runStart + runLen && f % this.framesPerView !== 0) {
        runLen++;
      } else {
        flush();
        runStart = f;
        runLen = 1;
      }
    }
    flush();
    let held = true;
    const h = this.h;
    return {
      bufs,
      release() {
        if (held) h.unpinMany(frames, n);
        held = false;
      },
    };
  }

  /** A copy of the cached chunk without counting a hit (bytes just loaded for this caller). */
  peek(slot: number): Buffer | undefined {
    return this.copyOut(slot, -1, false);
  }

  /** A copy of the cached chunk, or undefined. Counts a hit for `reader`. */
  get(slot: number, reader: number): Buffer | undefined {
    return this.copyOut(slot, reader, true);
  }

  private copyOut(slot: number, reader: number, count: boolean): Buffer | undefined {
    const b = Buffer.allocUnsafe(this.chunkSize); // >= 4 KiB: never from the shared pool
    return this.h.lookupCopy(slot, b, 0, 0, this.chunkSize, reader, count) ? b : undefined;
  }

  // ------------------------------------------------------------------ misses

  /**
   * Loads the missing ones among `slots` from the attached file into the cache: runs of
   * consecutive slots in one read each, on the thread pool. A slot already being loaded is not
   * read twice (coalesced): this awaits that load. Resolves when every slot has been loaded or
   * found cached; a slot may still be absent afterwards (no frame free, or evicted since), so
   * callers fall back to a direct store read when readInto() then misses.
   */
  loadRuns(slots: number[], reader: number, readahead = false): Promise<void> {
    if (this.fd < 0) return Promise.reject(new Error('NativeChunkCache.loadRuns: no chunk file attached'));
    const n = slots.length;
    if (n === 0) return settled;
    if (this.outcome.length < n) this.outcome = new Uint8Array(Math.max(n, this.outcome.length * 2));
    const out = this.outcome;
    const p = this.h.load(this.fd, slots, reader, readahead, out);
    let waits: Promise<void>[] | undefined;
    let mine: number[] | undefined;
    let loads = 0;
    for (let i = 0; i < n; i++) {
      const o = out[i];
      if (o === 2 || (o === 3 && !readahead)) loads++; // 3: the caller reads it from the store itself
      if (o === 2) {
        this.inflight.set(slots[i], p!);
        (mine ??= []).push(slots[i]);
      } else if (o === 1) {
        const w = this.inflight.get(slots[i]);
        if (w !== undefined && (waits === undefined || waits[waits.length - 1] !== w)) (waits ??= []).push(w);
      }
    }
    if (loads > 0 && reader >= 0) this.storeLoads.set(reader, (this.storeLoads.get(reader) ?? 0) + loads);
    if (p === undefined) return waits === undefined ? settled : Promise.all(waits).then(noop);
    this.activeLoads++;
    const forget = () => {
      for (const s of mine!) if (this.inflight.get(s) === p) this.inflight.delete(s);
      if (--this.activeLoads === 0 && this.retiredFds.length > 0) this.closeRetired();
    };
    p.then(forget, forget);
    if (waits === undefined) return p;
    waits.push(p);
    return Promise.all(waits).then(noop);
  }

  /**
   * Chunks each reader's accesses loaded from the store (misses, and what its readahead brought
   * in): a reader's own miss count, which the shared counters cannot tell apart. Keyed by reader
   * id (one per export name, so a handful of entries).
   */
  readonly storeLoads = new Map<number, number>();

  /**
   * Starts loading `slots` (e.g. the chunks after `reader`'s sequential stream's last read),
   * charged to `reader` in storeLoads; never rejects.
   */
  readahead(slots: number[], reader: number): void {
    if (this.fd < 0 || slots.length === 0) return;
    try {
      this.loadRuns(slots, reader, true).catch(noop);
    } catch {
      // bad slot ids: readahead is only a hint
    }
  }

  /**
   * The bytes of `slot` (a copy) from the cache or, on a miss, from the attached file, or from
   * `loader` when no file is attached (one load for any number of concurrent misses).
   */
  async fetch(slot: number, reader: number, loader: (slot: number) => Promise<Buffer>): Promise<Buffer> {
    const hit = this.get(slot, reader);
    if (hit) return hit;
    if (this.fd >= 0) {
      await this.loadRuns([slot], reader);
      return this.peek(slot) ?? loader(slot); // not cacheable right now: read it directly
    }
    const pending = this.loaderInflight.get(slot);
    if (pending) {
      this.h.addCounters(0, 0, 1);
      const b = await pending.p;
      this.h.noteReader(slot, reader);
      return b;
    }
    this.h.addCounters(0, 1, 0);
    const load: LoaderLoad = { p: loader(slot), dropped: false };
    this.loaderInflight.set(slot, load);
    try {
      const buf = await load.p;
      if (!load.dropped) this.h.insert(slot, buf, reader);
      return buf;
    } finally {
      if (this.loaderInflight.get(slot) === load) this.loaderInflight.delete(slot);
    }
  }

  /**
   * Loads several missing slots at once. With a file attached this is loadRuns (and `loadRun` is
   * not used); otherwise runs of consecutive slots go to `loadRun` as one request each.
   */
  fetchRuns(slots: number[], reader: number, loadRun: (first: number, count: number) => Promise<Buffer[]>): Promise<void> {
    if (this.fd >= 0) return this.loadRuns(slots, reader);
    const waits: Promise<unknown>[] = [];
    let misses = 0;
    let coalesced = 0;
    let i = 0;
    while (i < slots.length) {
      const s = slots[i];
      if (this.h.lookupCopy(s, EMPTY, 0, 0, 0, reader, true)) {
        i++;
        continue;
      }
      const pending = this.loaderInflight.get(s);
      if (pending) {
        coalesced++;
        waits.push(pending.p);
        i++;
        continue;
      }
      let j = i + 1;
      while (j < slots.length && slots[j] === slots[j - 1] + 1 && !this.h.has(slots[j]) && !this.loaderInflight.has(slots[j])) j++;
      const count = j - i;
      misses += count;
      const run = loadRun(s, count);
      for (let k = 0; k < count; k++) {
        const slot = s + k;
        const load: LoaderLoad = { p: run.then((bufs) => bufs[k]), dropped: false };
        this.loaderInflight.set(slot, load);
        waits.push(
          load.p
            .then((b) => {
              if (!load.dropped) this.h.insert(slot, b, reader);
            })
            .finally(() => {
              if (this.loaderInflight.get(slot) === load) this.loaderInflight.delete(slot);
            }),
        );
      }
      i = j;
    }
    this.h.addCounters(0, misses, coalesced);
    return Promise.all(waits).then(noop);
  }

  // ------------------------------------------------------------------ writes and frees

  /** Puts freshly written chunk bytes (exactly one chunk) in the cache: copied into the arena. */
  insert(slot: number, buf: Buffer, reader = -1): void {
    this.h.insert(slot, buf, reader);
  }

  /** The slot's chunk was freed or its slot reused: forget it and any load of it in flight (invariant 1). */
  drop(slot: number): void {
    this.h.drop(slot);
    this.inflight.delete(slot);
    const l = this.loaderInflight.get(slot);
    if (l) {
      l.dropped = true;
      this.loaderInflight.delete(slot);
    }
  }

  has(slot: number): boolean {
    return this.h.has(slot);
  }

  /** Records that `reader` read `slot` (for the sharing factor) without counting a hit. */
  noteReader(slot: number, reader: number): void {
    this.h.noteReader(slot, reader);
  }

  // ------------------------------------------------------------------ figures

  get hits(): number {
    return this.h.stats().hits;
  }
  get misses(): number {
    return this.h.stats().misses;
  }
  get evictions(): number {
    return this.h.stats().evictions;
  }
  get coalesced(): number {
    return this.h.stats().coalesced;
  }
  get servedBytes(): number {
    return this.h.stats().servedBytes;
  }

  stats(): NativeCacheStatsOut {
    const s = this.h.stats();
    return {
      capacityBytes: this.capacityBytes,
      bytes: s.bytes,
      entries: s.entries,
      hits: s.hits,
      misses: s.misses,
      evictions: s.evictions,
      coalesced: s.coalesced,
      servedBytes: s.servedBytes,
      // Logical bytes the cached chunks stand for (one per distinct volume reading each), per byte held.
      sharingFactor: s.bytes === 0 ? 0 : (s.readerRefs * this.chunkSize) / s.bytes,
      pinned: s.pinned,
      orphaned: s.orphaned,
      loading: s.loading,
      readerRefs: s.readerRefs,
      readahead: s.readahead,
      storeReads: s.storeReads,
      storeReadBytes: s.storeReadBytes,
      direct: this.direct,
    };
  }
}

function noop(): void {}
