// The flush journal: what makes a FLUSH (or a FUA write) cost one small synchronous write.
//
// A metadata commit costs an fdatasync of the chunk file and an LMDB transaction (its pages, an
// fdatasync, then its meta page): ~1.1 ms for a 4 KiB write at QD1, against ~0.3 ms for a qcow2
// overlay's one fdatasync, and a commit carries every volume's changes since the last one. So a
// FLUSH does not commit. It appends the operations its volume completed since the last commit (the
// writes with their bytes, trims, zeroes) to this journal, one record with O_DSYNC, and answers. A
// snapshot or a clone is journaled the same way, as an operation of its volume (durable-change.ts).
// Commits go on in the background (commit-scheduler.ts); once one is durable, every operation it
// covers is dropped from memory. The file is two halves: records go into one until it fills, then
// into the other once a durable commit covers everything in that one (a background commit is asked
// for when the half in use is half full), and into the start of the same half whenever a commit
// covers all of it; so under a steady stream of FLUSHes the journal never waits for a commit.
//
// After a crash, the operations the last commit does not cover (the superblock's journalApplied) are
// replayed through the write path, in order, before anything is served: a redo log of logical
// operations, so replay needs none of the pre-crash placement (slots, dedup) and lands on any
// consistent metadata. Operations of one volume keep their order; different volumes' commute.
//
// Only writes of at most MAX_OP_BYTES are kept for the journal, at most RETAIN_BYTES of them at a
// time (bulk writes pay a commit per FLUSH as before, but their commit is cheap per byte), and only on
// a volume that was flushed in the last SYNC_WINDOW_MS (a writer that never flushes pays no copies);
// a volume with an operation not kept makes its FLUSH commit until a commit covers it.
import { closeSync, constants, fsyncSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ShoalError } from '../errors.js';
import { formatSize } from '../size.js';
import type { CommitPart } from '../meta/commit-pipeline.js';
import type { MetaStore } from '../meta/meta-store.js';
import { writeAll } from '../store/batched-writes.js';
import { payloads } from '../payload-pool.js';
import { native } from '../native.js';
import { decodeRecords, encodeRecord, recordSize, type JournalOp, type JournalOpKind, type JournalRecord, type VolumeOp } from './flush-journal-format.js';
import type { WritableMap } from './volume-state.js';
import type { WritePath } from './write-path.js';

const FLUSH_JOURNAL_FILE = 'flush-journal';
/** Written larger than this, an operation is not kept: its volume's next FLUSH commits. */
const MAX_OP_BYTES = 1024 * 1024;
/** Bytes of written data kept in memory for FLUSHes to come (at most twice this held: see keep()). */
const RETAIN_BYTES = 32 * 1024 * 1024;
/** Operations are kept for a volume flushed this recently (a filesystem's journal flushes every few seconds). */
const SYNC_WINDOW_MS = 30_000;
/**
 * On a volume flushed this recently (a database syncing every write), a write goes into the journal
 * as it arrives (writeEarly), or at once when it completes: the FLUSH that follows finds its record
 * written or on the way (qcow2's FLUSH is one fdatasync; ours would otherwise be the record's write
 * after the write's reply).
 */
const EAGER_WINDOW_MS = 10;
/**
 * Each half of the file; a FLUSH that finds its half full and the other not yet covered commits. A
 * sync writer fills a half in a few seconds (4 KiB FUA writes at queue depth 1: ~12 MB/s of 4,608-byte
 * records), and a commit starts once it is three quarters full (writeBatch): at 8 MiB that meant a commit
 * every ~0.5 s whatever the commit scheduler's batch, each a burst of writes that FUA writes queue behind
 * (commit-scheduler.ts, WRITE_COMMIT_BATCH).
 */
const HALF_BYTES = 32 * 1024 * 1024;
/** The halves of journals made before 2026-12-06: read as they are, grown once replayed (grow()). */
const LEGACY_HALF_BYTES = 8 * 1024 * 1024;
/**
 * Records up to this size are written with O_DIRECT (from one page-aligned buffer, reused), larger ones
 * through the page cache. Why: a 4 KiB FUA write's record is 4,608 bytes (nine sectors); written through
 * the page cache with O_DSYNC it goes to the disk as the two 4 KiB pages it spans, written direct as
 * its nine sectors. On this machine's disk, 3,000 such writes in a loop: p50 71-87 us and 4.7 KB on the
 * disk per record direct, against 159-188 us and 8.4 KB buffered (docs/write-path.md, "Sync writes").
 */
