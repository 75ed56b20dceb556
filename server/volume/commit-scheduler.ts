// When the volume layer commits: when enough changes have piled up, at least every interval when
// anything changed, and at once for FLUSH and FUA. A commit queues all its records in one
// synchronous stretch (lmdb-js makes one transaction of it), 0.2-0.4 us a change (measured: 4,096
// changes 0.7-1.8 ms, 32,768 changes 3.4-11.8 ms), so its size bounds the event loop's longest stall.
// A commit's disk writes hardly shrink with its size: random writes touch nearly every page of the
// chunk records' b-tree, and LMDB rewrites each page a commit touches. So each commit is a burst of
// ~10-30 MB on a 1 GiB volume, and a sync write (FLUSH, FUA) that meets one waits for the disk behind
// it: fewer, larger commits are what keeps the sync writes' tail short (docs/write-path.md, "Sync
// writes: the tail").
import { ShoalError } from '../errors.js';
import type { MetaStore } from '../meta/meta-store.js';

/**
 * Changes after which a commit starts while other volumes are busy (scaled down by cost: see
 * SHARED_STRETCH_MS). 4K FUA writes at queue depth 1 (~8,000 changes a second) over a 1 GiB volume,
 * 15 s each: with 4,096 (and a 2 s interval, an 8 MiB journal half) p99 3.6 ms and 22.9 KB on the disk
 * per write; with 32,768 (a 5 s interval, a 32 MiB half) p99 1.65-1.76 ms, 16.2 KB.
 */
const WRITE_COMMIT_BATCH = 32_768;
/**
 * With other volumes busy, a batch also keeps a commit's synchronous stretch near this long, from the
 * last commit's cost per change (CommitPipeline.stretchPerChange): a change costs 0.2-0.4 us in random
 * writes but ~2 us when clones' first writes copy shared leaves (a reference gained per chunk, folded
 * into its record by the commit when no slice did it first), and at bench:soak's start a batch of those
 * held the event loop 62 ms (a stall trace: the commit queueing chunk records for ~40 ms of it). Not
 * below MIN_SHARED_BATCH: commits cost disk bursts.
 */
const SHARED_STRETCH_MS = 20;
const MIN_SHARED_BATCH = 8192;
/**
 * With one volume busy writing (or none busy) a commit waits for up to four batches (131,072 changes),
 * fewer if they would hold the event loop longer than LONE_STRETCH_MS, never fewer than one batch. Why: a
 * commit's LMDB work hardly grows with its size (random writes dirty nearly every page of the chunk
 * records' b-tree within a few thousand writes, and a commit rewrites every page it dirties however
 * few of its records changed), so on the thread pool it costs about the same per commit, and fewer
 * commits cost less per write. 4K random writes at QD32 over a filled 1 GiB volume, fresh daemons
 * alternated (docs/write-path.md, "Commits per write"): 38-47 us of CPU per request against 48-53 at
 * 32,768; 262,144 gained nothing more. The price is the lone writer's own: stretches of 21-35 ms in
 * those runs, against ~8.
 */
const LONE_BATCHES = 4;
const LONE_STRETCH_MS = 40;
/**
 * The larger batch only while writes overwrite chunks (the last commit's chunk records at least this
 * share frees): that is when a commit's pages are the same pages again. Writes filling fresh space
 * dirty new pages in proportion to their changes, so larger commits save nothing there, and a 1 GiB
 * nbdcopy of unique data into a fresh volume ran at 424-526 MB/s with them against 461-590 without
 * (five runs each, alternated).
 */
const LONE_MIN_FREED_SHARE = 0.25;
/**
 * While blind references wait to be folded (a clone's first writes copying shared leaves: 256 of them a
 * leaf), a commit starts after this many changes, and a write waits for the commit in flight past twice
 * as many piled behind it, whoever is busy. Each such change costs its commit ~1.2 us to fold in the
 * take and ~1-2.6 us to write (the first such commit of a run the slowest), which neither the last
 * commit's cost per change nor the busy count (up to CHECK_MS old when a load starts) foresees: at
 * bench:soak's start the first commit took 11,464 changes, 14.8 ms to take and 30 ms to write, in one
 * turn each (scratch timing of the commit's stretch).
 */
