// Releases what deleted volumes, snapshots and overwritten subtrees no longer reference, a few
// milliseconds at a time, so deleting a 16 TiB volume never stalls I/O on the others. Its queue
// (the nodes whose refcount reached zero) is part of the committed metadata, so a crash mid-way
// resumes where the last commit left it: refcounts stay exact.
import { FANOUT, FIRST_SLOT } from './map-node.js';
import type { MetaStore } from './meta-store.js';
import { restAfter } from './pacing.js';
import { RateMeter } from '../rate-meter.js';

/** Longest a slice of reclaim may hold the event loop. */
const SLICE_MS = 4;
/**
 * Changes after which reclaim waits for a commit. Queueing a commit's records holds the event
 * loop: a freed chunk is up to three records (its record, its free-list entry, and its index entry
 * unless its fingerprint was still only in the dedup log), about
 * 3 us in all. At 8192 changes the delete benchmark saw 65 ms read stalls on another volume; at
 * 4096 the queueing alone took 8-39 ms (median 12) per commit. 1024 keeps it to a few ms.
 */
const COMMIT_BATCH = 1024;

/** How long reclaim rests after a commit while clients are served, in multiples of the commit's time. */
const RESTS_PER_COMMIT = 2;

export class SpaceReclaim {
  private timer: NodeJS.Immediate | null = null;
  private running = false;
  private stopped = false;
  private waiters: Array<() => void> = [];
  private readonly sliceMs: number;
  /** Chunk references released (each drops a chunk's refcount; the last one frees it). */
  readonly released = new RateMeter();

  /**
   * @param foreground a count that moves while clients are being served (NBD requests): reclaim
   *   rests between its commits while it moves.
   */
  constructor(
    private readonly meta: MetaStore,
    private readonly foreground: () => number,
    private readonly logger?: { error(obj: unknown, msg?: string): void },
    opts: { sliceMs?: number } = {},
  ) {
    this.sliceMs = opts.sliceMs ?? SLICE_MS;
  }

  start(): void {
    this.kick();
  }

  /** Schedules reclaim if there is anything to release (cheap when there is nothing). */
  kick(): void {
    if (this.stopped || this.timer || this.running) return;
    if (this.meta.nodes.reclaimBacklog > 0) this.timer = setImmediate(() => void this.run());
    else this.wake();
  }

  // Slices of sliceMs with a turn of the event loop between them, so NBD requests on other
  // volumes are served in between; and a commit whenever a slice has piled up COMMIT_BATCH
  // changes, so no commit has millions of freed chunks to write at once (the 8 GiB delete
  // benchmark showed 6 s stalls when the whole release went into one commit).
  private async run(): Promise<void> {
    this.timer = null;
    this.running = true;
    const nodes = this.meta.nodes;
    try {
      while (!this.stopped && nodes.reclaimBacklog > 0) {
        const until = performance.now() + this.sliceMs;
        do this.release(nodes.nextToReclaim()!, until);
        while (nodes.reclaimBacklog > 0 && performance.now() < until && this.meta.pendingChanges < COMMIT_BATCH);
        if (this.meta.pendingChanges >= COMMIT_BATCH) {
          const busy = this.foreground();
          const t0 = performance.now();
          await this.meta.commit();
          // While NBD clients are served, rest twice as long as the commit took: each commit of
          // freed chunks rewrites ~3 LMDB pages per chunk (the records sit at random keys) on
          // lmdb-js's threads, and back to back those competed with the event loop for two cores
          // (the delete benchmark's reads saw their p99.9 go from 7 to 17 ms). At a rest as long as
          // the commit, a traced 8 GiB delete had 150 event-loop gaps over 20 ms against 8 in the
          // control window, most of them the event loop waiting for a core. Idle, it goes flat out.
          if (this.foreground() !== busy) await restAfter(t0, RESTS_PER_COMMIT);
        } else await new Promise((r) => setImmediate(r));
      }
    } catch (e) {
      this.logger?.error({ err: e }, 'space reclaim failed; it will stop until restart');
      this.stopped = true;
    } finally {
      this.running = false;
    }
    this.wake();
  }

  /**
   * Releases the children of node `id` (the queue's next), then the node itself; stops early once
   * `until` has passed, leaving the node on the queue to go on from in the next slice. (A leaf
   * holds 256 chunks, each a chunk-record read: the delete benchmark saw single leaves hold the
   * event loop 12-15 ms on a busy machine, three times the slice.) Released entries are zeroed and
   * the node is marked dirty, so a commit between two slices stores what is left to release: after
   * a crash, reclaim goes on from there and no child is released twice. Nothing else reads the
   * node: its refcount is zero.
   */
  private release(id: number, until: number): void {
    const nodes = this.meta.nodes;
    const chunks = this.meta.chunks;
    const n = nodes.get(id);
    nodes.beginReclaim(id); // off the queue before releasing children: dec() may queue them
    const e = n.entries;
    let done = 0;
    let chunkRefs = 0;
    let i = 0;
    for (; i < FANOUT; i++) {
      const v = e[i];
      if (v === 0) continue;
      if (n.level > 0) nodes.dec(v);
      else if (v >= FIRST_SLOT) {
        chunks.dec(v);
        chunkRefs++;
      }
      e[i] = 0;
      // performance.now() every 16 entries: ~16 record reads between looks at the clock.
      if ((++done & 15) === 0 && i < FANOUT - 1 && performance.now() >= until) break;
    }
    if (chunkRefs > 0) {
      nodes.releasedChunks(chunkRefs);
      this.released.add(chunkRefs);
    }
    if (i < FANOUT) nodes.resumeLater(id);
    else nodes.remove(id);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves when nothing is left to release (or reclaim is stopped). */
  drain(): Promise<void> {
    if (this.stopped || this.meta.nodes.reclaimBacklog === 0) return Promise.resolve();
    const p = new Promise<void>((r) => this.waiters.push(r));
    this.kick();
    return p;
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearImmediate(this.timer);
    this.timer = null;
    this.wake();
  }
}
