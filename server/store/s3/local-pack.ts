// One pack's file in the local tier. While the pack is open, chunks are written straight to their final
// place (chunk i at HEADER_BYTES + i × chunkSize), so sealing only adds the header, the index and the
// trailer: the file is then byte for byte the object that is uploaded. Until then each chunk's slot is
// also written past the largest place the pack can take (the ids area, cut off by the seal), so a pack
// left open by a crash can be sealed by the next process. After the upload the file stays as
// a cached copy. A pack fetched from the bucket is cached as a sparse copy, with a map of the chunks
// present: chunk i at i × chunkSize (no header, so every chunk is page-aligned), written and read O_DIRECT
// where the filesystem allows. Writes issued in one turn of the event loop go out as one pwritev per run
// of indexes.
import type { ChunkTargets } from '../chunk-store.js';
import { closeSync, fdatasync, ftruncate, openSync, readv as fsReadv, renameSync, unlinkSync, fstatSync, readSync } from 'node:fs';
import { diskErrorCode, ShoalError } from '../../errors.js';
import { native } from '../../native.js';
import { WriteBatcher, writeAll } from '../batched-writes.js';
import { dropCleanPages } from '../page-cache.js';
import { HEADER_BYTES, INDEX_ENTRY_BYTES, TRAILER_BYTES, encodeHeader, encodeIndex, packSize, parseHeader, parseIndex, parseTrailer, type PackEntry } from './pack-format.js';

export type PackState = 'open' | 'sealed' | 'cached';

export class LocalPack {
  /** Chunks placed in the file (open: assigned so far). */
  count: number;
  /** Slot of each chunk (open packs, until sealed). */
  private ids: number[] = [];
  /** For a sparse copy of a remote pack: which chunks are in the file. null: all of them. */
  present: Uint8Array | null = null;
  /** Completed writes not yet made durable by sync(). */
  private dirty = false;
  private inflight = 0;
  private readonly writes: WriteBatcher;
  /** Slots of this.ids already in the ids area; sync() writes the rest. */
  private idsWritten = 0;
  private syncs: Promise<void> = Promise.resolve();
  private idle: Array<() => void> = [];
  private closed = false;
  private activeReads = 0;
  /**
   * The CRC-32 of each chunk this process appended, taken as it is appended, for the index at seal
   * (~0.1 s per GiB on the event loop, where summing at seal on the pool cost ~0.4 s plus a read-back of
   * the whole pack). null for a pack recovered after a crash: its chunks are summed from the file.
   */
  private crcs: Uint32Array | null = null;
  /** Drop the pages of synced data from the page cache (see dropWhenSynced). */
  private dropSynced = false;
  /** Chunks [0, droppedTo) of an open pack were synced and dropped from the page cache. */
  private droppedTo = 0;
  /** Bytes fetched into a sparse copy since its last sync. */
  private unsynced = 0;
  /**
   * A sparse copy's O_DIRECT descriptor (-1: none, or the filesystem refused it). Its chunks are written
   * from the fetcher's page-aligned buffers and read into the cache's frames without the page cache: a
   * buffered copy cost ~1.4 s of kernel copying per GiB read cold on this VM (new page-cache pages are
   * slow to touch here), plus a sync and a drop every 4 MiB. A copy is not kept over a restart, so
   * nothing here needs an fdatasync.
   */
  private directFd = -1;

  private constructor(
    readonly id: number,
    readonly epoch: number,
    public path: string,
    private fd: number,
    readonly chunkSize: number,
    public state: PackState,
    count: number,
    /** Most chunks the pack may hold (where its ids area starts). */
    private readonly capacity: number,
    /** Where chunk 0 is in the file: after the header (a pack as uploaded), or at 0 (a sparse copy). */
    private readonly base = HEADER_BYTES,
  ) {
    this.writes = new WriteBatcher({
      fd: () => this.fd,
      chunkSize: this.chunkSize,
      base,
      written: () => (this.dirty = true),
      failure: (err) => this.writeError(err, 'chunks'),
    });
    this.count = count;
  }