const DIRECT_RECORD_BYTES = 256 * 1024;

/** Makes a journaled snapshot or clone again during replay, at its place among the volume's operations. */
export type ReplayVolumeOp = (st: WritableMap, op: VolumeOp) => void;

interface Pending {
  /** Completed operations not yet in the journal, oldest first. */
  ops: JournalOp[];
  /** The last operation whose bytes were not kept: FLUSHes commit until a commit covers it. */
  unkept: number;
  /** When the volume was last flushed (performance.now()). */
  flushedAt: number;
  /** An eager enqueue of its operations is scheduled. */
  eager: boolean;
}

interface Batch {
  vols: Set<Pending>;
  done: Promise<void>;
  resolve(): void;
  reject(e: unknown): void;
}

export interface FlushJournalFigures {
  /** Records written (each one FLUSH, or several arriving together). */
  records: number;
  /** FLUSHes that committed instead (an operation not kept, the journal full, or none). */
  commits: number;
  /** Operations replayed at start. */
  replayed: number;
  /** Writes journaled as they arrived, while being applied (FUA writes, and writes on volumes that sync). */
  onArrival: number;
  /** Records are written with O_DIRECT (false where the filesystem or the disk's sector size does not allow it). */
  direct: boolean;
}

export class FlushJournal implements CommitPart<number> {
  private meta!: MetaStore;
  /** Commits everything completed so far (the FLUSH of old). */
  private commitAll!: () => Promise<void>;
  private commitSoon!: () => void;
  private lastOp = 0;
  private takenOp = 0;
  /** The last operation covered by a durable commit. */
  private durableOp = 0;
  /** The half records go into, where in it the next goes, and the last operation each half holds. */
  private half = 0;
  private writeAt = 0;
  private readonly lastInHalf = [0, 0];
  private seq: number;
  private retained = 0;
  private readonly pending = new Map<WritableMap, Pending>();
  /** Writes numbered and journaled while they are still being applied: FUA writes and writes on volumes that sync (writeEarly). */
  private readonly early = new Set<number>();
  private chunkSize = 0;
  private gathering: Batch | null = null;
  private writing = false;
  private broken: Error | null = null;
  private toReplay: JournalRecord[] | null;
  readonly figures: FlushJournalFigures = { records: 0, commits: 0, replayed: 0, onArrival: 0, direct: false };

  /** directFd's buffer: records are encoded into it (O_DIRECT needs aligned memory). */
  private directBuf: Buffer | null = null;

  private constructor(
    private readonly fd: number,
    /**
     * The same file opened O_DIRECT | O_DSYNC, for records up to DIRECT_RECORD_BYTES; null where the
     * filesystem refuses O_DIRECT (tmpfs), or once a direct write failed with EINVAL (a disk whose
     * sectors are larger than the records' 512-byte alignment): then every record goes through `fd`.
     */
    private directFd: number | null,
    found: JournalRecord[],
    /** Bytes in each half: HALF_BYTES, or LEGACY_HALF_BYTES in a file made before, until grow(). */
    private halfBytes: number,
  ) {
    this.figures.direct = directFd !== null;
    this.toReplay = found;
    this.seq = Math.max(0, ...found.map((r) => r.seq)) + 1;
  }

  /** Opens (or makes) DATA_DIR/flush-journal and reads what it holds, for replay(). */
  static open(dir: string): FlushJournal {
    const path = join(dir, FLUSH_JOURNAL_FILE);
    let fd: number;
    let found: JournalRecord[] = [];
    let half = HALF_BYTES;
    try {
      fd = openSync(path, constants.O_RDWR | constants.O_DSYNC);
      const file = readFileSync(path);
      // A journal of the former size is read with its own halves: its second half's records start at
      // 8 MiB, where a 32 MiB half would not look for them. It grows once they are replayed (grow()).
      if (file.length === 2 * LEGACY_HALF_BYTES) half = LEGACY_HALF_BYTES;
      found = [...decodeRecords(file.subarray(0, half)), ...decodeRecords(file.subarray(half, 2 * half))];
      // Shorter than made (a crash while it was being written out): it holds no record yet.
      if (file.length < 2 * half) writeZeroes(fd, file.length, 2 * half - file.length);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new ShoalError('data_dir_unusable', `cannot open the flush journal ${path}: ${(e as Error).message}`, { cause: e });
      // Written out in full once: overwriting blocks already allocated makes each later O_DSYNC write
      // a data write, with no file-size or extent change for the filesystem to journal too.
      fd = openSync(path, constants.O_RDWR | constants.O_CREAT | constants.O_DSYNC, 0o600);
      try {
        writeZeroes(fd, 0, 2 * HALF_BYTES);
      } catch (e2) {
        closeSync(fd);
        throw new ShoalError('data_dir_unusable', `cannot make the flush journal ${path} (${formatSize(2 * HALF_BYTES)}): ${(e2 as Error).message}`, { cause: e2 });
      }
      const d = openSync(dir, 'r');
      try {
        fsyncSync(d);
      } finally {
        closeSync(d);
      }
    }
    return new FlushJournal(fd, openDirect(path), found, half);
  }

