// The shared chunk cache on the native arena (addon/src/chunk-cache.cc): one byte budget for
// the whole daemon, keyed by physical slot id (invariant 5), chunk bytes off the V8 heap.
// S3-FIFO eviction (a small probation FIFO, a main FIFO with a use counter, a ghost list), so a
// scan passes through without pushing out the working set.
//
// Hits are served as pinned views of the arena (zero-copy sends). Every miss takes one path,
// load(): frames are reserved natively, the chunk store fills them (readChunks: a local file
// preadv straight into the frames, or bytes fetched from elsewhere), then they are admitted.
// The cache never knows where a chunk lies in the store.
import { native, type NativeCacheHandle } from '../native.js';
import { BufferTargets, type ChunkStore, type ChunkTargets } from '../store/chunk-store.js';
import { float64s, int32s } from '../native-arrays.js';

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
  /** Frames being sent (pinned), of which `orphaned` were already evicted or dropped. */
  pinned: number;
  orphaned: number;
  /** Frames reserved for store reads in flight. */
  loading: number;
  readerRefs: number;
  /** Chunks brought in by readahead (not counted as misses). */
  readahead: number;
  /** Reads the cache asked of the store, and the bytes they brought in. */
  storeReads: number;
  storeReadBytes: number;
  /** Bytes of the arena faulted in ahead of use (--cache-prefault on), 0 otherwise. */
  prefaultedBytes: number;
}

/**
 * Bytes held for a zero-copy send: `data` (a view of one frame, or views of several) stays valid
 * until release(), even if the chunks are evicted or dropped meanwhile. release() is idempotent.
 * The data path may narrow `data` to the bytes a request asked for.
 */
export class Pinned {
  private held = true;
  constructor(
    public data: Buffer | Buffer[],
    private readonly h: NativeCacheHandle,
    private readonly frame: number,
    private readonly frames: Int32Array | null,
  ) {}

  release(): void {
    if (!this.held) return;
    this.held = false;
    if (this.frames) this.h.unpinMany(this.frames, this.frames.length);
    else this.h.unpin(this.frame);
  }
}

const VIEW_BYTES = 2 ** 30; // kViewBytes in chunk-cache.cc
const settled = Promise.resolve();
const PREFAULT_CHECK_MS = 100;

/** Frames reserved for one load: the store fills them by view or straight from a file. */
class FrameTargets implements ChunkTargets {
  constructor(
    private readonly cache: ChunkCache,
    readonly frames: Uint32Array,
  ) {}
  get count(): number {
    return this.frames.length;
  }
  view(i: number): Buffer {
    return this.cache.frameView(this.frames[i]);
  }
  readFile(fd: number, offsets: Float64Array, which?: ArrayLike<number>): Promise<number> {
    if (!which) return this.cache.h.readFile(fd, this.frames, offsets, this.frames.length);
    const frames = new Uint32Array(which.length);
    for (let k = 0; k < which.length; k++) frames[k] = this.frames[which[k]];
    return this.cache.h.readFile(fd, frames, offsets, frames.length);
  }
}

export class ChunkCache {
  /** @internal the native arena, for FrameTargets */
  readonly h: NativeCacheHandle;
  private readonly views: Buffer[];
  private readonly framesPerView: number;
  // Loads in flight, by the id the native cache keeps in their frames: a coalesced caller awaits the
  // load already running. One entry per load, not per chunk.
  private readonly inflight = new Map<number, Promise<void>>();
  private lastLoad = 0;
  // Scratch for reserve(): reused, since a load copies out what it keeps before awaiting.
  private outcome = new Uint8Array(256);
  private reserved = new Uint32Array(256);
  private loadIds = new Uint32Array(256);
  private slotsScratch = new Float64Array(256);
  private storeReads = 0;
  private storeReadBytes = 0;

  constructor(
    readonly capacityBytes: number,
    readonly chunkSize: number,
    private readonly store: ChunkStore,
  ) {
    this.h = new (native().NativeChunkCache)(capacityBytes, chunkSize);
    this.views = this.h.views();
    this.framesPerView = Math.max(1, Math.floor(VIEW_BYTES / chunkSize));
  }

