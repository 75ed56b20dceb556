// Chunk writes issued in one turn of the event loop, gathered and sent as one pwritev per run of
// consecutive positions: the local store's chunk file and the S3 store's pack files both place chunks
// in order, so a queue-depth-32 burst usually forms one run (one thread-pool job instead of 32).
//
// A small run is written on the event loop itself: it only copies into the page cache, and the
// thread-pool hop (queueing, waking a pool thread that then competes for one of two cores, the
// callback) cost more. 4K random writes at QD32 on a filled volume: 32-33k IOPS and 39-40 us of CPU
// per request, against 26-28k and 46-49 us through the pool. The price is that the rare write that
// waits in the kernel (for the filesystem's journal, or page writeback) holds the loop: the longest
// seen in that run was 8 ms, with 3-6 writes in 40,000-100,000 over 1 ms. A write alone in its turn
// still goes through the pool: at queue depth 1 (a database's FUA writes) the synchronous form made
// the median FUA write slower, 285-297 us against 249-258 (the cause not pinned down; the flush
// journal's O_DSYNC write runs beside it), while batches of two and more keep the gain above.
//
// Many short runs in one turn are another matter: a 1 MiB write whose chunks go to freed slots
// scattered over the file is up to 256 one-chunk runs, and one pwritev each on the event loop was 23%
// of its time in 1M writes at QD8 after 15 s of 4K random writes. Past MAX_SYNC_RUNS they all go to
// the thread pool in one job (the addon's writeRuns).
//
// With a descriptor opened O_DIRECT (the local chunk store's, where the filesystem takes it), runs over
// SYNC_RUN_BYTES that end inside the file go to the disk directly instead: a turn's in one thread-pool
// job, in parallel through Linux AIO (the addon's writeRunsDirect). A buffered write copies into a page
// the kernel allocates for it, which the commit's fdatasync writes back and the store then drops (the
// shared cache holds the chunk): all CPU the direct write does not spend (see the addon).
// Short runs stay buffered: the direct write waits for the disk, where the buffered one returns after
// its copy, and short runs are what 4K writes at QD32 make (sent direct, their IOPS fell by a quarter)
// and what a large write into scattered freed slots makes (256 direct writes of 4 KiB a request made the
// disk the limit: npm run bench's 1 MiB rows after 4K random writes ran at 145-172 MiB/s against
// 184-221). Runs that would extend the file stay buffered too: ext4 holds the inode's lock exclusively
// for a direct write past the end until the disk has it, and every buffered write of the file waits for
// that lock, the event loop's own among them (bench:soak saw one 87 ms stall, the event loop asleep,
// when its writes reached the end of the chunk file).
//
// Short writes inside the file that the caller marks `early` (a small write that nothing waits to see
// durable before the next FLUSH: server/volume/write-path.ts) are not written in their turn at all
// (the `stage` option): copied into a slab of memory and answered at once, they are written past the
// page cache once STAGE_BYTES have gathered, or when the next sync asks (drain(): the commit makes chunk
// data durable before any record points at it, so the data still reaches the disk first). Until written
// they are read from the slab (heldChunk()). This takes the page-cache write off the event loop without
// making the client wait for the disk (what sent them direct one by one did, above), and the disk gets
// them as one batch in parallel. A staged write that fails fails the next sync, and every one after it:
// the commit that would have pointed records at its chunk fails, as a writeback error fails fsync.
//
// The caller's word, not this file's guess: staged as well, the writes of a database syncing every
// write at queue depth 1 made its FLUSHes slower (212-285 us at the median against 51-115; write +
// FLUSH ~315-400 us against ~270-300), the flush journal's record, written while the write is applied,
// coming back in ~260-330 us against ~205 when the write went to the thread pool beside it. And staged
// at the turn's end rather than at once, 4K random writes at QD32 kept only a fifth of the gain; large
// writes into scattered freed slots (256 one-chunk runs a MiB) lost ~15% of their rate staged, the
// disk taking 256 direct writes a MiB where the page cache had merged them for the commit's sync.
import { writev as fsWritev, writevSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { getSystemErrorName } from 'node:util';
import { native } from '../native.js';
import { float64s, uint32s } from '../native-arrays.js';

interface BatchedWrite {
  /** Position in chunks. */
  at: number;
  data: Buffer;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** Most buffers one pwritev takes (IOV_MAX). */
const MAX_IOVECS = 1024;
/** Runs up to this size are written synchronously (see the top of the file). */
const SYNC_RUN_BYTES = 128 * 1024;
/** Most bytes of one direct job (the aligned memory the addon keeps per pool thread, addon/src/file-io.cc). */
const DIRECT_JOB_BYTES = 8 * 1024 * 1024;
/** More short runs than this in one turn are written together on the thread pool (see the top of the file). */
const MAX_SYNC_RUNS = 64;
/** Staged writes are sent once this many bytes have gathered (see the top of the file); also the slab's size. */
const STAGE_BYTES = 1024 * 1024;
/** Past this many staged bytes sent and not yet written, short writes go as they did before staging. */
const STAGE_IN_FLIGHT_BYTES = 8 * 1024 * 1024;
/** Slabs kept for reuse (fresh memory each time would be faulted in page by page, see payload-pool.ts). */
const SPARE_SLABS = STAGE_IN_FLIGHT_BYTES / STAGE_BYTES + 1;
const RESOLVED = Promise.resolve();

/** Splits writes into runs of back-to-back positions (sorted in place), each at most MAX_IOVECS buffers. */
function consecutiveRuns<T extends BatchedWrite>(batch: T[], chunkSize: number): T[][] {
  batch.sort((a, b) => a.at - b.at);
  const runs: T[][] = [];
  let i = 0;
  while (i < batch.length) {
    let j = i + 1;
    let end = batch[i].at + batch[i].data.length / chunkSize;
    while (j < batch.length && batch[j].at === end && j - i < MAX_IOVECS) {
      end += batch[j].data.length / chunkSize;
      j++;
    }
    runs.push(batch.slice(i, j));
    i = j;
  }
  return runs;
}

/** After a short write of n bytes: the part of `bufs` not yet written. */
function unwritten(bufs: Buffer[], n: number): Buffer[] {
  let skip = n;
  const rest: Buffer[] = [];
  for (const b of bufs) {
    if (skip >= b.length) skip -= b.length;
    else {
      rest.push(skip > 0 ? b.subarray(skip) : b);
      skip = 0;
    }
  }
  return rest;
}

function totalBytes(bufs: Buffer[]): number {
  let n = 0;
  for (const b of bufs) n += b.length;
  return n;
}

/** pwritev until everything is written (a short write carries on where it stopped). */
export function writeAll(fd: number, bufs: Buffer[], pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const loop = (bufs: Buffer[], pos: number, left: number) => {
      fsWritev(fd, bufs, pos, (err, n) => {
        if (err) return reject(err);
        if (n >= left) return resolve();
        loop(unwritten(bufs, n), pos + n, left - n);
      });
    };
    loop(bufs, pos, totalBytes(bufs));
  });
}