  /**
   * Grows a journal of the former size to two halves of HALF_BYTES. Only once a commit covers every
   * record in it (after replay() and its commit): records stay where they are, and a crash before the
   * growth reads them with the former halves again. Throws if the disk is full (the journal stays as it was).
   */
  grow(): void {
    if (this.halfBytes === HALF_BYTES) return;
    try {
      writeZeroes(this.fd, 2 * this.halfBytes, 2 * (HALF_BYTES - this.halfBytes));
    } catch (e) {
      // Back to the former size (its length is what tells the next start how to read it), and on with
      // the former halves; the next start tries again.
      ftruncateSync(this.fd, 2 * this.halfBytes);
      throw new ShoalError('io_error', `the flush journal stays at ${formatSize(2 * this.halfBytes)}: growing it failed (${(e as Error).message})`, { cause: e });
    }
    this.halfBytes = HALF_BYTES;
    this.half = 0;
    this.writeAt = 0;
  }

  /**
   * Joins the metadata's commits: `commitAll` commits everything completed (a FLUSH without the
   * journal), `commitSoon` starts a commit in the background.
   */
  attach(meta: MetaStore, commitAll: () => Promise<void>, commitSoon: () => void): void {
    this.meta = meta;
    this.chunkSize = meta.chunkSize;
    this.commitAll = commitAll;
    this.commitSoon = commitSoon;
    this.lastOp = this.takenOp = this.durableOp = meta.superblock.journalApplied ?? 0;
    meta.pipeline.add(this);
  }

  /**
   * Replays the operations the last commit does not cover, in order, through the write path;
   * returns how many. Before anything is served, after interrupted multi-step operations are
   * finished (a write that followed one must land after it). The caller commits.
   */
  async replay(states: ReadonlyMap<string, WritableMap>, writes: WritePath, volumeOp: ReplayVolumeOp, logger?: { warn(obj: unknown, msg?: string): void }): Promise<number> {
    const ops = (this.toReplay ?? []).flatMap((r) => r.ops).sort((a, b) => a.opNo - b.opNo);
    this.toReplay = null;
    let n = 0;
    for (const op of ops) {
      // New operations number on past every one in the file, replayed or not.
      if (op.opNo > this.lastOp) this.lastOp = op.opNo;
      if (op.opNo <= this.durableOp) continue; // a commit covers it
      const st = states.get(op.volume);
      const isVolumeOp = op.kind === 'snapshot' || op.kind === 'clone';
      if (!st || st.record.createdAt !== op.createdAt || (!isVolumeOp && op.offset + op.length > st.record.size)) {
        logger?.warn({ op: { kind: op.kind, volume: op.volume, offset: op.offset, length: op.length } }, 'flush journal: skipping an operation on a volume that is gone or smaller');
        continue;
      }
      try {
        if (isVolumeOp) volumeOp(st, JSON.parse(op.data!.toString('utf8')) as VolumeOp);
        else if (op.kind === 'write') await writes.write(st, op.offset, op.data!);
        else if (op.kind === 'trim') await writes.trim(st, op.offset, op.length);
        else await writes.zero(st, op.offset, op.length, op.noHole);
      } catch (e) {
        // As it failed before the crash, perhaps (a FUA write is journaled while it is applied); the
        // daemon must start all the same.
        logger?.warn({ err: e, op: { kind: op.kind, volume: op.volume, offset: op.offset, length: op.length } }, 'flush journal: an operation failed to replay');
        continue;
      }
      n++;
    }
    this.figures.replayed += n;
    // Everything in the file is covered once the caller's commit is durable.
    this.lastInHalf[0] = this.lastInHalf[1] = this.lastOp;
    return n;
  }