  /** @internal frame f of the arena as a Buffer view. */
  frameView(f: number): Buffer {
    const off = (f % this.framesPerView) * this.chunkSize;
    return this.views[Math.floor(f / this.framesPerView)].subarray(off, off + this.chunkSize);
  }

  // ------------------------------------------------------------------ hits

  /**
   * Copies bytes [skip, skip + length) of the consecutive chunks slots[0..n) (slot < 0: a hole,
   * left untouched) to out[outOff..] in one native call. hit[k] says what happened to chunk k:
   * 1 copied, 0 miss, 2 hole. Returns the number of misses. Counts hits unless `count` is false:
   * pass false for the copy right after load(), which already counted the access as a miss.
   */
  readChunks(slots: Float64Array, n: number, out: Uint8Array, outOff: number, skip: number, length: number, reader: number, hit: Uint8Array, count = true): number {
    return this.h.gather(slots, n, out, outOff, skip, length, reader, hit, count);
  }

  /** The cached chunk as a pinned zero-copy view, or undefined on a miss. Counts a hit unless `count` is false. */
  pinned(slot: number, reader: number, count = true): Pinned | undefined {
    const f = this.h.pin(slot, reader, count);
    if (f < 0) return undefined;
    return new Pinned(this.frameView(f), this.h, f, null);
  }

  /**
   * Zero-copy views of consecutive chunks slots[0..n) (slot < 0: a hole, given as `zero`), all
   * pinned until release(), or undefined if any stored slot is not cached (nothing stays pinned).
   */
  pinnedRun(slots: Float64Array, n: number, reader: number, zero: Buffer, count = true): Pinned | undefined {
    const frames = int32s(n);
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
    return new Pinned(bufs, this.h, -1, frames);
  }

  // ------------------------------------------------------------------ misses: the one path

  /**
   * Brings the missing ones among `slots` into the cache: frames are reserved, the store fills
   * them, they are admitted. A slot already being loaded is not read twice (coalesced): this
   * awaits that load. Resolves when every slot has been loaded or found cached; a slot may still
   * be absent afterwards (no frame was free, or it was evicted since), so callers fall back to
   * readUncached() when the following lookup misses.
   */
  load(slots: ArrayLike<number>, reader: number, readahead = false): Promise<void> {
    return this.loadOnce(slots, reader, readahead, true);
  }

  /**
   * load(). `retry`: a load of others this one waits for (a readahead run, say) may fail for a chunk
   * this one does not need (a damaged one further on): then the chunks it waited for are loaded again,
   * by themselves, once, and only their own failure fails this load.
   */
  private loadOnce(slots: ArrayLike<number>, reader: number, readahead: boolean, retry: boolean): Promise<void> {
    const n = slots.length;
    if (n === 0) return settled;
    if (this.outcome.length < n) {
      const size = Math.max(n, this.outcome.length * 2);
      this.outcome = new Uint8Array(size);
      this.reserved = new Uint32Array(size);
      this.loadIds = new Uint32Array(size);
      this.slotsScratch = new Float64Array(size);
    }
    const s = this.slotsScratch;
    for (let i = 0; i < n; i++) s[i] = slots[i];
    const out = this.outcome;
    const id = this.lastLoad === 0xffffffff ? (this.lastLoad = 1) : ++this.lastLoad;
    const got = this.h.reserve(s, n, reader, readahead, out, this.reserved, id, this.loadIds);
    let waits: Promise<void>[] | undefined;
    let waited: number[] | undefined; // the slots those loads bring
    let loads = 0;
    for (let i = 0; i < n; i++) {
      const o = out[i];
      if (o === 2 || (o === 3 && !readahead)) loads++; // 3: the caller reads it from the store itself
      if (o === 1) {
        const w = this.inflight.get(this.loadIds[i]);
        if (w === undefined) continue;
        if (waits === undefined || waits[waits.length - 1] !== w) (waits ??= []).push(w);
        (waited ??= []).push(s[i]);
      }
    }
    if (loads > 0 && reader >= 0) this.storeLoads.set(reader, (this.storeLoads.get(reader) ?? 0) + loads);
    let others: Promise<void> | undefined;
    if (waits !== undefined) {
      const again = waited!;
      others = Promise.all(waits).then(noop, (e) => (retry ? this.loadOnce(again, reader, readahead, false) : Promise.reject(e)));
    }
    if (got === 0) return others ?? settled;
    const frames = this.reserved.slice(0, got);
    const mine = float64s(got);
    for (let i = 0, k = 0; i < n; i++) if (out[i] === 2) mine[k++] = s[i];
    const p = this.fill(mine, frames);
    this.inflight.set(id, p);
    const forget = () => this.inflight.delete(id);
    p.then(forget, forget);
    return others === undefined ? p : Promise.all([p, others]).then(noop);
  }

