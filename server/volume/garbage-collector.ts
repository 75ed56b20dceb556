// Releases what deleted volumes, snapshots and overwritten subtrees no longer reference, a few
// milliseconds at a time, so deleting a 16 TiB volume never stalls I/O on the others.
// Its queue (the nodes whose refcount reached zero) is part of the committed metadata, so a
// crash mid-way resumes where the last commit left it: refcounts stay exact.
import { FANOUT, FIRST_SLOT } from '../meta/map-node.js';
import type { MetaStore } from '../meta/meta-store.js';

/** Longest a slice of collection may hold the event loop. */
const SLICE_MS = 4;

export class GarbageCollector {
  private timer: NodeJS.Immediate | null = null;
  private running = false;
  private stopped = false;
  private waiters: Array<() => void> = [];
  releasedNodes = 0;

  constructor(
    private readonly meta: MetaStore,
    private readonly logger?: { error(...a: any[]): void },
  ) {}

  start(): void {
    this.kick();
  }

  /** Schedules collection if there is anything to collect. */
  kick(): void {
    if (this.stopped || this.timer || this.running) return;
    if (this.meta.sb.gcQueue.length === 0) return this.wake();
    this.timer = setImmediate(() => this.slice());
  }

  private slice(): void {
    this.timer = null;
    this.running = true;
    try {
      const until = performance.now() + SLICE_MS;
      const q = this.meta.sb.gcQueue;
      while (q.length > 0 && performance.now() < until) this.releaseNode(q[q.length - 1]);
    } catch (e) {
      this.logger?.error({ err: e }, 'garbage collection failed; it will stop until restart');
      this.stopped = true;
    } finally {
      this.running = false;
    }
    if (this.meta.sb.gcQueue.length > 0 && !this.stopped) this.timer = setImmediate(() => this.slice());
    else this.wake();
  }

  private releaseNode(id: number): void {
    const n = this.meta.getNode(id);
    const q = this.meta.sb.gcQueue;
    q.pop(); // popped before releasing children: decNode may push them
    const e = n.entries;
    for (let i = 0; i < FANOUT; i++) {
      const v = e[i];
      if (v === 0) continue;
      if (n.level > 0) this.meta.decNode(v);
      else if (v >= FIRST_SLOT) this.meta.decChunk(v);
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
    this.wake();
  }
}