  /** A write, trim or zero of `st` completed (before its reply): a later FLUSH must make it durable. */
  completed(st: WritableMap, kind: JournalOpKind, offset: number, length: number, data: Buffer | null, noHole = false): void {
    const opNo = ++this.lastOp;
    const p = this.pendingOf(st);
    const bytes = kind === 'write' ? length : 0;
    const sinceFlush = performance.now() - p.flushedAt;
    if (this.broken || bytes > MAX_OP_BYTES || this.retained + bytes > RETAIN_BYTES || sinceFlush > SYNC_WINDOW_MS) {
      p.unkept = opNo;
      return;
    }
    this.keep(p, st, kind, opNo, offset, length, data, noHole);
    // After the write's reply has gone out (it is corked until the next tick); a failure sets `broken`,
    // and the FLUSH then commits.
    if (sinceFlush < EAGER_WINDOW_MS && !p.eager) {
      p.eager = true;
      setImmediate(() => {
        p.eager = false;
        if (p.ops.length > 0) this.enqueue(p).catch(() => {});
      });
    }
  }

  private keep(p: Pending, st: WritableMap, kind: JournalOpKind, opNo: number, offset: number, length: number, data: Buffer | null, noHole: boolean): void {
    // The request's payload is kept as it is when that holds at most twice its bytes in memory (a buffer
    // of the payload pool, held until it is in a record or a commit covers it; or a view into the socket
    // chunk it arrived in); a small view into a larger chunk is copied. Copying each kept write cost 1M
    // writes at QD8 ~1.3 ms of CPU a request (fresh memory for every copy, and the collector's work for it).
    const view = data && data.subarray(0, length);
    const kept = view && (view.byteLength * 2 >= view.buffer.byteLength ? view : Buffer.from(view));
    if (kept === view && view) payloads.keep(view);
    if (kept) this.retained += length;
    p.ops.push({ kind, opNo, volume: st.record.name, createdAt: st.record.createdAt, offset, length, noHole, data: kept });
  }

  /**
   * A snapshot or a clone of `st` was just made, every change in its map told here (VolumeState.quiesce):
   * journals it after the volume's operations before it, so that a replay makes it at the same point.
   * Resolves once durable; null if the volume's FLUSH would commit (an operation not kept, or the
   * journal broken): then the caller commits.
   */
  volumeOp(st: WritableMap, op: VolumeOp): Promise<void> | null {
    const p = this.pendingOf(st);
    if (this.broken || p.unkept > this.durableOp) return null;
    const data = Buffer.from(JSON.stringify(op));
    p.ops.push({ kind: op.kind, opNo: ++this.lastOp, volume: st.record.name, createdAt: st.record.createdAt, offset: 0, length: data.length, noHole: false, data });
    return this.enqueue(p);
  }

  /**
   * `st` changed outside the journal (a resize, a rollback): until a commit covers that, its FLUSHes,
   * snapshots and clones commit (a replay would otherwise put them on the volume as it was before).
   * Called in the change's synchronous stretch, so that no commit can claim to cover it before it is made.
   */
  changedOutside(st: WritableMap): void {
    this.pendingOf(st).unkept = ++this.lastOp;
  }

  /** The next record will hold `p`'s operations; resolves once it is durable. */
  private enqueue(p: Pending): Promise<void> {
    const b = (this.gathering ??= newBatch());
    b.vols.add(p);
    void this.pump();
    return b.done;
  }

  /**
   * Whether a write is journaled as it arrives (writeEarly) rather than once applied (completed()): a
   * write on a volume that syncs, one with FUA or any write on a volume flushed in the last
   * EAGER_WINDOW_MS (a database syncing every write), when nothing overlapping is in flight on the
   * volume. Its record is then on its way before the write completes: a FUA write's reply waits for
   * the longer of the two rather than their sum, and the FLUSH that follows a plain write finds its
   * record written or nearly (qcow2's FLUSH is one fdatasync; ours was the record's whole write after
   * the write's reply). Otherwise, and whenever a FLUSH would commit, the caller applies the write,
   * then calls completed() and, with FUA, flush(). A synchronous test: most writes go the second way,
   * and the caller spends no promise on asking. A FUA write counts as the volume's latest flush here,
   * whichever way it goes (as a FLUSH does), so call it once per write.
   */
  journalsEarly(st: WritableMap, offset: number, length: number, fua: boolean): boolean {
    const p = this.pendingOf(st);
    const now = performance.now();
    const syncing = fua || now - p.flushedAt < EAGER_WINDOW_MS;
    if (fua) p.flushedAt = now;
    const cs = this.chunkSize;
    return (
      syncing &&
      !this.broken &&
      p.unkept <= this.durableOp &&
      length <= MAX_OP_BYTES &&
      this.retained + length <= RETAIN_BYTES &&
      st.lock.isFree(Math.floor(offset / cs), Math.floor((offset + length - 1) / cs) + 1)
    );
  }

