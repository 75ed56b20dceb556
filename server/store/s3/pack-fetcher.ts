// Reads of chunks that are neither in RAM nor on the local disk: byte ranges of pack objects. The chunks a
// read asks of one pack are merged into ranges (small gaps are read through rather than split into more
// requests), the ranges fetched in parallel, each chunk checked against the pack's index (its CRC32, read
// once per pack with the tail of the object and kept), and written into the pack's cached copy on the local
// disk for the next reader. A chunk already being fetched is waited for, not fetched again: concurrent
// readers of one image read each of its packs from the bucket once.
import { ShoalError } from '../../errors.js';
import type { S3Bucket } from './s3-bucket.js';
import type { LocalTier } from './local-tier.js';
import { HEADER_BYTES, INDEX_ENTRY_BYTES, TRAILER_BYTES, parseIndex, parseTrailer, verifyCrcs, type PackEntry } from './pack-format.js';
import { native } from '../../native.js';
import { packObjectKey } from './pack-records.js';
import { FetchBuffers } from './fetch-buffers.js';

/** Chunks between two wanted ones that are read through (one request) rather than skipped (two). */
const MERGE_GAP_BYTES = 256 * 1024;
/**
 * A read of at least SEQUENTIAL_BYTES from one pack (a streaming reader: a copy, a boot) fetches the whole
 * aligned WINDOW_BYTES around it, so the reader's next requests find their chunks in flight or on the local
 * disk instead of each costing a GET's latency; smaller (random) reads fetch only what they ask.
 */
const SEQUENTIAL_BYTES = 128 * 1024;
const WINDOW_BYTES = 2 * 2 ** 20;
/** GETs in flight at once, for all readers. */
const MAX_PARALLEL_GETS = 16;
/** Pack indexes kept in memory (a 4 KiB-chunk pack's is 2,048 entries). */
const INDEX_CACHE_PACKS = 1024;

interface Fetch {
  from: number;
  to: number;
  body: Promise<Buffer>;
}

export interface RemotePack {
  id: number;
  epoch: number;
  /** Chunks it holds, if known (a read is widened only within them). */
  chunks?: number;
}

export class PackFetcher {
  private readonly indexes = new Map<number, Promise<PackEntry[]>>();
  /** Ranges being fetched, by pack. */
  private readonly inflight = new Map<number, Fetch[]>();
  private active = 0;
  private readonly queue: Array<() => void> = [];
  /** What ranges are read into: one window each, reused (two GETs' worth kept per GET in flight, ≤ 64 MiB). */
  private readonly buffers: FetchBuffers;
  /** GETs of chunk data, and bytes they brought. */
  gets = 0;
  bytes = 0;

  constructor(
    private readonly bucket: S3Bucket,
    private readonly prefix: string,
    private readonly chunkSize: number,
    private readonly tier: LocalTier,
    /** Most chunks a pack holds: how much of an object's tail its index may take. */
    private readonly maxChunks: number,
  ) {
    this.buffers = new FetchBuffers(Math.max(1, Math.floor(WINDOW_BYTES / chunkSize)) * chunkSize, 2 * MAX_PARALLEL_GETS);
  }

  /** Fills bufs[k] with chunk indexes[k] of `pack` (indexes sorted, distinct). */
  async read(pack: RemotePack, indexes: number[], bufs: Buffer[]): Promise<void> {
    // The chunks each range serves, copied out in one callback per range (not a promise per chunk: a
    // streaming read asks for 64 chunks a request).
    const served = new Map<Fetch, { idx: number[]; into: Buffer[] }>();
    const copy = (range: Fetch, idx: number, into: Buffer) => {
      let s = served.get(range);
      if (!s) served.set(range, (s = { idx: [], into: [] }));
      s.idx.push(idx);
      s.into.push(into);
    };
    const flying = this.inflight.get(pack.id);
    const missing: number[] = [];
    const missingAt: number[] = [];
    for (let k = 0; k < indexes.length; k++) {
      const f = flying?.find((r) => r.from <= indexes[k] && indexes[k] < r.to);
      if (f) copy(f, indexes[k], bufs[k]);
      else {
        missing.push(indexes[k]);
        missingAt.push(k);
      }
    }
    const cs = this.chunkSize;
    const gap = Math.max(1, Math.floor(MERGE_GAP_BYTES / cs));
    let i = 0;
    while (i < missing.length) {
      let j = i + 1;
      while (j < missing.length && missing[j] - missing[j - 1] <= gap) j++;
      const range = this.start(pack, ...this.widen(pack, missing[i], missing[j - 1] + 1));
      for (let k = i; k < j; k++) copy(range, missing[k], bufs[missingAt[k]]);
      i = j;
    }
    const waits: Array<Promise<void>> = [];
    for (const [range, s] of served) {
      waits.push(
        range.body.then((b) => {
          for (let k = 0; k < s.idx.length; k++) b.copy(s.into[k], 0, (s.idx[k] - range.from) * cs, (s.idx[k] - range.from + 1) * cs);
        }),
      );
    }
    await Promise.all(waits);
  }

  /** [from, to) widened to its aligned window for a streaming read (not over chunks already in flight). */
  private widen(pack: RemotePack, from: number, to: number): [number, number] {
    const cs = this.chunkSize;
    if ((to - from) * cs < SEQUENTIAL_BYTES || pack.chunks === undefined) return [from, to];
    const w = Math.max(1, Math.floor(WINDOW_BYTES / cs));
    let a = Math.floor(from / w) * w;
    let b = Math.min(pack.chunks, Math.max(to, a + w));
    for (const f of this.inflight.get(pack.id) ?? []) {
      if (f.to <= from && f.to > a) a = f.to;
      if (f.from >= to && f.from < b) b = f.from;
    }
    return [Math.min(a, from), Math.max(b, to)];
  }