  /** A new open pack (the file is created, or emptied if a dead process left one). */
  static create(id: number, epoch: number, path: string, chunkSize: number, capacity: number): LocalPack {
    const p = new LocalPack(id, epoch, path, openFile(path, 'w+'), chunkSize, 'open', 0, capacity);
    p.crcs = new Uint32Array(capacity);
    return p;
  }

  /** An empty sparse copy of a remote pack of `chunks` chunks, to be filled by fetched ranges. */
  static sparse(id: number, epoch: number, path: string, chunkSize: number, chunks: number): LocalPack {
    const p = new LocalPack(id, epoch, path, openFile(path, 'w+'), chunkSize, 'cached', chunks, chunks, 0);
    p.present = new Uint8Array(chunks);
    p.dropSynced = true;
    try {
      p.directFd = native().openDirect(path, true);
    } catch {
      /* tmpfs and the like: buffered, synced and dropped every SPARSE_SYNC_BYTES */
    }
    return p;
  }

  /**
   * A pack file left by an earlier process. A sealed one is checked (header, trailer, index) and returned
   * sealed; an unsealed one is returned open, its chunks' slots read back from its ids area, for the caller
   * to seal.
   */
  static recover(id: number, epoch: number, path: string, chunkSize: number, capacity: number): LocalPack {
    const fd = openFile(path, 'r+');
    try {
      const size = fstatSync(fd).size;
      const sealed = readSealed(fd, size, path);
      if (sealed) return new LocalPack(id, epoch, path, fd, chunkSize, 'sealed', sealed.length, capacity);
      const ids = Buffer.alloc(capacity * ID_BYTES);
      readSync(fd, ids, 0, ids.length, idsOffset(capacity, chunkSize));
      let count = 0;
      while (count < capacity && ids.readUIntLE(count * ID_BYTES, 6) !== 0) count++;
      const p = new LocalPack(id, epoch, path, fd, chunkSize, 'open', count, capacity);
      for (let i = 0; i < count; i++) p.ids.push(ids.readUIntLE(i * ID_BYTES, 6));
      p.idsWritten = count;
      return p;
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** The slot of each chunk of an open pack. */
  get slots(): readonly number[] {
    return this.ids;
  }

  /** Bytes the file takes (all chunks for a staged pack, present ones for a sparse copy). */
  get bytes(): number {
    if (!this.present) return this.state === 'open' ? HEADER_BYTES + this.count * this.chunkSize : packSize(this.count, this.count * this.chunkSize);
    let n = 0;
    for (const p of this.present) n += p;
    return n * this.chunkSize;
  }

  /** Whether chunk `index` can be read from the file. */
  has(index: number): boolean {
    return index < this.count && (this.present === null || this.present[index] === 1);
  }

  /**
   * Places `n` chunks (slots first.. , bytes in data) at the end of the open pack: their first index.
   * Their slots reach the ids area at the next sync(), not now: that page is rewritten by every append,
   * and a write into a page the last fdatasync is still writing back waits for the disk (stable pages),
   * which cost the event loop 0.36 ms per MiB written. Nothing needs them sooner: only a commit, after a
   * sync(), may name a chunk, and a recovery ignores chunks no commit names.
   */
  append(first: number, data: Buffer, n: number): { index: number; written: Promise<void> } {
    const index = this.count;
    this.count += n;
    for (let k = 0; k < n; k++) this.ids.push(first + k);
    if (this.crcs) native().crc32ChunksInto(data, this.chunkSize, this.crcs, index);
    return { index, written: this.write(index, data) };
  }

  /**
   * Writes chunks from `index` on (appended chunks, or fetched ones into a sparse copy). A sparse copy's
   * data must be page-aligned (the fetcher's buffers): it goes O_DIRECT, one pwrite on the thread pool.
   */
  write(index: number, data: Buffer): Promise<void> {
    if (this.closed) return Promise.reject(new ShoalError('shutting_down', 'the local tier is closed'));
    this.inflight++;
    const written = this.directFd >= 0 ? writeAll(this.directFd, [data], this.base + index * this.chunkSize) : this.writes.write(index, data);
    return written.finally(() => {
      if (--this.inflight === 0) for (const fn of this.idle.splice(0)) fn();
    });
  }

  /**
   * Marks chunks [index, index + n) of a sparse copy present once written. A copy without O_DIRECT is
   * synced in the background every SPARSE_SYNC_BYTES fetched, which drops those pages (see
   * dropWhenSynced): the shared cache holds the chunks just read, and a pack's copy is read again only
   * once they have left it.
   */
  markPresent(index: number, n: number): void {
    if (!this.present) return;
    this.present.fill(1, index, index + n);
    if (this.directFd >= 0) return; // nothing in the page cache to drop
    this.unsynced += n * this.chunkSize;
    if (this.unsynced >= SPARSE_SYNC_BYTES) {
      this.unsynced = 0;
      this.sync().catch(() => {}); // advisory: a copy evicted meanwhile has no pages left to drop
    }
  }

  /**
   * From now on each sync() also drops the pages it made clean from the page cache. Memory here pays for
   * every page the page cache takes that it has not used before (a first touch of RAM the hypervisor has
   * not backed yet: 1 GiB written into files kept cached cost ~1.2 s of kernel copy against ~0.2 s when
   * each synced range was dropped and its pages taken again), and these bytes need not be in RAM twice:
   * the shared cache holds what was written. For a pack whose upload waits (async mode): its upload reads
   * it back from the disk.
   */
  dropWhenSynced(): void {
    this.dropSynced = true;
  }

  /** Resolves once no write is in flight. */
  settled(): Promise<void> {
    return this.inflight === 0 ? Promise.resolve() : new Promise((r) => this.idle.push(r));
  }

  /**
   * Reads chunks indexes[k] into bufs[k] (each chunkSize bytes), consecutive indexes in one readv. With
   * `frames` (bufs[k] is target frames.at[k] of cache frames that can be read from a file), a sparse copy
   * is read O_DIRECT straight into them.
   */
  async read(indexes: ArrayLike<number>, bufs: Buffer[], frames?: { targets: ChunkTargets; at: number[] }): Promise<void> {
    if (this.closed) throw new ShoalError('shutting_down', 'the local tier is closed');
    this.activeReads++;
    try {
      const cs = this.chunkSize;
      if (this.directFd >= 0 && frames?.targets.readFile) {
        const offsets = new Float64Array(indexes.length);
        for (let k = 0; k < indexes.length; k++) offsets[k] = this.base + indexes[k] * cs;
        await frames.targets.readFile(this.directFd, offsets, frames.at);
        return;
      }
      let i = 0;
      while (i < indexes.length) {
        let j = i + 1;
        while (j < indexes.length && indexes[j] === indexes[j - 1] + 1 && j - i < 1024) j++;
        const pos = this.base + indexes[i] * cs;
        const got = await readvAt(this.fd, bufs.slice(i, j), pos);
        if (got < (j - i) * cs) throw new ShoalError('io_error', `${this.path} is cut short: chunk ${indexes[i] + Math.floor(got / cs)} is missing`);
        i = j;
      }
      // The shared cache holds these bytes now: keep them once, not also in the page cache.
      if (this.state !== 'open' && indexes.length > 0) dropCleanPages(this.fd, this.base + indexes[0] * cs, (indexes[indexes.length - 1] - indexes[0] + 1) * cs);
    } finally {
      this.activeReads--;
      this.maybeClose();
    }
  }

  /**
   * Seals the open pack: writes the header, index and trailer (the data is in place already) and, with
   * `durable`, fsyncs the file. Returns the pack's length.
   */
  async seal(durable: boolean): Promise<number> {
    if (this.state !== 'open') throw new ShoalError('internal', `pack ${this.id} is not open`);
    await this.settled();
    this.state = 'sealed';
    // A sync that began while the pack was open may still be writing ids: the truncate below must follow it.
    await this.syncs;
    const n = this.count;
    if (n === 0) throw new ShoalError('internal', `pack ${this.id} is empty`);
    const cs = this.chunkSize;
    const dataBytes = n * cs;
    // The chunks' bytes are in place already: the header before them, the index and trailer after.
    const crcs = this.crcs ?? (await this.sumFromFile(n));
    const entries: PackEntry[] = [];
    for (let i = 0; i < n; i++) entries.push({ id: this.ids[i], offset: HEADER_BYTES + i * cs, length: cs, crc32: crcs[i] });
    const tail = encodeIndex(entries, HEADER_BYTES + dataBytes);
    await writeAll(this.fd, [encodeHeader(n, dataBytes)], 0);
    await writeAll(this.fd, [tail], HEADER_BYTES + dataBytes);
    await truncate(this.fd, HEADER_BYTES + dataBytes + tail.length); // the ids area goes
    if (durable) await this.sync(true);
    this.ids = [];
    this.crcs = null;
    return HEADER_BYTES + dataBytes + tail.length;
  }

  /**
   * The CRC-32 of the first n chunks as the file holds them, on the thread pool (a recovered pack); a chunk
   * whose bytes never reached the file (a crash between its two writes) reads as zeroes.
   */
  private async sumFromFile(n: number): Promise<Uint32Array> {
    const cs = this.chunkSize;
    const data = Buffer.allocUnsafe(n * cs);
    const got = await readvAt(this.fd, [data], HEADER_BYTES);
    if (got < data.length) data.fill(0, got);
    const sums = await native().crc32Chunks(data, cs);
    const out = new Uint32Array(n);
    for (let i = 0; i < n; i++) out[i] = sums.readUInt32LE(i * 4);
    return out;
  }

  /** The index of a sealed pack whose file is whole (null for a sparse copy, or if it cannot be read). */
  entries(): PackEntry[] | null {
    if (this.present !== null || this.state === 'open' || this.closed) return null;
    try {
      return readSealed(this.fd, fstatSync(this.fd).size, this.path);
    } catch {
      return null;
    }
  }

  /** The whole sealed pack, for its upload. */
  async readAll(): Promise<Buffer> {
    const size = fstatSync(this.fd).size;
    const buf = Buffer.allocUnsafe(size);
    const got = await readvAt(this.fd, [buf], 0);
    if (got !== size) throw new ShoalError('io_error', `${this.path}: read ${got} of ${size} bytes`);
    dropCleanPages(this.fd, 0, size);
    return buf;
  }

  /** A failed write into the file: no_space for a full disk, else io_error, naming what was written. */
  private writeError(err: NodeJS.ErrnoException, what: string): ShoalError {
    return new ShoalError(diskErrorCode(err), `writing ${what} into ${this.path}: ${err.message}`, { cause: err });
  }

  /**
   * Makes completed writes durable: the slots appended since the last sync go into the ids area (an open
   * pack), then fdatasync if anything changed (or always, with `force`). Syncs run one after another, so
   * each caller's sync starts after its call (a caller never returns on another's sync still in flight).
   */
  sync(force = false): Promise<void> {
    const p = this.syncs.then(() => this.syncNow(force));
    this.syncs = p.catch(() => {});
    return p;
  }

  private async syncNow(force: boolean): Promise<void> {
    if (this.state === 'open' && this.ids.length > this.idsWritten) {
      const from = this.idsWritten;
      const to = this.ids.length;
      const buf = Buffer.alloc((to - from) * ID_BYTES);
      for (let k = from; k < to; k++) buf.writeUIntLE(this.ids[k], (k - from) * ID_BYTES, 6);
      await writeAll(this.fd, [buf], idsOffset(this.capacity, this.chunkSize) + from * ID_BYTES).catch((err: NodeJS.ErrnoException) => {
        throw this.writeError(err, 'chunk ids');
      });
      this.idsWritten = to;
      this.dirty = true;
    }
    if (!this.dirty && !force) return;
    this.dirty = false;
    // What this sync covers: the chunks appended (or fetched) before it starts.
    const upTo = this.count;
    await new Promise<void>((resolve, reject) =>
      fdatasync(this.fd, (err) => (err ? reject(new ShoalError('io_error', `fdatasync of ${this.path} failed: ${err.message}`)) : resolve())),
    );
    if (!this.dropSynced || this.fd < 0) return;
    if (this.state !== 'open') dropCleanPages(this.fd, 0, packSize(this.count, this.count * this.chunkSize));
    else if (upTo > this.droppedTo) {
      // From the file's start each time: the page cache holds large folios, and one that begins before the
      // range is kept whole (a range from the last sync's end left up to 1 MiB behind, never dropped). Pages
      // still dirty (written after the sync began) stay for the next sync, and so does the ids area past
      // the data, which every sync rewrites a few bytes of.
      dropCleanPages(this.fd, 0, HEADER_BYTES + upTo * this.chunkSize);
      this.droppedTo = upTo;
    }
  }

  /** Moves the file (it stays open). */
  moveTo(path: string): void {
    renameSync(this.path, path);
    this.path = path;
  }

  /** Deletes the file (its descriptor closes once reads in flight are done). */
  remove(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      unlinkSync(this.path);
    } catch {
      /* gone already */
    }
    this.maybeClose();
  }

  /** Closes the descriptor, keeping the file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.maybeClose();
  }

  private maybeClose(): void {
    if (this.closed && this.activeReads === 0 && this.inflight === 0 && this.fd >= 0) {
      for (const fd of this.directFd >= 0 ? [this.fd, this.directFd] : [this.fd]) {
        try {
          closeSync(fd);
        } catch {
          /* already */
        }
      }
      this.fd = -1;
      this.directFd = -1;
    }
  }
}

