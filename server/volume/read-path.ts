// Reads of volumes and snapshots: bytes, readahead, NBD_CMD_CACHE, block status, and how much of a
// map is shared. Maps live in the metadata layer, hot bytes in the shared cache; a read replies
// with views of the cache's frames, pinned until the socket has taken them (no copy).
import { FANOUT, HOLE, ZERO_CHUNK } from '../meta/map-node.js';
import { forEachEntry, isStored, leafEntries, lookup } from '../meta/map-tree.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { RootRecord } from '../meta/volume-records.js';
import type { ChunkCache } from '../cache/chunk-cache.js';
import { EXTENT_HOLE, EXTENT_ZERO, type Extent, type ReadResult } from './export-port.js';
import { uint8s } from '../native-arrays.js';

/** How far ahead of a sequential reader to load. */
const READAHEAD_BYTES = 2 * 1024 * 1024;
/** At most this many extents per block-status reply. */
const MAX_EXTENTS = 4096;

/** Bytes the read owns (holes, copies): nothing to release. */
class OwnBytes implements ReadResult {
  constructor(readonly data: Buffer | Buffer[]) {}
  release(): void {}
}

/** A pinned chunk cut to the bytes [within, within + length) of it. */
function trimOne(pin: ReadResult & { data: Buffer | Buffer[] }, within: number, length: number, cs: number): ReadResult {
  if (within !== 0 || length !== cs) pin.data = (pin.data as Buffer).subarray(within, within + length);
  return pin;
}

/** Views of a pinned run of `bytes` cut to the requested bytes: `skip` off the first, the excess off the last (views may span several chunks). */
function trimRun(run: ReadResult & { data: Buffer | Buffer[] }, bytes: number, skip: number, length: number): ReadResult {
  const bufs = run.data as Buffer[];
  if (skip > 0) bufs[0] = bufs[0].subarray(skip);
  const excess = bytes - skip - length;
  if (excess > 0) {
    const lastBuf = bufs[bufs.length - 1];
    bufs[bufs.length - 1] = lastBuf.subarray(0, lastBuf.length - excess);
  }
  return run;
}

export class ReadPath {
  readonly chunkSize: number;
  /** One chunk of zeroes, shared by every read of a whole hole chunk (never written to). */
  readonly zeroChunk: Buffer;
  private readonly slotsScratch = new Float64Array(8192);

  constructor(
    private readonly meta: MetaStore,
    private readonly cache: ChunkCache,
  ) {
    this.chunkSize = meta.chunkSize;
    this.zeroChunk = Buffer.alloc(this.chunkSize);
  }

