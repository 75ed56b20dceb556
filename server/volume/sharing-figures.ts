// How much of a volume's mapped space only it references, and how much it shares (VolumeInfo's
// exclusiveBytes and sharedBytes). Finding out walks the volume's whole map and reads the refcount of
// every chunk it maps: about a microsecond a chunk, seconds for a large volume. GET /v1/volumes/NAME
// walks at once (one volume, asked for by name); the volume list and the /metrics scrape show the
// figures of a walk done in the background, a few milliseconds at a time, at most every refresh
// interval per volume. (Walking every volume on each scrape held the event loop 0.5-1.4 s with four
// 256 MiB volumes in bench:soak, every client waiting; it grows with the volumes.)
//
// A background walk yields between slices while writes go on: it reads a map that may change under
// it, so its figures are an estimate of that moment (exact when the volume was still); a node freed
// meanwhile ends the walk, and the next round starts it again.
//
// While clients are served it rests fifteen times as long as each slice took, not twice: a third of
// the event loop for the second or more a 1 GiB walk takes was a third less for the requests (with the
// walk running throughout, 4K random writes lost 13-17% of their IOPS; 4-9% with the longer rests).
// Figures for a list or a scrape can wait; clients should not.
import { setTimeout as sleep } from 'node:timers/promises';
import { FANOUT, FIRST_SLOT } from '../meta/map-node.js';
import { restFor } from '../meta/pacing.js';
import type { MetaStore } from '../meta/meta-store.js';
import type { RootRecord } from '../meta/volume-records.js';
import type { VolumeState } from './volume-state.js';

export interface Sharing {
  exclusive: number;
  shared: number;
}

/** Figures and when they were taken (ISO 8601). */
export interface SharingFigure extends Sharing {
  at: string;
}

interface Frame {
  entries: Float64Array;
  level: number;
  i: number;
  shared: boolean;
}

/** One walk of a map, resumable: step() goes on until it is done or its time is up. */
class SharingWalk {
  private readonly stack: Frame[] = [];
  readonly result: Sharing = { exclusive: 0, shared: 0 };

  constructor(
    private readonly meta: MetaStore,
    r: RootRecord,
  ) {
    if (r.root !== 0) this.push(r.root, false);
  }

  private push(id: number, inShared: boolean): void {
    const n = this.meta.nodes.get(id);
    this.stack.push({ entries: n.entries, level: n.level, i: 0, shared: inShared || this.meta.nodes.refCount(id) > 1 });
  }

  /** Walks until done (true) or until performance.now() passes `until` (false). */
  step(until = Infinity): boolean {
    const cs = this.meta.chunkSize;
    const chunks = this.meta.chunks;
    let n = 0;
    while (this.stack.length > 0) {
      const f = this.stack[this.stack.length - 1]!;
      if (f.i >= FANOUT) {
        this.stack.pop();
        continue;
      }
      const v = f.entries[f.i++]!;
      if (v === 0) continue;
      if (f.level > 0) this.push(v, f.shared);
      else if (v >= FIRST_SLOT) {
        if (f.shared || chunks.refsOf(v) > 1) this.result.shared += cs;
        else this.result.exclusive += cs;
      }
      // The clock every 256 entries: a few hundred microseconds of work between looks.
      if ((++n & 255) === 0 && performance.now() >= until) return this.stack.length === 0;
    }
    return true;
  }
}

/** Slice of a background walk. */
const SLICE_MS = 4;
/** The rest after a slice, in slices: while idle, and while clients' requests arrive. */
const REST_IDLE = 2;
const REST_BUSY = 15;

/** How the walks so far were paced: their slices, and the rests after them while idle and while busy. */
export interface WalkPacing {
  slices: number;
  sliceMs: number;
  idleRests: number;
  busyRests: number;
  restMs: number;
}

export class SharingFigures {
  /** Totals since start (tests read them: the rests' count and length, not the walk's wall time, show the pacing). */
  readonly pacing: WalkPacing = { slices: 0, sliceMs: 0, idleRests: 0, busyRests: 0, restMs: 0 };
  private readonly figures = new Map<string, SharingFigure>();
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private stopped = false;

  constructor(
    private readonly meta: MetaStore,
    private readonly states: () => Iterable<VolumeState>,
    private readonly refreshMs = 30_000,
    /** A count that moves while clients are served (NBD requests): the walk rests longer while it moves. */
    private readonly foreground: () => number = () => 0,
  ) {}

  /** The last figures of volume `name`, or null before its first walk. */
  get(name: string): SharingFigure | null {
    return this.figures.get(name) ?? null;
  }

  /** Figures known without a walk (a new volume, a fresh clone) or from a walk done now. */
  set(name: string, s: Sharing): SharingFigure {
    const f = { exclusive: s.exclusive, shared: s.shared, at: new Date().toISOString() };
    this.figures.set(name, f);
    return f;
  }

  /** The exact figures of `r` now (one synchronous walk). */
  walkNow(name: string, r: RootRecord): SharingFigure {
    const w = new SharingWalk(this.meta, r);
    w.step();
    return this.set(name, w.result);
  }

  forget(name: string): void {
    this.figures.delete(name);
  }

  /** A first round at once, then one every refresh interval. */
  start(): void {
    const round = () => void this.round();
    setImmediate(round);
    this.timer = setInterval(round, this.refreshMs);
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Walks, a slice at a time, each volume whose figures are older than the refresh interval. */
  private async round(): Promise<void> {
    if (this.running || this.stopped) return;
    this.running = true;
    try {
      for (const st of [...this.states()]) {
        const last = this.figures.get(st.name);
        if (last && Date.now() - Date.parse(last.at) < this.refreshMs * 0.9) continue;
        if (st.deleted) continue;
        const fig = await this.walkSliced(st.record).catch(() => null); // a node freed under it: next round
        if (fig && !st.deleted && !this.stopped) this.set(st.name, fig);
        if (this.stopped) return;
      }
    } finally {
      this.running = false;
    }
  }

  private async walkSliced(r: RootRecord): Promise<Sharing> {
    const w = new SharingWalk(this.meta, r);
    let served = this.foreground();
    for (;;) {
      const t0 = performance.now();
      const done = w.step(t0 + SLICE_MS);
      const p = this.pacing;
      p.slices++;
      p.sliceMs += performance.now() - t0;
      if (done) return w.result;
      // Requests are taken between slices, so the count moves during the rests: busy if it moved since the last look.
      const now = this.foreground();
      const busy = now !== served;
      const ms = restFor(t0, busy ? REST_BUSY : REST_IDLE);
      if (busy) p.busyRests++;
      else p.idleRests++;
      p.restMs += ms;
      await sleep(ms);
      served = now;
      if (this.stopped) throw new Error('stopped');
    }
  }
}
