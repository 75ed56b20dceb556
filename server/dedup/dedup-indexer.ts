// Moves the dedup log into the fingerprint index in the background, a batch per commit, and then
// sweeps the index of the entries freed chunks left behind. Each random insert copies an index
// page, which is cheap only when nothing else needs the disk: so it waits until writes have paused
// (a timer notes the write-activity count and goes ahead only if it has not moved), unless the log
// (or the stale count) grows past its bound, and it rests between batches.
import type { ChunkRecords } from '../meta/chunk-records.js';
import type { MetaStore } from '../meta/meta-store.js';
import { restAfter } from '../meta/pacing.js';
import { RateMeter } from '../rate-meter.js';
import type { DedupIndex } from './dedup-index.js';

/** Entries indexed per commit (a few ms of queueing on the event loop). */
const INDEX_BATCH = 1024;
/**
 * Logged fingerprints are indexed while writes go on only beyond this many; below it, only once
 * writes have paused for LOG_IDLE_MS. 512 Ki entries: 2 GiB of unique data at 4 KiB chunks; at
 * most ~117 MiB of memory (a 48-byte native table slot, kept 1/4 to 1/2 full, and a 42-byte log
 * record each).
 */
export const LOG_MAX = 512 * 1024;
const LOG_IDLE_MS = 2000;
/**
 * A sweep pass begins once this many index entries are stale, when writes pause; at once past
 * STALE_MAX. A pass reads the record of every indexed chunk (~1-5 us each), so it waits for enough
 * to find; below STALE_MAX a stale entry costs only its ~50 bytes in the index and a record read
 * if its fingerprint is written again.
 */
export const SWEEP_MIN = 4096;
const STALE_MAX = 512 * 1024;
/**
 * Index entries looked at per sweep slice: 2,048 (and a commit) while writes pause; 256, resting ten
 * times as long as the slice took and at least 50 ms, when the stale count presses while writes go on
 * (each entry is a record read on the event loop, and the writes need it).
 */
const SWEEP_BATCH = 2048;
/**
 * Longest a sweep slice may hold the event loop, in ms. Writes pausing is not the daemon idle: reads
 * go on. Each entry's check reads its chunk's record, and where those records are cold (a big volume
 * being deleted) 2,048 of them held the event loop 30-40 ms a slice, which reads on another volume
 * waited behind (`npm run bench:delete`: 62-114 ms against the control's 25-32).
 */
const SWEEP_SLICE_MS = 4;
const SWEEP_BATCH_BUSY = 256;
/** The least rest between two sweep slices beside writes (see run()). */
const SWEEP_BUSY_REST_MS = 50;

export class DedupIndexer {
  private running = false;
  private stopped = false;
  private idleTimer: NodeJS.Timeout | null = null;
  /** A run started from kick() while pressed, on the next turn (see kick()). */
  private startSoon: NodeJS.Immediate | null = null;
  private due = false;
  private readonly idleMs: number;
  private readonly staleMax: number;
  private readonly chunks: ChunkRecords;
  /** Log entries taken into the on-disk index. */
  readonly indexed = new RateMeter();
  /** Index entries the sweep looked at. */
  readonly swept = new RateMeter();

  constructor(
    private readonly meta: MetaStore,
    private readonly dedup: DedupIndex,
    private readonly logger?: { error(obj: unknown, msg?: string): void },
    opts: { idleMs?: number; staleMax?: number } = {},
  ) {
    this.idleMs = opts.idleMs ?? LOG_IDLE_MS;
    this.staleMax = opts.staleMax ?? STALE_MAX;
    this.chunks = meta.chunks;
    dedup.log.logged = () => this.kick();
    dedup.staleGrew = () => this.kick();
  }

  start(): void {
    this.kick();
  }

  /** Log entries to index, or stale index entries to sweep. */
  private get work(): boolean {
    return this.dedup.log.backlog > 0 || this.dedup.sweeping || this.dedup.staleEntries >= SWEEP_MIN;
  }