/** writeAll() on the calling thread. */
function writeAllSync(fd: number, bufs: Buffer[], pos: number): void {
  let left = totalBytes(bufs);
  for (;;) {
    const n = writevSync(fd, bufs, pos);
    if (n >= left) return;
    bufs = unwritten(bufs, n);
    pos += n;
    left -= n;
  }
}

export interface WriteBatcherOptions {
  /** The file's descriptor (read at each write: the owner may replace it). */
  fd: () => number;
  chunkSize: number;
  /** Byte offset of position 0 in the file. */
  base: number;
  /** A run of `bytes` at file offset `pos` is written (before its writes resolve); `direct`: past the page cache. */
  written?: (pos: number, bytes: number, direct: boolean) => void;
  /** The same file opened O_DIRECT, or -1: batches go past the page cache (see the top of the file). */
  directFd?: () => number;
  /**
   * The file offset direct writes must end within (the file's size: a direct write that extends the
   * file holds the inode's lock until the disk has it, see the top of the file); none: no limit.
   */
  directUpTo?: () => number;
  /**
   * Short writes inside the file that the caller marks `early` are staged and answered at once (see
   * the top of the file), with a directFd: the owner reads them back through heldChunk() until
   * written, and drains them before each sync.
   */
  stage?: boolean;
  /** The error a failed run's writes reject with; `at`: its first position. */
  failure: (err: NodeJS.ErrnoException, at: number) => Error;
}

/** Gathers the writes of one turn of the event loop and sends each run of consecutive positions as one pwritev. */
export class WriteBatcher {
  private pending: BatchedWrite[] = [];
  private queued = false;
  /** Thread-pool jobs writing (a file closed under them could have its descriptor number reused). */
  private active = 0;
  private idle: Array<() => void> = [];
  /** A direct write was refused with EINVAL: the page cache only, from then on. */
  private directRefused = false;

