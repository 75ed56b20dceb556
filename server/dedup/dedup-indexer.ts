// Moves the dedup log into the fingerprint index in the background, a batch per commit. Each
// random insert copies an index page, which is cheap only when nothing else needs the disk: so
// it waits until writes have paused (a timer notes the write-activity count and goes ahead only
// if it has not moved), unless the log grows past its bound, and it rests between batches.
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

export class DedupIndexer {
  private running = false;
  private stopped = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private due = false;
  private readonly idleMs: number;
  private readonly chunks: ChunkRecords;
  /** Log entries taken into the on-disk index. */
  readonly indexed = new RateMeter();

  constructor(
    private readonly meta: MetaStore,
    private readonly dedup: DedupIndex,
    private readonly logger?: { error(obj: unknown, msg?: string): void },
    opts: { idleMs?: number } = {},
  ) {
    this.idleMs = opts.idleMs ?? LOG_IDLE_MS;
    this.chunks = meta.chunks;
    dedup.log.logged = () => this.kick();
  }

  start(): void {
    this.kick();
  }

  /** Indexes at once if the log is too long, else once writes pause. Cheap to call often. */
  kick(): void {
    if (this.stopped || this.running || this.dedup.log.backlog === 0) return;
    if (this.dedup.log.size > LOG_MAX) {
      this.due = true;
      void this.run();
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
      while (!this.stopped && log.backlog > 0 && (this.due || log.size > LOG_MAX)) {
        // New writes stop the indexing (they re-arm the idle timer) unless the log is too long.
        const n = this.chunks.writeActivity;
        const n0 = this.dedup.indexSlice(INDEX_BATCH);
        // Counted as the slice leaves the log, so /v1/stats never shows an empty log with entries
        // missing from the count while the commit is under way.
        this.indexed.add(n0);
        const t0 = performance.now();
        await this.meta.commit();
        if (log.backlog === 0 || this.chunks.writeActivity !== n) this.due = false;
        // Paced: idle for three times as long as the commit took, so a snapshot or a write's
        // FLUSH seldom queues behind an index commit (random inserts: ~10-30 ms each).
        if (log.backlog > 0) await restAfter(t0, 3);
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
  }
}