  /**
   * A write journalsEarly() said yes to, in the same turn: journaled while `apply` maps it (apply takes
   * its range at once, so later overlapping writes map after it, as the replay puts them). Without
   * FUA it resolves once applied; with FUA once its record is durable too.
   */
  async writeEarly(st: WritableMap, offset: number, data: Buffer, fua: boolean, apply: () => Promise<void>): Promise<void> {
    const p = this.pendingOf(st);
    // Numbered now: until it is applied, no commit may claim to cover it (take() stops below it).
    const opNo = ++this.lastOp;
    this.early.add(opNo);
    this.figures.onArrival++;
    this.keep(p, st, 'write', opNo, offset, data.length, data, false);
    const durable = this.enqueue(p);
    // Awaited below with FUA, unless apply() throws first. Without FUA a failure sets `broken`, and
    // the FLUSH that follows commits (or fails with the record it waited for).
    durable.catch(() => {});
    try {
      await apply();
    } finally {
      this.early.delete(opNo);
    }
    if (fua) await durable;
  }

  private pendingOf(st: WritableMap): Pending {
    let p = this.pending.get(st);
    if (!p) this.pending.set(st, (p = { ops: [], unkept: 0, flushedAt: -Infinity, eager: false }));
    return p;
  }

  /** Makes every operation `st` completed durable: into the journal, or by a commit. */
  flush(st: WritableMap): Promise<void> {
    const p = this.pendingOf(st);
    p.flushedAt = performance.now();
    if (this.broken || p.unkept > this.durableOp) return this.viaCommit();
    // Nothing left to write: its operations are in the record being written, or a commit covered them.
    if (p.ops.length === 0) return this.inFlight ?? Promise.resolve();
    return this.enqueue(p);
  }

  /** The record being written, if any: a FLUSH whose operations it holds waits for it. */
  private inFlight: Promise<void> | null = null;

  /** Operations taken for a record that a commit makes durable instead: their bytes are not needed. */
  private dropAndCommit(ops: JournalOp[]): Promise<void> {
    giveBack(ops);
    return this.viaCommit();
  }

  private viaCommit(): Promise<void> {
    this.figures.commits++;
    return this.commitAll();
  }