  // Staged writes (see the top of the file): copied into `slab`, not yet sent.
  private staged: BatchedWrite[] = [];
  private slab: Buffer | null = null;
  private slabUsed = 0;
  private readonly spareSlabs: Buffer[] = [];
  /** Bytes of staged writes sent and not yet written. */
  private stagedInFlight = 0;
  /** Staged batches sent and not yet written. */
  private readonly stagedJobs = new Set<Promise<void>>();
  /** Chunk position -> its bytes, for every staged write not yet written (reads take them from here). */
  private readonly held = new Map<number, Buffer>();
  /** Writes staged so far. */
  stagedWrites = 0;
  /** The first staged write that failed: every drain() from then on fails with it. */
  private stagedFailure: Error | null = null;

  constructor(private readonly opts: WriteBatcherOptions) {}

  /** Resolves once nothing is queued or being written (before the file is closed). */
  whenIdle(): Promise<void> {
    this.sendStaged();
    if (this.pending.length === 0 && this.active === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  private jobDone(): void {
    this.active--;
    this.checkIdle();
  }

  private checkIdle(): void {
    if (this.active > 0 || this.pending.length > 0 || this.idle.length === 0) return;
    const waiting = this.idle;
    this.idle = [];
    for (const fn of waiting) fn();
  }

  /**
   * Writes `data` (whole chunks) at position `at`. `early`: the caller needs the bytes written only by
   * the next drain(), so they may be staged (see the top of the file).
   */
  write(at: number, data: Buffer, early = false): Promise<void> {
    if (this.opts.stage) {
      // A place staged and not yet written (a slot a failed write gave back, handed out again): two
      // writes of one place in flight at once could land in either order, so this one waits for it.
      if (this.holds(at, data.length)) return this.drain().then(() => this.write(at, data, early));
      if (early && this.stageable(at, data.length)) {
        this.stage(at, data);
        return RESOLVED;
      }
    }
    return new Promise((resolve, reject) => {
      this.pending.push({ at, data, resolve, reject });
      if (!this.queued) {
        this.queued = true;
        setImmediate(this.flush);
      }
    });
  }

  private readonly flush = (): void => {
    this.queued = false;
    const batch = this.pending;
    this.pending = [];
    this.dispatch(batch);
    this.checkIdle();
  };

  /** Whether a write of `bytes` at position `at` is staged rather than written now (see the top of the file). */
  private stageable(at: number, bytes: number): boolean {
    if (bytes > SYNC_RUN_BYTES || this.directRefused || this.stagedInFlight >= STAGE_IN_FLIGHT_BYTES) return false;
    if ((this.opts.directFd?.() ?? -1) < 0) return false;
    return this.opts.base + at * this.opts.chunkSize + bytes <= (this.opts.directUpTo?.() ?? Infinity);
  }

  /** Whether a staged write not yet written covers any chunk of `bytes` at position `at`. */
  private holds(at: number, bytes: number): boolean {
    if (this.held.size === 0) return false;
    const cs = this.opts.chunkSize;
    for (let k = 0; k * cs < bytes; k++) if (this.held.has(at + k)) return true;
    return false;
  }

  private stage(at: number, data: Buffer): void {
    if (this.slab !== null && this.slabUsed + data.length > this.slab.length) this.sendStaged();
    if (this.slab === null) {
      this.slab = this.spareSlabs.pop() ?? Buffer.allocUnsafeSlow(STAGE_BYTES);
      this.slabUsed = 0;
    }
    const copy = this.slab.subarray(this.slabUsed, this.slabUsed + data.length);
    data.copy(copy);
    this.slabUsed += data.length;
    this.staged.push({ at, data: copy, resolve: noop, reject: noop });
    this.stagedWrites++;
    const cs = this.opts.chunkSize;
    if (data.length === cs) this.held.set(at, copy);
    else for (let k = 0; k * cs < data.length; k++) this.held.set(at + k, copy.subarray(k * cs, (k + 1) * cs));
    if (this.slabUsed >= STAGE_BYTES) this.sendStaged();
  }

  /** The bytes of the chunk at position `at` if a staged write of it is not yet written (only then). */
  heldChunk(at: number): Buffer | undefined {
    return this.held.size === 0 ? undefined : this.held.get(at);
  }

  /** Whether any staged write is not yet written. */
  get holding(): boolean {
    return this.held.size > 0;
  }

  /** Sends the staged writes to the disk, past the page cache, in one batch. */
  private sendStaged(): void {
    const batch = this.staged;
    if (batch.length === 0) return;
    const slab = this.slab!;
    const bytes = this.slabUsed;
    this.staged = [];
    this.slab = null;
    this.slabUsed = 0;
    this.stagedInFlight += bytes;
    let left = batch.length;
    let failed = false;
    const job = new Promise<void>((resolve) => {
      const settled = () => {
        if (--left > 0) return;
        this.stagedInFlight -= bytes;
        this.stagedJobs.delete(job);
        // A failed batch's bytes stay held: reads still find them until the daemon stops.
        if (!failed && this.spareSlabs.length < SPARE_SLABS) this.spareSlabs.push(slab);
        resolve();
      };
      for (const w of batch) {
        w.resolve = () => {
          this.unhold(w);
          settled();
        };
        w.reject = (e) => {
          failed = true;
          this.stagedFailure ??= e;
          settled();
        };
      }
    });
    this.stagedJobs.add(job);
    this.writeDirectJobs(this.opts.directFd!(), consecutiveRuns(batch, this.opts.chunkSize));
  }

  private unhold(w: BatchedWrite): void {
    const cs = this.opts.chunkSize;
    for (let k = 0; k * cs < w.data.length; k++) {
      const v = this.held.get(w.at + k);
      if (v !== undefined && v.buffer === w.data.buffer && v.byteOffset === w.data.byteOffset + k * cs) this.held.delete(w.at + k);
    }
  }

  /**
   * Sends what is staged and resolves once every staged write is written; rejects if any staged write
   * ever failed. A sync runs this first: its fdatasync then covers them.
   */
  async drain(): Promise<void> {
    this.sendStaged();
    // The batches sent so far only: under steady writes new ones keep coming, and the sync must not chase them.
    if (this.stagedJobs.size > 0) await Promise.all([...this.stagedJobs]);
    if (this.stagedFailure) throw this.stagedFailure;
  }

  private dispatch(batch: BatchedWrite[]): void {
    const runs = consecutiveRuns(batch, this.opts.chunkSize);
    const directFd = this.directRefused ? -1 : (this.opts.directFd?.() ?? -1);
    const upTo = directFd >= 0 ? (this.opts.directUpTo?.() ?? Infinity) : 0;
    // Past the page cache: long runs that end inside the file (see the top of the file).
    const direct = (run: BatchedWrite[]) => runBytes(run) > SYNC_RUN_BYTES && this.position(run) + runBytes(run) <= upTo;
    if (batch.length === 1 && !direct(runs[0])) return this.writeRun(runs[0], true);
    // Long runs go to the thread pool, the short ones on the event loop, or all together when there are many.
    const past: BatchedWrite[][] = [];
    const short: BatchedWrite[][] = [];
    for (const run of runs) {
      if (direct(run)) past.push(run);
      else if (runBytes(run) > SYNC_RUN_BYTES) this.writeRun(run, false);
      else short.push(run);
    }
    if (past.length > 0) this.writeDirectJobs(directFd, past);
    if (short.length > MAX_SYNC_RUNS) this.writeRuns(short);
    else for (const run of short) this.writeRun(run, false);
  }

  /** `alone`: the only write of its turn (see the top of the file). */
  private writeRun(run: BatchedWrite[], alone: boolean): void {
    const bufs = run.map((w) => w.data);
    const bytes = totalBytes(bufs);
    const pos = this.position(run);
    // While staged writes are on their way past the page cache, never on the event loop: ext4 takes the
    // inode's lock exclusively for a buffered write, and a direct write holds it shared while it is
    // submitted, which waits when the disk's queue is full (bench:soak saw the event loop blocked
    // 371 ms in this pwritev behind a staged batch).
    if (alone || bytes > SYNC_RUN_BYTES || this.stagedInFlight > 0) {
      this.active++;
      writeAll(this.opts.fd(), bufs, pos)
        .then(
          () => this.done(run, false),
          (err: NodeJS.ErrnoException) => this.failed(run, err),
        )
        .finally(() => this.jobDone());
      return;
    }
    try {
      writeAllSync(this.opts.fd(), bufs, pos);
    } catch (err) {
      this.failed(run, err as NodeJS.ErrnoException);
      return;
    }
    this.done(run, false);
  }

  /** Short runs, many: one thread-pool job for all of them. */
  private writeRuns(runs: BatchedWrite[][]): void {
    const { bufs, counts, positions } = this.packed(runs);
    this.active++;
    native()
      .writeRuns(this.opts.fd(), bufs, counts, positions, runs.length)
      .then(
        () => {
          for (const run of runs) this.done(run, false);
        },
        (err: NodeJS.ErrnoException & { runsWritten?: number }) => {
          const written = err.runsWritten ?? 0;
          for (let r = 0; r < runs.length; r++) {
            if (r < written) this.done(runs[r], false);
            else this.failed(runs[r], err);
          }
        },
      )
      .finally(() => this.jobDone());
  }

  /**
   * Runs past the page cache, in jobs of up to DIRECT_JOB_BYTES, a run longer than that cut between its
   * writes: the addon copies a job into aligned memory its pool thread keeps up to that size, and a
   * larger job got fresh memory, faulted in page by page (a 1 GiB nbdcopy makes runs of 64 writes of
   * 256 KiB, 16 MiB: ~65k page faults on the pool threads a GiB); several jobs also run on several
   * pool threads at once.
   */
  private writeDirectJobs(fd: number, runs: BatchedWrite[][]): void {
    let job: BatchedWrite[][] = [];
    let bytes = 0;
    for (const run of runs) {
      let from = 0;
      for (let i = 0; i < run.length; i++) {
        const b = run[i].data.length;
        if (bytes + b > DIRECT_JOB_BYTES && (i > from || job.length > 0)) {
          if (i > from) job.push(run.slice(from, i));
          this.writeDirect(fd, job);
          job = [];
          bytes = 0;
          from = i;
        }
        bytes += b;
      }
      job.push(from === 0 ? run : run.slice(from));
    }
    this.writeDirect(fd, job);
  }

  /** Runs past the page cache, in parallel, in one thread-pool job; each run fails on its own. */
  private writeDirect(fd: number, runs: BatchedWrite[][]): void {
    const { bufs, counts, positions } = this.packed(runs);
    this.active++;
    native()
      .writeRunsDirect(fd, bufs, counts, positions, runs.length)
      .then(
        (errs) => {
          for (let r = 0; r < runs.length; r++) {
            if (errs[r] === 0) this.done(runs[r], true);
            else if (errs[r] === EINVAL) {
              // Refused as not aligned for the disk (a disk of larger sectors, a file that cannot
              // take it): written through the page cache, now and from now on.
              this.directRefused = true;
              this.writeRun(runs[r], true);
            } else this.failed(runs[r], errnoError(errs[r]));
          }
        },
        (err: NodeJS.ErrnoException) => {
          for (const run of runs) this.failed(run, err);
        },
      )
      .finally(() => this.jobDone());
  }

  /** The runs' buffers, one after another, with each run's count and file position. */
  private packed(runs: BatchedWrite[][]): { bufs: Buffer[]; counts: Uint32Array; positions: Float64Array } {
    const bufs: Buffer[] = [];
    const counts = uint32s(runs.length);
    const positions = float64s(runs.length);
    for (let r = 0; r < runs.length; r++) {
      for (const w of runs[r]) bufs.push(w.data);
      counts[r] = runs[r].length;
      positions[r] = this.position(runs[r]);
    }
    return { bufs, counts, positions };
  }

  private position(run: BatchedWrite[]): number {
    return this.opts.base + run[0].at * this.opts.chunkSize;
  }

  private done(run: BatchedWrite[], direct: boolean): void {
    this.opts.written?.(this.position(run), runBytes(run), direct);
    for (const w of run) w.resolve();
  }

  private failed(run: BatchedWrite[], err: NodeJS.ErrnoException): void {
    const e = this.opts.failure(err, run[0].at);
    for (const w of run) w.reject(e);
  }
}

const EINVAL = osConstants.errno.EINVAL;

function noop(): void {}

/** The error of a direct run that failed with `errno` (the addon reports its errno), as fs would make it. */
function errnoError(errno: number): NodeJS.ErrnoException {
  const name = getSystemErrorName(-errno);
  const code = name.startsWith('Unknown') ? 'EIO' : name;
  const e: NodeJS.ErrnoException = new Error(`${code}: direct write failed (errno ${errno})`);
  e.code = code;
  e.errno = -errno;
  return e;
}

function runBytes(run: BatchedWrite[]): number {
  let n = 0;
  for (const w of run) n += w.data.length;
  return n;
}