/** A sparse copy is synced, and its pages dropped, every this many bytes fetched into it. */
const SPARSE_SYNC_BYTES = 4 * 2 ** 20;

/** A chunk's slot in the ids area: u48 LE, padded to 8 bytes. */
const ID_BYTES = 8;

/** Where the ids area starts: past the largest sealed pack of `capacity` chunks. */
function idsOffset(capacity: number, chunkSize: number): number {
  return packSize(capacity, capacity * chunkSize);
}

function truncate(fd: number, length: number): Promise<void> {
  return new Promise((resolve, reject) => ftruncate(fd, length, (err) => (err ? reject(new ShoalError('io_error', `truncating a pack file: ${err.message}`)) : resolve())));
}

/** The index of a sealed pack file, or null if it is not sealed (no valid trailer). */
function readSealed(fd: number, size: number, path: string): PackEntry[] | null {
  if (size < HEADER_BYTES + TRAILER_BYTES) return null;
  const tail = Buffer.allocUnsafe(TRAILER_BYTES);
  readFully(fd, tail, size - TRAILER_BYTES);
  try {
    const trailer = parseTrailer(tail, size, path);
    const header = Buffer.allocUnsafe(HEADER_BYTES);
    readFully(fd, header, 0);
    parseHeader(header, path);
    const index = Buffer.allocUnsafe(trailer.count * INDEX_ENTRY_BYTES);
    readFully(fd, index, trailer.indexOffset);
    return parseIndex(index, trailer, path);
  } catch (e) {
    if (e instanceof ShoalError && e.code === 'corrupt_pack') return null;
    throw e;
  }
}

function openFile(path: string, flags: string): number {
  try {
    return openSync(path, flags);
  } catch (e) {
    throw new ShoalError('io_error', `cannot open ${path}: ${(e as Error).message}`, { cause: e });
  }
}

function readFully(fd: number, buf: Buffer, pos: number): void {
  let off = 0;
  while (off < buf.length) {
    const n = readSync(fd, buf, off, buf.length - off, pos + off);
    if (n === 0) throw new ShoalError('io_error', `unexpected end of file at ${pos + off}`);
    off += n;
  }
}

function readvAt(fd: number, bufs: Buffer[], pos: number): Promise<number> {
  return new Promise((resolve, reject) => fsReadv(fd, bufs, pos, (err, n) => (err ? reject(new ShoalError('io_error', `reading a pack file: ${err.message}`, { cause: err })) : resolve(n))));
}