  /** Writes batches one after another: FLUSHes that arrive while one is written share the next. */
  private async pump(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      while (this.gathering) {
        const b = this.gathering;
        this.gathering = null;
        this.inFlight = b.done;
        await this.writeBatch(b).then(b.resolve, b.reject);
      }
    } finally {
      this.inFlight = null;
      this.writing = false;
    }
  }

  private async writeBatch(b: Batch): Promise<void> {
    const ops: JournalOp[] = [];
    let commit = this.broken !== null;
    for (const p of b.vols) {
      if (p.unkept > this.durableOp) commit = true;
      for (const op of p.ops) {
        ops.push(op);
        this.retained -= heldBytes(op);
      }
      p.ops = [];
    }
    if (ops.length === 0 && !commit) return;
    const size = recordSize(ops);
    const halfBytes = this.halfBytes;
    if (commit || size > halfBytes) return this.dropAndCommit(ops);
    // Everything in this half is covered by a durable commit: start it over.
    if (this.durableOp >= this.lastInHalf[this.half]) this.writeAt = 0;
    if (this.writeAt + size > halfBytes) {
      // Full: on into the other half if a commit covers all it holds, else this FLUSH commits.
      if (this.durableOp < this.lastInHalf[1 - this.half]) return this.dropAndCommit(ops);
      this.half = 1 - this.half;
      this.writeAt = 0;
    }
    const at = this.half * halfBytes + this.writeAt;
    try {
      await this.writeRecord(ops, size, at);
    } catch (e) {
      // The operations taken stay in memory, and the next commit covers them: from now on every
      // FLUSH commits. This one fails (EIO): what it was to make durable may not be.
      this.broken = e as Error;
      throw new ShoalError('io_error', `the flush journal cannot be written (${(e as Error).message}); FLUSHes commit from now on`, { cause: e });
    }
    this.seq++;
    this.writeAt += size;
    this.figures.records++;
    for (const op of ops) if (op.opNo > this.lastInHalf[this.half]) this.lastInHalf[this.half] = op.opNo;
    // Three quarters full: a commit now covers the other half before this one fills, so the next switch
    // need not wait (a commit takes tens of ms; the last quarter lasts a sync writer ~0.7 s).
    if (this.writeAt > halfBytes * 0.75 && this.durableOp < this.lastInHalf[1 - this.half]) this.commitSoon();
  }

  /** Encodes and writes one record of `ops` (size bytes) at `at`, durably; the operations' bytes are given back. */
  private async writeRecord(ops: JournalOp[], size: number, at: number): Promise<void> {
    const directFd = size <= DIRECT_RECORD_BYTES ? this.directFd : null;
    const record = directFd === null ? encodeRecord(this.seq, ops) : encodeRecord(this.seq, ops, (this.directBuf ??= native().alignedBuffer(DIRECT_RECORD_BYTES)));
    giveBack(ops); // copied into the record
    if (directFd !== null) {
      try {
        return await writeAll(directFd, [record], at);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
        // Misaligned for this disk: through the page cache from now on, this record first.
        closeSync(directFd);
        this.directFd = null;
        this.figures.direct = false;
      }
    }
    await writeAll(this.fd, [record], at);
  }

  // ---------------------------------------------------------------- CommitPart

  take(): number | null {
    // Covered: every operation numbered so far, but for FUA writes still being applied.
    let upTo = this.lastOp;
    for (const n of this.early) if (n <= upTo) upTo = n - 1;
    if (upTo === this.takenOp) return null;
    this.takenOp = upTo;
    this.meta.superblock.journalApplied = upTo;
    return upTo;
  }

  write(): void {
    // The superblock carries journalApplied.
  }

  settle(upTo: number, ok: boolean): void {
    if (!ok) return;
    this.durableOp = upTo;
    for (const [st, p] of this.pending) {
      let k = 0;
      while (k < p.ops.length && p.ops[k].opNo <= upTo) {
        const op = p.ops[k];
        this.retained -= heldBytes(op);
        if (op.data) payloads.give(op.data);
        k++;
      }
      if (k > 0) p.ops.splice(0, k);
      // Forgotten once idle: a volume not flushed for a while keeps nothing anyway.
      if (p.ops.length === 0 && p.unkept <= upTo && !this.gathering?.vols.has(p) && performance.now() - p.flushedAt > SYNC_WINDOW_MS) this.pending.delete(st);
    }
  }

  /** After the last commit. */
  async close(): Promise<void> {
    while (this.writing || this.gathering) await (this.inFlight ?? this.gathering?.done ?? Promise.resolve()).catch(() => {});
    closeSync(this.fd);
    if (this.directFd !== null) closeSync(this.directFd);
  }
}

/** `path` opened O_RDWR | O_DSYNC | O_DIRECT, or null where that cannot be (no O_DIRECT on the platform or the filesystem). */
function openDirect(path: string): number | null {
  const direct = constants.O_DIRECT;
  if (direct === undefined) return null;
  try {
    return openSync(path, constants.O_RDWR | constants.O_DSYNC | direct);
  } catch {
    return null;
  }
}

/** The journal is done with these operations' bytes: pooled payload buffers may serve other requests. */
function giveBack(ops: JournalOp[]): void {
  for (const op of ops) if (op.data) payloads.give(op.data);
}

/** Bytes of written data an operation holds in memory (counted against RETAIN_BYTES). */
function heldBytes(op: JournalOp): number {
  return op.kind === 'write' && op.data ? op.length : 0;
}

function newBatch(): Batch {
  let resolve!: () => void;
  let reject!: (e: unknown) => void;
  const done = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { vols: new Set(), done, resolve, reject };
}

/** Zeroes [from, from + n) of the journal (an O_DSYNC descriptor: durable on return). */
function writeZeroes(fd: number, from: number, n: number): void {
  const zero = Buffer.alloc(Math.min(n, 1024 * 1024));
  for (let done = 0; done < n; done += zero.length) writeSyncAll(fd, zero.subarray(0, Math.min(zero.length, n - done)), from + done);
}

function writeSyncAll(fd: number, b: Buffer, pos: number): void {
  let off = 0;
  while (off < b.length) off += writeSync(fd, b, off, b.length - off, pos + off);
}
