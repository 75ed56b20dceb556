// The handshake's input: socket data accumulated until an option's exact size is there. The
// transmission phase parses requests straight from socket buffers instead (connection.ts).
/** Handshake-phase input: accumulates socket data and hands out exact-size reads. Not a hot path. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  size = 0;
  private want = 0;
  private resolve: ((b: Buffer) => void) | null = null;
  private rejectFn: ((e: Error) => void) | null = null;
  private err: Error | null = null;

  push(b: Buffer): void {
    this.chunks.push(b);
    this.size += b.length;
    this.pump();
  }

  read(n: number): Promise<Buffer> {
    if (this.err) return Promise.reject(this.err);
    return new Promise((resolve, reject) => {
      this.want = n;
      this.resolve = resolve;
      this.rejectFn = reject;
      this.pump();
    });
  }

  fail(e: Error): void {
    this.err = e;
    const r = this.rejectFn;
    this.resolve = this.rejectFn = null;
    r?.(e);
  }

  /** Whatever arrived beyond the handshake (a client may pipeline its first requests). */
  drain(): Buffer[] {
    const c = this.chunks;
    this.chunks = [];
    this.size = 0;
    return c;
  }

  private pump(): void {
    if (!this.resolve || this.size < this.want) return;
    const n = this.want;
    let out: Buffer;
    if (this.chunks[0].length >= n) {
      out = this.chunks[0].subarray(0, n);
      if (this.chunks[0].length === n) this.chunks.shift();
      else this.chunks[0] = this.chunks[0].subarray(n);
    } else {
      out = Buffer.allocUnsafe(n);
      let got = 0;
      while (got < n) {
        const c = this.chunks[0];
        const take = Math.min(c.length, n - got);
        c.copy(out, got, 0, take);
        got += take;
        if (take === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(take);
      }
    }
    this.size -= n;
    const r = this.resolve;
    this.resolve = this.rejectFn = null;
    r(out);
  }
}