  /** Has the store fill reserved frames, then admits them (or frees them if the read failed). */
  private async fill(slots: Float64Array, frames: Uint32Array): Promise<void> {
    this.storeReads++;
    try {
      await this.store.readChunks(slots, new FrameTargets(this, frames));
    } catch (e) {
      this.h.complete(frames, frames.length, false);
      throw e;
    }
    this.h.complete(frames, frames.length, true);
    this.storeReadBytes += frames.length * this.chunkSize;
  }

  /**
   * Reads chunks from the store into `into` (one chunk-size buffer each) without caching them:
   * the fallback when no frame could be had (every one pinned or loading).
   */
  readUncached(slots: ArrayLike<number>, into: Buffer[]): Promise<void> {
    this.storeReads++;
    this.storeReadBytes += into.length * this.chunkSize;
    return this.store.readChunks(slots, new BufferTargets(into));
  }

  /**
   * Copies one whole chunk into `into` through the cache (a hit, or a load): for the daemon's own
   * reads of a chunk's bytes (a sub-chunk write's read-modify-write, a dedup byte comparison).
   * `count` false: the caller's load() already counted this access.
   */
  async copyChunk(slot: number, reader: number, into: Buffer, count = true): Promise<void> {
    const cs = this.chunkSize;
    if (this.h.lookupCopy(slot, into, 0, 0, cs, reader, count)) return;
    if (count) await this.load([slot], reader);
    if (this.h.lookupCopy(slot, into, 0, 0, cs, reader, false)) return;
    await this.readUncached([slot], [into]);
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
    if (slots.length === 0) return;
    this.load(slots, reader, true).catch(noop);
  }

  // ------------------------------------------------------------------ writes and frees

  /** Puts freshly written chunk bytes (exactly one chunk) in the cache: copied into the arena. */
  insert(slot: number, buf: Buffer, reader = -1): void {
    this.h.insert(slot, buf, reader);
  }

  /** The slot's chunk was freed or its slot reused: forget it and any load of it in flight (invariant 1). */
  drop(slot: number): void {
    this.h.drop(slot); // a load of it in flight no longer coalesces: its frame is unindexed
  }

  has(slot: number): boolean {
    return this.h.has(slot);
  }

  /**
   * Faults the whole arena in now, in the background at idle priority (--cache-prefault on), so that
   * the first fill does not pay for it; false if the kernel cannot. `load` counts the clients'
   * requests. Every 100 ms until the arena is in, the faulting waits if requests ran and none had the
   * cache read the store: it slows them (addon/src/chunk-cache.cc says by how much), while a fill
   * needs the pages anyway.
   */
  prefault(load?: () => { started: number; inFlight: number } | null): boolean {
    if (!this.h.prefault(true)) return false;
    if (!load) return true;
    let started = 0;
    let filled = this.storeReads;
    const timer = setInterval(() => {
      // Until the thread ends: the whole arena in, or short of it where the host gave no more (ENOMEM).
      if (!this.h.stats().prefaulting) {
        clearInterval(timer);
        return;
      }
      const l = load();
      const busy = l !== null && (l.started !== started || l.inFlight > 0);
      this.h.prefault(!busy || this.storeReads !== filled);
      started = l?.started ?? 0;
      filled = this.storeReads;
    }, PREFAULT_CHECK_MS);
    timer.unref(); // the populator thread ends with the arena; this only steers it
    return true;
  }

  // ------------------------------------------------------------------ figures

  stats(): CacheStats {
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
      storeReads: this.storeReads,
      storeReadBytes: this.storeReadBytes,
      prefaultedBytes: s.prefaultedBytes,
    };
  }
}

function noop(): void {}
