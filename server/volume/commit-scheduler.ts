// When the volume layer commits: when enough changes have piled up, at least every interval when
// anything changed, and at once for FLUSH and FUA. A commit queues all its records in one
// synchronous stretch (lmdb-js makes one transaction of it), ~1-3 us each, so its size bounds the
// event loop's longest stall: a few thousand changes a commit keep it to a few ms, where two seconds
// of sustained random writes (~50k records) held the loop 100-600 ms (bench:soak). A small commit
// costs its fsyncs, but they wait on the disk, not on the loop.
import { ShoalError } from '../errors.js';
import type { MetaStore } from '../meta/meta-store.js';

/** Changes after which a commit starts. */
const WRITE_COMMIT_BATCH = 4096;
/**
 * Changes piled up behind a commit in flight past which a client's write waits for it (admit()), in
 * commit batches. While a commit waits on the disk, changes pile up, and the next commit queues them
 * all in one synchronous stretch (~1 us a change): without a bound, a disk slow for seconds grows the
 * pile, its memory and that stretch without end (120,180 changes in one commit held 1.5 s in
 * test/meta/commit-pile.test.ts). The bound is not lower because a commit's cost hardly grows with its
 * size: each rewrites the b-tree pages its changes touch, and after random writes the chunk records a
 * 1 MiB write replaces lie on nearly every page. 1 MiB writes after 30 s of 4 KiB random writes ran at
 * 90, 132, 153 and 190 requests/s with the bound at 2, 8, 16 and 32 batches (172-190 unbounded), the
 * other threads' CPU per request 7.1, 5.2, 5.1 and 4.0 ms: at two batches it halved them.
 */
const MAX_PILE_BATCHES = 32;
/** How often the pile is looked at: writes that change no volume record do not call changed(). */
const CHECK_MS = 100;
/** Map nodes are 2 KiB in memory: keep at most 64k clean ones (128 MiB, maps for ~64 GiB of hot data). */
const MAX_CACHED_NODES = 65_536;

export class CommitScheduler {
  private timer: NodeJS.Timeout | null = null;
  private queued = false;
  private lastCommit = performance.now();

  constructor(
    private readonly meta: MetaStore,
    private readonly logger: { error(obj: unknown, msg?: string): void } | undefined,
    private readonly intervalMs = 2000,
    /** A FLUSH that is not durable within this long fails (the commit goes on); none if undefined. */
    private readonly flushTimeoutMs?: number,
    /** Changes after which a commit starts (tests raise it to keep operations for the journal alone). */
    private readonly batch = WRITE_COMMIT_BATCH,
  ) {}

  start(): void {
    let trimAt = performance.now() + this.intervalMs;
    this.timer = setInterval(() => {
      const now = performance.now();
      const pending = this.meta.pendingChanges;
      if (pending >= this.batch || (pending > 0 && now - this.lastCommit >= this.intervalMs)) this.commitSoon();
      if (now >= trimAt) {
        trimAt = now + this.intervalMs;
        this.meta.nodes.trim(MAX_CACHED_NODES);
      }
    }, Math.min(CHECK_MS, this.intervalMs));
    this.timer.unref();
  }

  /**
   * Before a client's write, trim or zero: null, or a promise to wait for first (the commit in flight,
   * when MAX_PILE_BATCHES batches of changes have piled up behind it).
   */
  admit(): Promise<void> | null {
    if (this.meta.pendingChanges < MAX_PILE_BATCHES * this.batch) return null;
    if (this.meta.pipeline.committing) return this.meta.pipeline.whenIdle();
    this.commitSoon();
    return null;
  }

  /** After a change: commits in the background once enough has piled up. */
  changed(): void {
    if (this.meta.pendingChanges >= this.batch) this.commitSoon();
  }

  /** A background commit, once per burst of changes. */
  commitSoon(): void {
    if (this.queued) return;
    this.queued = true;
    this.lastCommit = performance.now();
    this.meta
      .commit()
      .catch((e) => this.logger?.error({ err: e }, 'background commit failed'))
      .finally(() => (this.queued = false));
  }

  /**
   * Makes every completed write durable (FLUSH, FUA). With a flush timeout (an S3 store in flush mode:
   * --s3-timeout) a FLUSH the store cannot confirm in time fails with EIO; the commit carries on, and what
   * was acknowledged before stays on the local disk until the store takes it.
   */
  flush(): Promise<void> {
    const commit = this.meta.commit();
    const ms = this.flushTimeoutMs;
    if (ms === undefined) return commit;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const err = new ShoalError('io_error', `the object store did not confirm the flush within ${ms / 1000}s (--s3-timeout); the data stays on the local disk and is uploaded once the store answers`);
        this.logger?.error({ err }, `a FLUSH failed: ${err.message}`);
        reject(err);
      }, ms);
    });
    return Promise.race([commit, timeout]).finally(() => clearTimeout(timer));
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}
