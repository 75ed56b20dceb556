// Buffers for WRITE payloads that arrive over several socket reads (every large write: the socket
// delivers 64 KiB at a time), reused once their request has succeeded.
//
// A fresh 1 MiB buffer per request is fresh memory: glibc returns a freed one to the kernel, so each
// request faulted its 256 pages in again (~150-220 us per MiB here against ~19 us for the same copy
// into a reused buffer), and V8 tracked and swept each one. 1M writes at QD8 over a filled volume,
// run in alternation: 324-360 requests/s with reuse against 283-313 without, the event loop's CPU per
// request ~2.1 ms against ~2.5.
//
// A buffer goes back once every holder is done with it: the request, when it succeeded (a failed one
// may still be read by a write on the thread pool: it is left to the collector), and whoever kept a
// view past the request's end with keep() (the flush journal holds written data for FLUSHes to come,
// and gives it back once it is in a record or a commit covers it). Small payloads are not pooled:
// V8's own pool serves them.
//
// Idle buffers are bounded in bytes, across size classes. A full pool makes room for a buffer given
// back by letting go of idle ones of the class used longest ago: before, a pool filled by one
// client's requests (nbdcopy's 256 KiB) kept them for good, and every 1 MiB write after it took fresh
// memory (2,035 allocations in 2,100 requests, against 8 when the pool began empty).
/** Payloads at least this long come from the pool. */
const MIN_POOLED = 64 * 1024;
/** Idle buffers held, at most (the in-flight ones are bounded by each connection's in-flight bytes). */
const MAX_IDLE_BYTES = 32 * 1024 * 1024;

export class PayloadPool {
  /** Idle buffers by capacity (a power of two). */
  private readonly idle = new Map<number, ArrayBuffer[]>();
  private idleBytes = 0;
  /** When each capacity was last taken or given back (a count of those calls): what to let go first. */
  private readonly used = new Map<number, number>();
  private clock = 0;
  /**
   * Holders of each buffer in use that this pool made (only those come back: a payload may be a view
   * into a socket's chunk). Weak: a buffer never given back is the collector's.
   */
  private readonly holds = new WeakMap<ArrayBuffer, number>();

  /** A buffer of exactly `length` bytes (its contents are garbage), held once. */
  take(length: number): Buffer {
    if (length < MIN_POOLED) return Buffer.allocUnsafe(length);
    const cap = 2 ** Math.ceil(Math.log2(length));
    this.used.set(cap, ++this.clock);
    let ab = this.idle.get(cap)?.pop();
    if (ab) this.idleBytes -= cap;
    else ab = new ArrayBuffer(cap);
    this.holds.set(ab, 1);
    return Buffer.from(ab, 0, length);
  }

  /** One more holder of `data`'s buffer, past its request's end (a no-op for one the pool did not make). */
  keep(data: Buffer): void {
    const ab = data.buffer as ArrayBuffer;
    const n = this.holds.get(ab);
    if (n !== undefined) this.holds.set(ab, n + 1);
  }

  /** A holder is done with `data`: once none is left, its buffer may serve another request. */
  give(data: Buffer): void {
    const ab = data.buffer as ArrayBuffer;
    const n = this.holds.get(ab);
    if (n === undefined) return;
    if (n > 1) {
      this.holds.set(ab, n - 1);
      return;
    }
    this.holds.delete(ab);
    const cap = ab.byteLength;
    this.used.set(cap, ++this.clock);
    if (this.idleBytes + cap > MAX_IDLE_BYTES && !this.makeRoom(cap)) return;
    let list = this.idle.get(cap);
    if (!list) this.idle.set(cap, (list = []));
    list.push(ab);
    this.idleBytes += cap;
  }

  /**
   * Lets go of idle buffers of other capacities, those used longest ago first, until one of `cap`
   * fits; false if it cannot (the idle bytes are all of `cap`). A few classes at most: a linear pick.
   */
  private makeRoom(cap: number): boolean {
    while (this.idleBytes + cap > MAX_IDLE_BYTES) {
      let oldest = -1;
      for (const [c, list] of this.idle) {
        if (c !== cap && list.length > 0 && (oldest < 0 || this.used.get(c)! < this.used.get(oldest)!)) oldest = c;
      }
      if (oldest < 0) return false;
      this.idle.get(oldest)!.pop();
      this.idleBytes -= oldest;
    }
    return true;
  }

  /** Bytes held idle (for tests). */
  get idleSize(): number {
    return this.idleBytes;
  }
}

/** One pool for every connection: payload buffers move between them as requests come and go. */
export const payloads = new PayloadPool();
