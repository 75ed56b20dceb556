// Serialises operations on overlapping chunk ranges of one map: a sub-chunk write is a
// read-modify-write of the chunk, and two of those racing on one chunk would lose one.
// Operations on disjoint ranges run concurrently.

interface Held {
  from: number;
  to: number;
  done: Promise<void>;
}

export class RangeLock {
  private held: Held[] = [];

  /** Waits until [from, to) overlaps nothing held, takes it, and returns its release function. */
  async acquire(from: number, to: number): Promise<() => void> {
    for (let blocker = this.blocker(from, to); blocker; blocker = this.blocker(from, to)) await blocker.done;
    let release!: () => void;
    const h: Held = { from, to, done: new Promise<void>((r) => (release = r)) };
    this.held.push(h);
    return () => {
      const i = this.held.indexOf(h);
      if (i >= 0) this.held.splice(i, 1);
      release();
    };
  }

  /** Whether nothing held overlaps [from, to): an acquire() called now takes it at once, before it returns. */
  isFree(from: number, to: number): boolean {
    return !this.blocker(from, to);
  }

  private blocker(from: number, to: number): Held | undefined {
    return this.held.find((h) => h.from < to && from < h.to);
  }

  get busy(): boolean {
    return this.held.length > 0;
  }
}