  /**
   * `length` bytes at `offset` of map `r`, read for `reader` (the cache counts sharing by it; -1: the
   * daemon). When every chunk is cached or a hole: the pinned views, returned with no promise. A cached
   * 4 KiB read went through three async frames (the transmission's, read()'s, readOne()'s): their
   * promises and contexts were over half of what a read allocated (a sampling heap profile: ~2 KB a read
   * at QD32), all young garbage. Otherwise a promise that loads what is missing, from the slots found here.
   */
  read(r: RootRecord, offset: number, length: number, reader: number): ReadResult | Promise<ReadResult> {
    const cs = this.chunkSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + length - 1) / cs);
    const skip = offset - first * cs;
    let res: ReadResult;
    if (first === last) {
      const v = lookup(this.meta, r, first);
      if (!isStored(v)) res = new OwnBytes(skip === 0 && length === cs ? this.zeroChunk : Buffer.alloc(length));
      else {
        const pin = this.cache.pinned(v, reader);
        if (!pin) return this.loadOne(r, v, offset, length, reader);
        res = trimOne(pin, skip, length, cs);
      }
    } else {
      const n = last - first + 1;
      const slots = this.slotsOf(r, first, last, n <= this.slotsScratch.length ? this.slotsScratch : new Float64Array(n));
      // Hot path: every chunk cached. Reply with views of the pinned arena frames: no copy, and
      // no reply buffer per request (with 16 clients reading, per-request buffers grew the
      // daemon's memory 1.7x in the clone-storm benchmark). Released after the socket write.
      const run = this.cache.pinnedRun(slots, n, reader, this.zeroChunk);
      if (!run) return this.loadRun(r, slots.slice(0, n), offset, length, reader); // the scratch is shared: a copy
      res = trimRun(run, n * cs, skip, length);
    }
    // Once per read: a miss readahead and the slots freed meanwhile. Their failure (a map node that
    // cannot be read) fails the read, and must not leave its frames pinned.
    try {
      this.maybeReadAhead(r, reader, offset, length);
      this.meta.slots.releaseReusable();
    } catch (e) {
      res.release();
      throw e;
    }
    return res;
  }

  /** read() of one chunk, slot `v`, that was not cached: loaded into the arena, then a pinned view. */
  private async loadOne(r: RootRecord, v: number, offset: number, length: number, reader: number): Promise<ReadResult> {
    const cs = this.chunkSize;
    const within = offset % cs;
    // Taken in the turn that looked the slot up: it cannot be reused for other bytes while this loads.
    const g = this.meta.slots.enterRead();
    try {
      this.maybeReadAhead(r, reader, offset, length);
      await this.cache.load([v], reader);
      const pin = this.cache.pinned(v, reader, false); // counted by load: not a second use
      if (pin) return trimOne(pin, within, length, cs);
      const own = Buffer.allocUnsafe(cs); // every frame busy
      await this.cache.readUncached([v], [own]);
      return new OwnBytes(own.subarray(within, within + length));
    } finally {
      this.meta.slots.exitRead(g);
      this.meta.slots.releaseReusable();
    }
  }

  /** read() of several chunks, `slots` (-1: a hole), not all cached: the missing ones loaded, then views. */
  private async loadRun(r: RootRecord, slots: Float64Array, offset: number, length: number, reader: number): Promise<ReadResult> {
    const cs = this.chunkSize;
    const n = slots.length;
    const skip = offset % cs;
    const g = this.meta.slots.enterRead(); // as in loadOne
    try {
      this.maybeReadAhead(r, reader, offset, length);
      // Straight into the arena (the load counts hits and misses), then views as well: a
      // per-request buffer for cold reads grew memory with the clients.
      const stored: number[] = [];
      for (let k = 0; k < n; k++) if (slots[k] >= 0) stored.push(slots[k]);
      await this.cache.load(stored, reader);
      const run = this.cache.pinnedRun(slots, n, reader, this.zeroChunk, false);
      if (run) return trimRun(run, n * cs, skip, length);
      return new OwnBytes(await this.readCopy(slots, n, skip, length, reader)); // evicted meanwhile
    } finally {
      this.meta.slots.exitRead(g);
      this.meta.slots.releaseReusable();
    }
  }

  /** Slots of chunks first..last into `into` (-1 for holes), walking the map once per leaf. */
  private slotsOf(r: RootRecord, first: number, last: number, into: Float64Array): Float64Array {
    let leaf: Float64Array | null = null;
    for (let ci = first; ci <= last; ci++) {
      const li = ci % FANOUT;
      if (ci === first || li === 0) leaf = leafEntries(this.meta, r, ci);
      const v = leaf === null ? HOLE : leaf[li];
      into[ci - first] = isStored(v) ? v : -1;
    }
    return into;
  }

  /**
   * The copying read, when the chunks could not all be pinned at once (evicted meanwhile, or no
   * frame free): misses load into the arena, every chunk is copied into one new Buffer.
   */
  private async readCopy(slots: Float64Array, n: number, skip: number, length: number, reader: number): Promise<Buffer> {
    const cs = this.chunkSize;
    const out = Buffer.allocUnsafe(length);
    const hit = uint8s(n);
    // Counted already by the load before: copies only.
    let misses = this.cache.readChunks(slots, n, out, 0, skip, length, reader, hit, false);
    for (let k = 0; k < n; k++) {
      if (hit[k] !== 2) continue; // a hole
      out.fill(0, Math.max(0, k * cs - skip), Math.min(length, (k + 1) * cs - skip));
    }
    if (misses === 0) return out;
    const missing: number[] = [];
    for (let k = 0; k < n; k++) if (hit[k] === 0) missing.push(slots[k]);
    await this.cache.load(missing, reader);
    const again = uint8s(n);
    const rest = Float64Array.from(slots);
    for (let k = 0; k < n; k++) if (hit[k] !== 0) rest[k] = -1; // done already: skip
    misses = this.cache.readChunks(rest, n, out, 0, skip, length, reader, again, false);
    for (let k = 0; misses > 0 && k < n; k++) {
      if (again[k] !== 0) continue;
      const b = Buffer.allocUnsafe(cs);
      await this.cache.readUncached([rest[k]], [b]);
      const cStart = k * cs - skip; // position of chunk k in `out`, may be negative for k = 0
      b.copy(out, cStart + Math.max(0, -cStart), Math.max(0, -cStart), Math.min(cs, length - cStart));
    }
    return out;
  }

  /** read() for the daemon's own use (reflink, dedupe): one Buffer of its own, nothing left pinned. */
  async readBytes(r: RootRecord, offset: number, length: number): Promise<Buffer> {
    const res = await this.read(r, offset, length, -1);
    try {
      const d = res.data;
      if (Array.isArray(d)) return Buffer.concat(d, length);
      // A copy in a buffer of its own. (Buffer.from(uint8array) copies element by element in
      // Node 20: the profile showed it at 6% of write time; Buffer#copy is a memcpy.)
      const c = Buffer.allocUnsafe(d.length);
      d.copy(c);
      return c;
    } finally {
      res.release();
    }
  }

  // Sequential streams (a boot, a backup) are read ahead: when a reader's request starts where
  // its previous one ended, the chunks up to READAHEAD_BYTES past it are loaded in the background.
  // `ahead` remembers how far a stream was already read ahead, so each chunk is asked for once.
  private readonly streams = new Map<number, { end: number; ahead: number }>();
  private maybeReadAhead(r: RootRecord, reader: number, offset: number, length: number): void {
    if (reader < 0) return;
    const end = offset + length;
    const st = this.streams.get(reader);
    if (!st) {
      if (this.streams.size > 4096) this.streams.clear();
      this.streams.set(reader, { end, ahead: end });
      return;
    }
    const sequential = st.end === offset;
    st.end = end;
    if (!sequential) {
      st.ahead = end;
      return;
    }
    const cs = this.chunkSize;
    const from = Math.ceil(Math.max(end, st.ahead) / cs);
    const to = Math.min(Math.ceil(r.size / cs), Math.ceil((end + READAHEAD_BYTES) / cs));
    if (from >= to) return;
    st.ahead = to * cs;
    const slots: number[] = [];
    forEachEntry(this.meta, r, from, to, (_ci, v) => {
      if (isStored(v)) slots.push(v);
    });
    if (slots.length > 0) this.cache.readahead(slots, reader);
  }

  /** NBD_CMD_CACHE: bring the range's chunks into the cache. */
  async prefetch(r: RootRecord, offset: number, length: number, reader: number): Promise<void> {
    const cs = this.chunkSize;
    const g = this.meta.slots.enterRead();
    try {
      const slots: number[] = [];
      forEachEntry(this.meta, r, Math.floor(offset / cs), Math.floor((offset + length - 1) / cs) + 1, (_ci, v) => {
        if (isStored(v)) slots.push(v);
      });
      // In batches: a huge CACHE request must not reserve the whole arena for loads at once.
      for (let i = 0; i < slots.length; i += 1024) await this.cache.load(slots.slice(i, i + 1024), reader);
    } finally {
      this.meta.slots.exitRead(g);
    }
  }

  // ------------------------------------------------------------------ block status

  blockStatus(r: RootRecord, offset: number, length: number): Extent[] {
    const cs = this.chunkSize;
    const end = Math.min(offset + length, r.size);
    const extents: Extent[] = [];
    let pos = offset; // byte position described so far
    const push = (len: number, flags: number) => {
      if (len <= 0) return;
      const last = extents[extents.length - 1];
      if (last && last.flags === flags) last.length += len;
      else extents.push({ length: len, flags });
    };
    forEachEntry(this.meta, r, Math.floor(offset / cs), Math.ceil(end / cs), (ci, v) => {
      const cStart = Math.max(ci * cs, offset);
      const cEnd = Math.min(ci * cs + cs, end);
      push(cStart - pos, EXTENT_HOLE | EXTENT_ZERO);
      push(cEnd - cStart, v === ZERO_CHUNK ? EXTENT_ZERO : 0);
      pos = cEnd;
      return extents.length < MAX_EXTENTS;
    });
    if (extents.length < MAX_EXTENTS) push(end - pos, EXTENT_HOLE | EXTENT_ZERO);
    if (extents.length === 0) push(end - offset, EXTENT_HOLE | EXTENT_ZERO);
    return extents;
  }
}