const BLIND_BATCH = 4096;
/**
 * Changes piled up behind a commit in flight past which a client's write waits for it (admit()).
 * While a commit waits on the disk, changes pile up, and the next commit queues them all in one
 * synchronous stretch in which no other request is served.
 *
 * With other volumes busy: one batch as it stands (a stretch near SHARED_STRETCH_MS at most).
 * Unbounded, a disk slow for a moment under bench:soak's writes piled up enough to hold the event loop
 * 105-126 ms (a stall trace: the loop running all along, not preempted), every client of every volume
 * waiting.
 *
 * With one volume busy (or none): four batches of WRITE_COMMIT_BATCH (131,072 changes), whatever a
 * change costs. Its own requests are all that wait behind the stretch, and small commits cost a lone
 * writer throughput: 1 MiB writes after 30 s of 4 KiB random writes ran at 90, 132, 153 and 190
 * requests/s with the bound at 8,192, 32,768, 65,536 and 131,072 changes (172-190 unbounded). It is
 * still a bound: without one a disk slow for seconds grows the pile, its memory and the stretch without
 * end (test/meta/commit-pile.test.ts: 491,642 changes in one commit held 4 s).
 */
const PILE_BATCHES_ALONE = 4;
/**
 * At least this often a commit makes completed writes durable without a FLUSH (ext4's default commit
 * interval is also 5 s). A shorter interval commits a sync writer's changes more often than its batch
 * would (see WRITE_COMMIT_BATCH); a FLUSH never waits for it.
 */
const COMMIT_INTERVAL_MS = 5000;
/** A volume counts as busy for this long after a request of its clients arrived (a write waiting in admit() sends none). */
const BUSY_MS = 3000;
/** How often the pile is looked at: writes that change no volume record do not call changed(). */
const CHECK_MS = 100;
/** Map nodes are 2 KiB in memory: keep at most 64k clean ones (128 MiB, maps for ~64 GiB of hot data). */
const MAX_CACHED_NODES = 65_536;

/** What admit() looks at of an open volume: the requests its clients have sent. */
interface WatchedVolume {
  readonly io: { readonly reads: number; readonly writes: number };
}

export class CommitScheduler {
  private timer: NodeJS.Timeout | null = null;
  private queued = false;
  private lastCommit = performance.now();
  private volumes: () => Iterable<WatchedVolume> = () => [];
  /** Per volume: its request and write counts when last looked at, and when each last moved. */
  private readonly seen = new WeakMap<WatchedVolume, { n: number; at: number; w: number; wAt: number }>();
  /** Volumes busy at the last check (CHECK_MS): admit() allows a larger pile when it is at most one. */
  private busyVolumes = 0;
  /** Of those, volumes whose clients wrote in the last BUSY_MS. */
  private writingVolumes = 0;

  constructor(
    private readonly meta: MetaStore,
    private readonly logger: { error(obj: unknown, msg?: string): void } | undefined,
    private readonly intervalMs = COMMIT_INTERVAL_MS,
    /** A FLUSH that is not durable within this long fails (the commit goes on); none if undefined. */
    private readonly flushTimeoutMs?: number,
    /** Changes after which a commit starts (tests raise it to keep operations for the journal alone). */
    private readonly batch = WRITE_COMMIT_BATCH,
  ) {}

  /** The open volumes, looked at every check for which are busy (admit()). */
  watch(volumes: () => Iterable<WatchedVolume>): void {
    this.volumes = volumes;
  }

  /** How many volumes had a request arrive in the last BUSY_MS (and, in writingVolumes, a write). */
  private countBusy(now: number): number {
    let busy = 0;
    let writing = 0;
    for (const v of this.volumes()) {
      const n = v.io.reads + v.io.writes;
      const w = v.io.writes;
      let s = this.seen.get(v);
      if (s === undefined) this.seen.set(v, (s = { n, at: -Infinity, w, wAt: -Infinity }));
      else {
        if (s.n !== n) {
          s.n = n;
          s.at = now;
        }
        if (s.w !== w) {
          s.w = w;
          s.wAt = now;
        }
      }
      if (now - s.at < BUSY_MS) busy++;
      if (now - s.wAt < BUSY_MS) writing++;
    }
    this.writingVolumes = writing;
    return busy;
  }

