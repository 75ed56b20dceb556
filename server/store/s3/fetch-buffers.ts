// Buffers that fetched ranges of packs are read into, kept for reuse. Why not a new Buffer per range:
// - a range's body gathered by Buffer.concat into fresh memory cost ~1.1 s of CPU per GiB read on this
//   VM (its hypervisor charges for the first touch of a page, and freed memory is handed back to it), and
//   1 GiB of short-lived external memory per GiB read drove V8 into a mark-compact every ~40 MiB;
// - these are page-aligned (native alignedBuffer), so the pack's local copy is written from them O_DIRECT,
//   without a copy into the page cache.
// A buffer goes back to the pool only when nothing reads it any more (PackFetcher.start says when).
import { native } from '../../native.js';

export class FetchBuffers {
  private readonly free: Buffer[] = [];

  constructor(
    /** Size of the pooled buffers: the largest range a fetch makes in the usual case. */
    readonly bytes: number,
    /** Buffers kept when idle; more may be out at once (one per GET in flight, one per local write). */
    private readonly keep: number,
  ) {}

  /** A page-aligned buffer of at least `bytes` (a larger range gets its own, not pooled). */
  take(bytes: number): Buffer {
    if (bytes > this.bytes) return native().alignedBuffer(bytes);
    return this.free.pop() ?? native().alignedBuffer(this.bytes);
  }

  /** Returns a buffer from take() once no one reads it. */
  give(buf: Buffer): void {
    if (buf.length === this.bytes && this.free.length < this.keep) this.free.push(buf);
  }
}
