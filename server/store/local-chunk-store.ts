// The embedded default backend: one sparse file in the data directory, slot N at N × chunkSize.
// Slots are immutable while referenced (the metadata never rewrites a live slot), so the file
// needs no journal of its own: the metadata commit fsyncs it before it records new references.
// Reads for the cache go O_DIRECT into its frames (the arena holds a chunk once, not also the page
// cache), and so do long runs of writes inside the file (server/store/batched-writes.ts); where the
// filesystem refuses O_DIRECT (tmpfs) both are buffered and the pages dropped.
import { open as openFile, type FileHandle } from 'node:fs/promises';
import { readv as fsReadv, fdatasync, openSync, closeSync, existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { diskErrorCode, ShoalError } from '../errors.js';
import type { ChunkStore, ChunkTargets, StoreStats } from './chunk-store.js';
import { WriteBatcher } from './batched-writes.js';
import { native } from '../native.js';
import { dropCleanPages } from './page-cache.js';
import { float64s } from '../native-arrays.js';

/** The file that holds the chunks in a data directory. */
export const CHUNK_FILE = 'chunks.dat';

export class LocalChunkStore implements ChunkStore {
  /** A freed slot's place in the file is simply written again. */
  readonly reusesSlots = true;
  private reads = 0;
  private readBytes = 0;
  /** Runs of chunks written past the page cache. */
  private directWrites = 0;
  /** fdatasyncs of the chunk file begun. */
  private syncs = 0;
  // Reads in flight on readFd, and whether close() ran meanwhile: a pool thread may still pread
  // from the fd, and a closed fd number reused by another file would read its bytes into the cache.
  private activeReads = 0;
  private closed = false;

  private constructor(
    private readonly path: string,
    private readonly fh: FileHandle,
    private readonly readFd: number,
    private readonly direct: boolean,
    readonly chunkSize: number,
    /** The file opened O_DIRECT for writing, or -1 (refused, or read-only). */
    private readonly writeFd: number,
    /** The file's size, as opened and as completed writes have grown it since. */
    private fileBytes: number,
  ) {
    this.writes = new WriteBatcher({
      fd: () => this.fh.fd,
      directFd: () => this.writeFd,
      directUpTo: () => this.fileBytes,
      stage: true,
      chunkSize: this.chunkSize,
      base: 0,
      // Recorded when the write completes: a write still in flight when a sync starts is not covered
      // by it, so the next sync must see it (metadata references it only once complete). A direct
      // write left no page to drop, but the disk's cache still needs the sync's flush.
      written: (pos, bytes, direct) => {
        if (pos + bytes > this.fileBytes) this.fileBytes = pos + bytes;
        if (direct) {
          this.directDirty = true;
          this.directWrites++;
          return;
        }
        if (pos < this.dirtyFrom) this.dirtyFrom = pos;
        if (pos + bytes > this.dirtyTo) this.dirtyTo = pos + bytes;
      },
      failure: (err, at) => new ShoalError(diskErrorCode(err), `writing chunks ${at}..: ${err.message}`, { cause: err }),
    });
  }

  /**
   * Opens (creating it if needed) the chunk file in `dir`. With `readOnly` (an offline fsck)
   * nothing is created or written; a missing file is reported by check().
   */
  static async open(dir: string, chunkSize: number, opts: { readOnly?: boolean } = {}): Promise<LocalChunkStore> {
    const path = join(dir, CHUNK_FILE);
    try {
      if (opts.readOnly && !existsSync(path)) return new LocalChunkStore(path, await openFile('/dev/null', 'r'), -1, false, chunkSize, -1, 0);
      const fh = opts.readOnly
        ? await openFile(path, 'r')
        : await openFile(path, 'a+').then(async (h) => {
            // 'a+' creates without truncating; reopen read-write for positional writes.
            await h.close();
            return openFile(path, 'r+');
          });
      let readFd: number;
      let direct = true;
      try {
        readFd = native().openDirect(path);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        readFd = openSync(path, 'r');
        direct = false;
      }
      const writeFd = direct && !opts.readOnly ? native().openDirect(path, true) : -1;
      return new LocalChunkStore(path, fh, readFd, direct, chunkSize, writeFd, (await fh.stat()).size);
    } catch (e) {
      throw new ShoalError('io_error', `cannot open the chunk file in ${dir}: ${(e as Error).message}`, { cause: e });
    }
  }

  async readChunks(slots: ArrayLike<number>, targets: ChunkTargets): Promise<void> {
    const n = targets.count;
    if (n === 0) return;
    if (this.closed) throw new ShoalError('shutting_down', 'the chunk store is closed');
    const cs = this.chunkSize;
    this.activeReads++;
    try {
      // Chunks staged and not yet written are copied from memory; the rest read from the file.
      const which = this.writes.holding ? this.takeHeld(slots, targets) : null;
      if (which !== null && which.length === 0) return;
      if (targets.readFile) {
        const m = which === null ? n : which.length;
        const offsets = float64s(m);
        for (let i = 0; i < m; i++) offsets[i] = slots[which === null ? i : which[i]] * cs;
        this.reads += await targets.readFile(this.readFd, offsets, which ?? undefined);
      } else if (which !== null) {
        for (const i of which) await this.readRun(slots[i] * cs, [targets.view(i)]);
      } else {
        // Plain buffers (no cache frame was free): buffered reads, one readv per run of slots.
        let i = 0;
        while (i < n) {
          let j = i + 1;
          while (j < n && slots[j] === slots[j - 1] + 1 && j - i < 1024) j++;
          const bufs: Buffer[] = [];
          for (let k = i; k < j; k++) bufs.push(targets.view(k));
          await this.readRun(slots[i] * cs, bufs);
          i = j;
        }
      }
      this.readBytes += n * cs;
    } catch (e) {
      throw e instanceof ShoalError ? e : new ShoalError('io_error', `reading chunks from ${CHUNK_FILE}: ${(e as Error).message}`, { cause: e });
    } finally {
      if (--this.activeReads === 0 && this.closed && this.readFd >= 0) closeSync(this.readFd);
    }
  }

  /** Copies the staged chunks among `slots` into their targets; the indices of the others. */
  private takeHeld(slots: ArrayLike<number>, targets: ChunkTargets): number[] {
    const rest: number[] = [];
    for (let i = 0; i < targets.count; i++) {
      const b = this.writes.heldChunk(slots[i]);
      if (b === undefined) rest.push(i);
      else b.copy(targets.view(i));
    }
    return rest;
  }

  private readRun(pos: number, bufs: Buffer[]): Promise<void> {
    return new Promise((resolve, reject) =>
      fsReadv(this.fh.fd, bufs, pos, (err, got) => {
        if (err) return reject(err);
        this.reads++;
        // A slot past the end of the sparse file (never synced before a crash) reads as zeroes.
        for (const b of bufs) {
          if (got < b.length) b.fill(0, Math.max(0, got));
          got -= b.length;
        }
        resolve();
      }),
    );
  }

  // Writes issued in one turn of the event loop are gathered and sent as one pwritev per run of
  // consecutive slots. Slots are handed out in order, so the 32 writes of a queue-depth-32 burst
  // usually form one run: one thread-pool job instead of 32. (Profile of 4 KiB random writes: each
  // fs.write dispatch cost ~23 us on the event loop, 16% of its time.)
  private readonly writes: WriteBatcher;

  write(slot: number, data: Buffer, early = false): Promise<void> {
    return this.writes.write(slot, data, early);
  }

  // Bytes [dirtyFrom, dirtyTo) of the file were written through the page cache since the last sync
  // began; directDirty: some past it.
  private dirtyFrom = Infinity;
  private dirtyTo = 0;
  private directDirty = false;

  async sync(): Promise<void> {
    // Staged writes first (server/store/batched-writes.ts): the fdatasync below must cover them.
    try {
      await this.writes.drain();
    } catch (e) {
      throw new ShoalError('io_error', `writing staged chunks failed: ${(e as Error).message}`, { cause: e });
    }
    // Nothing written since the last sync began: nothing to make durable. (A snapshot or clone
    // commit then costs only the metadata transaction, not an fdatasync of the chunk file too.)
    if (this.dirtyTo === 0 && !this.directDirty) return;
    const synced = { from: this.dirtyFrom, to: this.dirtyTo };
    this.dirtyFrom = Infinity;
    this.dirtyTo = 0;
    this.directDirty = false;
    this.syncs++;
    return new Promise<void>((resolve, reject) =>
      fdatasync(this.fh.fd, (err) => {
        if (err) return reject(new ShoalError('io_error', `fdatasync of the chunk file failed: ${err.message}`));
        // Written chunks are clean now: drop them from the page cache, so memory holds each chunk
        // once (in the shared cache arena), not also as page cache (it cannot drop dirty pages,
        // hence after the sync).
        // Only the range written since the last sync: over a whole multi-GiB file the call
        // walks (and starts writeback of) far more than the commit wrote.
        const { from, to } = synced;
        if (to > from) dropCleanPages(this.fh.fd, from, to - from);
        resolve();
      }),
    );
  }

  async check(live: { count: number; maxSlot: number }): Promise<string[]> {
    const path = this.path;
    if (live.count === 0) return [];
    if (!existsSync(path)) return [`the chunk file ${path} is missing`];
    const size = statSync(path).size;
    // A slot past the end reads as zeroes only if it was never written: live chunks must be inside.
    if (size < (live.maxSlot + 1) * this.chunkSize) return [`the chunk file is ${size} bytes, too short for chunk ${live.maxSlot}`];
    return [];
  }

  stats(): StoreStats {
    return { kind: 'local', reads: this.reads, readBytes: this.readBytes, direct: this.direct, directWrites: this.directWrites, stagedWrites: this.writes.stagedWrites, syncs: this.syncs };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.writes.whenIdle();
    if (this.activeReads === 0 && this.readFd >= 0) closeSync(this.readFd);
    if (this.writeFd >= 0) closeSync(this.writeFd);
    await this.fh.close();
  }
}