  start(): void {
    let trimAt = performance.now() + this.intervalMs;
    this.timer = setInterval(() => {
      const now = performance.now();
      this.busyVolumes = this.countBusy(now);
      const pending = this.meta.pendingChanges;
      if (pending >= this.batchNow() || (pending > 0 && now - this.lastCommit >= this.intervalMs)) this.commitSoon();
      if (now >= trimAt) {
        trimAt = now + this.intervalMs;
        this.meta.nodes.trim(MAX_CACHED_NODES);
      }
    }, Math.min(CHECK_MS, this.intervalMs));
    this.timer.unref();
  }

  /**
   * Before a client's write, trim or zero: null, or a promise to wait for first (the commit in flight,
   * when too many changes have piled up behind it: see PILE_BATCHES_ALONE).
   */
  admit(): Promise<void> | null {
    const pending = this.meta.pendingChanges;
    if (this.meta.chunks.unfoldedReferences > 0) {
      if (pending < 2 * this.blindBatch()) return null;
      return this.waitOrCommit();
    }
    if (pending < this.sharedBatch()) return null;
    // Past the smaller bound, look again at which volumes are busy rather than trust the last check:
    // when a load starts on several volumes at once the check is up to CHECK_MS old and counts none,
    // and the larger bound let a clone's first writes pile up 131,072 changes (a 70-84 ms stretch).
    this.busyVolumes = this.countBusy(performance.now());
    if (pending < (this.busyVolumes > 1 ? this.sharedBatch() : PILE_BATCHES_ALONE * this.batch)) return null;
    return this.waitOrCommit();
  }

  /** Past the pile bound: the commit in flight to wait for, or else one started now. */
  private waitOrCommit(): Promise<void> | null {
    if (this.meta.pipeline.committing) return this.meta.pipeline.whenIdle();
    this.commitSoon();
    return null;
  }

  /** After a change: commits in the background once enough has piled up. */
  changed(): void {
    if (this.meta.pendingChanges >= this.batchNow()) this.commitSoon();
  }

  /**
   * Changes after which a commit starts, by who would wait behind its stretch: the shared batch while
   * several volumes are busy; the lone batch when none is, or when the one busy volume writes (it waits
   * behind its own changes); the batch as it is when the one busy volume only reads (its reads would
   * wait behind changes not its own: a deleted volume's reclaim, say).
   */
  private batchNow(): number {
    if (this.meta.chunks.unfoldedReferences > 0) return this.blindBatch();
    if (this.busyVolumes > 1) return this.sharedBatch();
    return this.busyVolumes === 0 || this.writingVolumes === 1 ? this.loneBatch() : this.batch;
  }

  /** The batch while blind references wait (BLIND_BATCH), scaled as sharedBatch() is: a raised batch stays raised. */
  private blindBatch(): number {
    return Math.floor((this.batch * BLIND_BATCH) / WRITE_COMMIT_BATCH);
  }

  /**
   * The batch while other volumes are busy: scaled down when a change costs more than
   * SHARED_STRETCH_MS allows at WRITE_COMMIT_BATCH (to MIN_SHARED_BATCH at most). Scaled, not capped: a
   * batch raised to keep operations for the journal alone stays raised.
   */
  private sharedBatch(): number {
    const per = this.meta.pipeline.stretchPerChange;
    if (!(per > 0)) return this.batch;
    const scale = Math.max(MIN_SHARED_BATCH / WRITE_COMMIT_BATCH, Math.min(1, SHARED_STRETCH_MS / (per * WRITE_COMMIT_BATCH)));
    return Math.floor(this.batch * scale);
  }

  /**
   * The batch of a volume busy alone: up to LONE_BATCHES batches while the last commit's cost per
   * change keeps the stretch within LONE_STRETCH_MS and its writes overwrote chunks
   * (LONE_MIN_FREED_SHARE). Just the batch before any commit was measured.
   */
  private loneBatch(): number {
    const per = this.meta.pipeline.stretchPerChange;
    if (!(per > 0) || this.meta.chunks.freedShare < LONE_MIN_FREED_SHARE) return this.batch;
    return Math.floor(Math.max(this.batch, Math.min(LONE_BATCHES * this.batch, LONE_STRETCH_MS / per)));
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
