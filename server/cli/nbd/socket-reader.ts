// Exact-size reads from a socket during the NBD handshake (not a hot path): the bytes arrive in
// whatever pieces the kernel hands over, and the handshake wants "the next 20 bytes".
import type { Duplex } from 'node:stream';

export class SocketReader {
  private chunks: Buffer[] = [];
  private size = 0;
  private waiting: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private failure: Error | null = null;
  private readonly onData = (b: Buffer) => {
    this.chunks.push(b);
    this.size += b.length;
    this.pump();
  };
  private readonly onEnd = () => this.fail(new Error('the server closed the connection during the handshake'));
  private readonly onError = (e: Error) => this.fail(e);

  constructor(private readonly sock: Duplex) {
    sock.on('data', this.onData);
    sock.on('end', this.onEnd);
    sock.on('close', this.onEnd);
    sock.on('error', this.onError);
  }

  read(n: number): Promise<Buffer> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting = { n, resolve, reject };
      this.pump();
    });
  }

  /** Stops listening; returns bytes received beyond what was read (the handshake's end). */
  detach(): Buffer {
    this.sock.off('data', this.onData);
    this.sock.off('end', this.onEnd);
    this.sock.off('close', this.onEnd);
    this.sock.off('error', this.onError);
    const rest = Buffer.concat(this.chunks);
    this.chunks = [];
    this.size = 0;
    return rest;
  }

  private fail(e: Error): void {
    this.failure ??= e;
    const w = this.waiting;
    this.waiting = null;
    w?.reject(this.failure);
  }

  private pump(): void {
    const w = this.waiting;
    if (!w || this.size < w.n) return;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = all.subarray(0, w.n);
    const rest = all.subarray(w.n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.size = rest.length;
    this.waiting = null;
    w.resolve(out);
  }
}
