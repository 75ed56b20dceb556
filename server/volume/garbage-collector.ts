// Releases what deleted volumes, snapshots and overwritten subtrees no longer reference, a few
// milliseconds at a time, so deleting a 16 TiB volume never stalls I/O on the others.
// Its queue (the nodes whose refcount reached zero) is part of the committed metadata, so a
// crash mid-way resumes where the last commit left it: refcounts stay exact.
import { FANOUT, FIRST_SLOT } from '../meta/map-node.js';
import type { MetaStore } from '../meta/meta-store.js';

/** Longest a slice of collection may hold the event loop. */
export const SLICE_MS = 4;
/**
 * Changes after which collection waits for a commit. Queueing a commit's records holds the event
 * loop: a freed chunk is three records (its record, its index entry, its free-list entry), about
 * 3 us in all. At 8192 changes the delete benchmark saw 65 ms read stalls on another volume; at
 * 4096 the queueing alone took 8-39 ms (median 12) per commit. 1024 keeps it to a few ms.
 */
export const COMMIT_BATCH = 1024;
/** Changes after which the write path starts a commit (larger: every commit costs two fsyncs). */
export const WRITE_COMMIT_BATCH = 32768;
/**
 * Logged fingerprints (see MetaStore's fingerprint log) the index takes in while writes go on
 * only beyond this many; below it, only once writes have paused for FP_LOG_IDLE_MS. 512 Ki
 * entries: 2 GiB of unique data at 4 KiB chunks; at most ~117 MiB of memory (a 48-byte native
 * table slot, kept 1/4 to 1/2 full, and a 42-byte log record each).
 */
export const FP_LOG_MAX = 512 * 1024;
export const FP_LOG_IDLE_MS = 2000;

/** Idles `factor` times as long as the work begun at `t0` (performance.now()) took, at most 200 ms. */
function restAfter(t0: number, factor: number): Promise<void> {
  return new Promise((r) => setTimeout(r, Math.min(200, factor * (performance.now() - t0))));
}

export class GarbageCollector {
  private timer: NodeJS.Immediate | null = null;
  private running = false;
  private stopped = false;
  private waiters: Array<() => void> = [];
  releasedNodes = 0;
  /** Counts NBD requests on any export (VolumeExport bumps it): collection yields to them. */
  foregroundIo = 0;

  private readonly fpLogIdleMs: number;
  private readonly sliceMs: number;

  constructor(
    private readonly meta: MetaStore,
    private readonly logger?: { error(...a: any[]): void },
    opts: { fpLogIdleMs?: number; sliceMs?: number } = {},
  ) {
    this.fpLogIdleMs = opts.fpLogIdleMs ?? FP_LOG_IDLE_MS;
    this.sliceMs = opts.sliceMs ?? SLICE_MS;
  }

  start(): void {
    this.kick();
  }

  /**
   * Schedules collection if there is anything to collect, and indexing of logged fingerprints
   * once writes pause (called after every write: cheap when there is nothing to start).
   */
  kick(): void {
    if (this.stopped || this.timer || this.running) return;
    if (this.meta.sb.gcQueue.length > 0 || this.meta.fpLogSize > FP_LOG_MAX) {
      this.timer = setImmediate(() => void this.run());
      return;
    }
    this.wake();
    if (this.meta.fpLogBacklog > 0) this.armLogTimer();
  }

  // Indexing waits until writes have paused for fpLogIdleMs: a timer notes the write-activity
  // count, and runs the collector only if the count has not moved when it fires.
  private logTimer: NodeJS.Timeout | null = null;
  private armLogTimer(): void {
    if (this.logTimer || this.stopped) return;
    const n = this.meta.writeActivity;
    this.logTimer = setTimeout(() => {
      this.logTimer = null;
      if (this.meta.writeActivity !== n) return this.kick(); // writes go on: wait again
      this.logDue = true;
      if (!this.timer && !this.running && !this.stopped) this.timer = setImmediate(() => void this.run());
    }, this.fpLogIdleMs);
    this.logTimer.unref?.();
  }
  private logDue = false;