  /** Starts fetching chunks [from, to) of a pack; later readers of them wait for it. */
  private start(pack: RemotePack, from: number, to: number): Fetch {
    const buf = this.buffers.take((to - from) * this.chunkSize);
    const fetched = this.fetchRange(pack, from, to, buf);
    const f: Fetch = { from, to, body: fetched.then((r) => r.body) };
    let list = this.inflight.get(pack.id);
    if (!list) this.inflight.set(pack.id, (list = []));
    list.push(f);
    const done = () => {
      const l = this.inflight.get(pack.id);
      if (!l) return;
      l.splice(l.indexOf(f), 1);
      if (l.length === 0) this.inflight.delete(pack.id);
    };
    // Readers find the range here until its chunks are in the local copy (else one arriving in between
    // would fetch them again). Then the buffer is reused once nothing reads it: readers copy out in
    // reactions to the settled body, queued as they find it, so all run before the next setImmediate.
    const finish = () => {
      done();
      setImmediate(() => this.buffers.give(buf));
    };
    fetched.then((r) => (r.kept ?? Promise.resolve()).then(finish, finish), finish);
    f.body.catch(() => {}); // its readers get the error; a range is never left without one, but never unhandled
    return f;
  }

  /**
   * Chunks [from, to) of a pack, read into `buf` and checked; `kept` is their write into the pack's cached
   * copy, if one was started.
   */
  private async fetchRange(pack: RemotePack, from: number, to: number, buf: Buffer): Promise<{ body: Buffer; kept: Promise<void> | undefined }> {
    const cs = this.chunkSize;
    const key = packObjectKey(this.prefix, pack.epoch, pack.id);
    const index = this.index(pack);
    const obj = await this.limited(() => this.bucket.get(key, { offset: HEADER_BYTES + from * cs, length: (to - from) * cs }, buf));
    if (!obj) throw new ShoalError('io_error', `${this.bucket.url(key)} is missing from the bucket: chunks of pack ${pack.id} cannot be read`);
    this.gets++;
    this.bytes += obj.body.length;
    const entries = await index;
    if (obj.body.length !== (to - from) * cs || to > entries.length) throw new ShoalError('corrupt_pack', `${this.bucket.url(key)} is not a valid pack: chunks ${from}..${to - 1} are not all in it.`);
    // Checked on the thread pool: zlib.crc32 of every chunk on the event loop was ~0.3 s per GiB read.
    verifyCrcs(await native().crc32Chunks(obj.body, cs), entries, from, this.bucket.url(key));
    return { body: obj.body, kept: this.keepLocally(pack, entries.length, from, obj.body) };
  }

  /** Writes fetched chunks into the pack's cached copy, if the local tier has room (best effort). */
  private keepLocally(pack: RemotePack, chunks: number, from: number, body: Buffer): Promise<void> | undefined {
    const copy = this.tier.sparse(pack.id, pack.epoch, this.chunkSize, chunks, body.length);
    if (!copy || copy.state !== 'cached' || copy.present === null) return undefined;
    const n = body.length / this.chunkSize;
    return copy.write(from, body).then(
      () => {
        let added = 0;
        for (let i = from; i < from + n; i++) if (copy.present![i] === 0) added++;
        copy.markPresent(from, n);
        this.tier.grew(added * this.chunkSize);
      },
      () => {}, // a copy that could not be written is simply not used
    );
  }

  /** The pack's index, read once with the object's tail and kept for the next reads. */
  index(pack: RemotePack): Promise<PackEntry[]> {
    let p = this.indexes.get(pack.id);
    if (p) {
      this.indexes.delete(pack.id);
      this.indexes.set(pack.id, p);
      return p;
    }
    p = this.readIndex(pack);
    this.indexes.set(pack.id, p);
    p.catch(() => this.indexes.get(pack.id) === p && this.indexes.delete(pack.id));
    if (this.indexes.size > INDEX_CACHE_PACKS) this.indexes.delete(this.indexes.keys().next().value!);
    return p;
  }

  /** Forgets a pack (deleted, or rewritten by compaction). */
  forget(id: number): void {
    this.indexes.delete(id);
  }

  private async readIndex(pack: RemotePack): Promise<PackEntry[]> {
    const key = packObjectKey(this.prefix, pack.epoch, pack.id);
    const url = this.bucket.url(key);
    const tail = await this.limited(() => this.bucket.get(key, { suffix: this.maxChunks * INDEX_ENTRY_BYTES + TRAILER_BYTES }));
    if (!tail) throw new ShoalError('io_error', `${url} is missing from the bucket: chunks of pack ${pack.id} cannot be read`);
    const trailer = parseTrailer(tail.body.subarray(tail.body.length - TRAILER_BYTES), tail.size, url);
    const start = tail.size - tail.body.length;
    let index: Buffer;
    if (trailer.indexOffset >= start) index = tail.body.subarray(trailer.indexOffset - start, tail.body.length - TRAILER_BYTES);
    else {
      // A pack of more chunks than this daemon makes (another chunk size or pack size wrote it).
      const rest = await this.limited(() => this.bucket.get(key, { offset: trailer.indexOffset, length: trailer.count * INDEX_ENTRY_BYTES }));
      if (!rest) throw new ShoalError('io_error', `${url} disappeared while its index was read`);
      index = rest.body;
    }
    return parseIndex(index, trailer, url);
  }

  private async limited<T>(fn: () => Promise<T>): Promise<T> {
    if (this.active >= MAX_PARALLEL_GETS) await new Promise<void>((r) => this.queue.push(r));
    this.active++;
    try {
      return await fn();
    } finally {
      this.active--;
      this.queue.shift()?.();
    }
  }
}
