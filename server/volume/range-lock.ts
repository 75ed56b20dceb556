// Serialises operations on overlapping chunk ranges of one map: a sub-chunk write is a
// read-modify-write of the chunk, and two of those racing on one chunk would lose one.
// Operations on disjoint ranges run concurrently.
//
// Every NBD write takes a range, nearly always a free one: tryAcquire() takes it without a promise,
// and a held range makes the promise its waiters wait on only when one comes (the write path's
// allocations per 4 KiB write were ~10 KB, most of it async machinery like this).

interface Held {
  from: number;
  to: number;
  /** Resolvers of those waiting for its release; null while none waits. */
  waiters: Array<() => void> | null;
  release: () => void;
}

export class RangeLock {
  private held: Held[] = [];

  /** Takes [from, to) now if nothing held overlaps it and returns its release function; null if something does. */
  tryAcquire(from: number, to: number): (() => void) | null {
    return this.blocker(from, to) ? null : this.take(from, to);
  }

  /** Waits until [from, to) overlaps nothing held, takes it, and returns its release function. */
  async acquire(from: number, to: number): Promise<() => void> {
    for (let b = this.blocker(from, to); b; b = this.blocker(from, to)) {
      const h = b;
      await new Promise<void>((r) => (h.waiters ??= []).push(r));
    }
    return this.take(from, to);
  }

  /** Whether nothing held overlaps [from, to): an acquire() called now takes it at once, before it returns. */
  isFree(from: number, to: number): boolean {
    return !this.blocker(from, to);
  }

  get busy(): boolean {
    return this.held.length > 0;
  }

  private take(from: number, to: number): () => void {
    const h: Held = {
      from,
      to,
      waiters: null,
      release: () => {
        const i = this.held.indexOf(h);
        if (i < 0) return; // released twice: the second time does nothing
        this.held.splice(i, 1);
        const w = h.waiters;
        h.waiters = null;
        if (w) for (const r of w) r();
      },
    };
    this.held.push(h);
    return h.release;
  }

  private blocker(from: number, to: number): Held | undefined {
    // A loop, not find(): no closure per call.
    const held = this.held;
    for (let i = 0; i < held.length; i++) if (held[i].from < to && from < held[i].to) return held[i];
    return undefined;
  }
}