  /** Past its bounds, the log is indexed (and the index swept) while writes go on. */
  private get pressing(): boolean {
    return this.logPressing || this.dedup.staleEntries > this.staleMax;
  }

  private get logPressing(): boolean {
    return this.dedup.log.size > LOG_MAX;
  }

  /** Indexes (or sweeps) at once if the log is too long, else once writes pause. Cheap to call often. */
  kick(): void {
    if (this.stopped || this.running || !this.work) return;
    if (this.pressing) {
      // Not `due`: that says writes have paused. On a turn of its own: kick() is called from a
      // write's logging and from the release of freed chunks, inside space reclaim's slices, whose
      // turn the slice's first synchronous part would have lengthened.
      this.startSoon ??= setImmediate(() => {
        this.startSoon = null;
        void this.run();
      });
      return;
    }
    this.armIdleTimer();
  }

  private armIdleTimer(): void {
    if (this.idleTimer || this.stopped) return;
    const n = this.chunks.writeActivity;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      if (this.chunks.writeActivity !== n) return this.kick(); // writes go on: wait again
      this.due = true;
      void this.run();
    }, this.idleMs);
    this.idleTimer.unref?.();
  }

  private async run(): Promise<void> {
    if (this.running || this.stopped) return;
    this.running = true;
    const log = this.dedup.log;
    try {
      while (!this.stopped && this.work && (this.due || this.pressing)) {
        // New writes stop the work (they re-arm the idle timer) unless the log or the stale count presses.
        const n = this.chunks.writeActivity;
        const t0 = performance.now();
        let sweepingBusy = false;
        // While writes go on, only what presses: the stale count's bound is no reason to merge the
        // log (random b-tree inserts beside the writes), and a log that never empties under writes
        // kept the sweep from ever starting (a 1 MiB write run after random writes spent its 10 s
        // merging with 540 Ki entries stale and none swept).
        if (log.backlog > 0 && (this.due || this.logPressing)) {
          const n0 = this.dedup.indexSlice(INDEX_BATCH);
          // Counted as the slice leaves the log, so /v1/stats never shows an empty log with entries
          // missing from the count while the commit is under way.
          this.indexed.add(n0);
        } else {
          // Once writes pause, the log first: a sweep pass would otherwise look again at entries a
          // merge replaces.
          sweepingBusy = !this.due;
          this.swept.add(this.dedup.sweepSlice(sweepingBusy ? SWEEP_BATCH_BUSY : SWEEP_BATCH, t0 + SWEEP_SLICE_MS));
        }
        // A sweep beside writes leaves its changes to the writes' own commits (within seconds): a
        // commit of its own after every slice made commits four times as frequent (a slice, its commit,
        // then at most 200 ms of rest), and each rewrites the pages its changes touch, which the writes
        // paid for (docs/dedup.md, "The sweep": 130-138 commits in 40 s against 37-41, a quarter of the
        // entries swept, and the stale count 8x past its bound).
        if (!sweepingBusy) await this.meta.commit();
        if (!this.work || this.chunks.writeActivity !== n) this.due = false;
        // Paced: idle for three times as long as the slice and its commit took, so a snapshot or a
        // write's FLUSH seldom queues behind an index commit (random inserts: ~10-30 ms each); beside
        // writes ten times as long as the sweep's slice and at least SWEEP_BUSY_REST_MS (its slice is
        // ~1 ms: without its commit, ten times that swept at full tilt and cost the writes 8% of their IOPS).
        if (this.work) await restAfter(t0, sweepingBusy ? 10 : 3, sweepingBusy ? SWEEP_BUSY_REST_MS : 0);
      }
    } catch (e) {
      this.logger?.error({ err: e }, 'indexing the dedup log failed; it will stop until restart');
      this.stopped = true;
    } finally {
      this.running = false;
    }
    this.kick();
  }

  stop(): void {
    this.stopped = true;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = null;
    if (this.startSoon) clearImmediate(this.startSoon);
    this.startSoon = null;
  }
}