  // Slices of SLICE_MS with a turn of the event loop between them, so NBD requests on other
  // volumes are served in between; and a commit whenever a slice has piled up COMMIT_BATCH
  // changes, so no commit has millions of freed chunks to write at once (the 8 GiB delete
  // benchmark showed 6 s stalls when the whole release went into one commit).
  //
  // Once nothing is left to release, the same loop moves logged fingerprints into the on-disk
  // index, a COMMIT_BATCH at a time (each random insert copies an index page: cheap only when
  // nothing else needs the disk), once writes have paused, or at once when the log is too long.
  private async run(): Promise<void> {
    this.timer = null;
    this.running = true;
    try {
      const q = this.meta.sb.gcQueue;
      while (!this.stopped) {
        if (q.length > 0) {
          const until = performance.now() + this.sliceMs;
          do this.releaseNode(q[q.length - 1], until);
          while (q.length > 0 && performance.now() < until && this.meta.pendingChanges < COMMIT_BATCH);
          if (q.length === 0) this.wake();
        } else if (this.meta.fpLogBacklog > 0 && (this.logDue || this.meta.fpLogSize > FP_LOG_MAX)) {
          // New writes stop the indexing (they re-arm the idle timer) unless the log is too long.
          const n = this.meta.writeActivity;
          this.meta.mergeFingerprintLog(COMMIT_BATCH);
          const t0 = performance.now();
          await this.meta.commit();
          if (this.meta.fpLogBacklog === 0 || this.meta.writeActivity !== n) this.logDue = false;
          // Paced: idle for three times as long as the commit took, so a snapshot or a write's
          // FLUSH seldom queues behind an index commit (random inserts: ~10-30 ms each).
          if (this.meta.fpLogBacklog > 0) await restAfter(t0, 3);
          continue;
        } else break;
        if (this.meta.pendingChanges >= COMMIT_BATCH) {
          const io = this.foregroundIo;
          const t0 = performance.now();
          await this.meta.commit();
          // While NBD clients are served, rest as long as the commit took: each commit of
          // freed chunks rewrites ~3 LMDB pages per chunk (the records sit at random keys) on
          // lmdb-js's threads, and back to back those competed with the event loop for two cores
          // (the delete benchmark's reads saw their p99.9 go from 7 to 17 ms). Idle, it goes flat out.
          if (this.foregroundIo !== io) await restAfter(t0, 1);
        } else await new Promise((r) => setImmediate(r));
      }
    } catch (e) {
      this.logger?.error({ err: e }, 'garbage collection failed; it will stop until restart');
      this.stopped = true;
    } finally {
      this.running = false;
    }
    this.wake();
    if (this.meta.fpLogBacklog > 0) this.armLogTimer();
  }

  /**
   * Releases the children of node `id` (the queue's last), then the node itself; stops early once
   * `until` has passed, leaving the node at the queue's end to go on from in the next slice. (A
   * leaf holds 256 chunks, each a chunk-record read: the delete benchmark saw single leaves hold
   * the event loop 12-15 ms on a busy machine, three times the slice.) Released entries are zeroed
   * and the node is marked dirty, so a commit between two slices stores what is left to release:
   * after a crash, collection goes on from there and no child is released twice. Nothing else
   * reads the node: its refcount is zero.
   */
  private releaseNode(id: number, until: number): void {
    const n = this.meta.getNode(id);
    const q = this.meta.sb.gcQueue;
    q.pop(); // popped before releasing children: decNode may push them
    const e = n.entries;
    let done = 0;
    for (let i = 0; i < FANOUT; i++) {
      const v = e[i];
      if (v === 0) continue;
      if (n.level > 0) this.meta.decNode(v);
      else if (v >= FIRST_SLOT) this.meta.decChunk(v);
      e[i] = 0;
      // performance.now() every 16 entries: ~16 record reads between looks at the clock.
      if ((++done & 15) === 0 && i < FANOUT - 1 && performance.now() >= until) {
        this.meta.markNodeDirty(id);
        q.push(id);
        return;
      }
    }
    this.meta.deleteNode(id);
    this.releasedNodes++;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves when the queue is empty (or collection is stopped). */
  drain(): Promise<void> {
    if (this.stopped || this.meta.sb.gcQueue.length === 0) return Promise.resolve();
    const p = new Promise<void>((r) => this.waiters.push(r));
    this.kick();
    return p;
  }

  get pending(): number {
    return this.meta.sb.gcQueue.length;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearImmediate(this.timer);
    this.timer = null;
    if (this.logTimer) clearTimeout(this.logTimer);
    this.logTimer = null;
    this.wake();
  }
}
