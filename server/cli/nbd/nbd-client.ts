// An NBD client connection for `shoal import` and `shoal export`: pipelined WRITE, READ,
// BLOCK_STATUS and FLUSH over one negotiated socket (plain or TLS), each request a promise
// settled by its reply (simple or structured, in any order). Written for copying images, not as a
// general library: no resize, no extended headers.
import * as C from '../../nbd/constants.js';
import { CliError } from '../api-client.js';
import { connectSocket, describeAddress, handshake, type NbdTarget, type Negotiated } from './client-handshake.js';

/** A run of bytes with one allocation state (base:allocation). */
export interface Extent {
  length: number;
  hole: boolean; // NBD_STATE_HOLE
  zero: boolean; // NBD_STATE_ZERO: reads as zeroes
}

const ERRNO_NAMES: Record<number, string> = { 1: 'EPERM', 5: 'EIO', 12: 'ENOMEM', 22: 'EINVAL', 28: 'ENOSPC', 75: 'EOVERFLOW', 95: 'ENOTSUP', 108: 'ESHUTDOWN' };
const CMD = ['READ', 'WRITE', 'DISC', 'FLUSH', 'TRIM', 'CACHE', 'WRITE_ZEROES', 'BLOCK_STATUS'];

interface Pending {
  type: number;
  offset: number;
  length: number;
  buf: Buffer | null; // READ: where the data goes
  extents: Extent[] | null; // BLOCK_STATUS
  error: string | null;
  resolve: (v: Buffer | Extent[] | undefined) => void;
  reject: (e: Error) => void;
}

const enum Rx {
  Header,
  SimpleData, // a READ's data after a simple reply
  ChunkData, // an OFFSET_DATA chunk's data, after its offset
  ChunkPayload, // any other structured chunk's payload, read whole
}

/** Incoming bytes, consumed from the front. */
class Incoming {
  private chunks: Buffer[] = [];
  size = 0;

  push(b: Buffer): void {
    this.chunks.push(b);
    this.size += b.length;
  }

  /** Copies n bytes (n ≤ size) from the front into dest at destOff and consumes them. */
  take(dest: Buffer, destOff: number, n: number, consume = true): void {
    let done = 0;
    let i = 0;
    while (done < n) {
      const c = this.chunks[i]!;
      const k = Math.min(c.length, n - done);
      c.copy(dest, destOff + done, 0, k);
      done += k;
      if (!consume) {
        i++;
        continue;
      }
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    if (consume) this.size -= n;
  }
}

export class NbdClient {
  readonly size: number;
  readonly flags: number;
  readonly maxPayload: number;
  private readonly sock: Negotiated['sock'];
  private readonly structured: boolean;
  private readonly allocationContext: number | null;
  private readonly pending = new Map<number, Pending>();
  private nextCookie = 1;
  private readonly rx = new Incoming();
  private state = Rx.Header;
  private readonly hdr = Buffer.allocUnsafe(20);
  // The reply being read: its request, chunk type and flags, bytes still to come, where they go.
  private cur: Pending | null = null;
  private chunkType = 0;
  private chunkFlags = 0;
  private remaining = 0;
  private dataPos = 0;
  private failure: Error | null = null;
  private readonly closed: Promise<void>;

  private constructor(
    n: Negotiated,
    private readonly where: string,
  ) {
    this.sock = n.sock;
    this.size = n.size;
    this.flags = n.flags;
    this.structured = n.structured;
    this.allocationContext = n.allocationContext;
    this.maxPayload = n.maxPayload;
    this.closed = new Promise((resolve) => this.sock.once('close', () => resolve()));
    this.sock.on('data', (b: Buffer) => this.onData(b));
    this.sock.on('error', (e) => this.fail(new CliError(`the NBD connection to ${where} failed (${(e as NodeJS.ErrnoException).code ?? e.message})`)));
    this.sock.on('close', () => this.fail(new CliError(`the NBD server at ${where} closed the connection`)));
    if (n.leftover.length > 0) this.onData(n.leftover);
  }

  static async connect(t: NbdTarget): Promise<NbdClient> {
    const n = await handshake(await connectSocket(t), t);
    return new NbdClient(n, describeAddress(t));
  }

  get readOnly(): boolean {
    return (this.flags & C.NBD_FLAG_READ_ONLY) !== 0;
  }
  get canMultiConn(): boolean {
    return (this.flags & C.NBD_FLAG_CAN_MULTI_CONN) !== 0;
  }
  get canFlush(): boolean {
    return (this.flags & C.NBD_FLAG_SEND_FLUSH) !== 0;
  }
  get hasBlockStatus(): boolean {
    return this.allocationContext !== null;
  }
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * `sent`, if given, is called once the socket has handed `data` to the kernel (or failed to): the
   * buffer may be reused from then on, while the reply is still to come.
   */
  write(offset: number, data: Buffer, sent?: () => void): Promise<void> {
    return this.request(C.NBD_CMD_WRITE, offset, data.length, data, sent) as Promise<void>;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(C.NBD_CMD_READ, offset, length) as Promise<Buffer>;
  }

  /** Extents from `offset` on, covering at least its first byte and at most `length` bytes. */
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    if (this.allocationContext === null) return Promise.resolve([{ length, hole: false, zero: false }]);
    return this.request(C.NBD_CMD_BLOCK_STATUS, offset, length) as Promise<Extent[]>;
  }

  flush(): Promise<void> {
    return this.request(C.NBD_CMD_FLUSH, 0, 0) as Promise<void>;
  }

  /** Ends the session politely (NBD_CMD_DISC) once every request has its reply. */
  async close(): Promise<void> {
    if (!this.failure) {
      const h = this.header(C.NBD_CMD_DISC, 0, 0, 0);
      this.sock.end(h);
    }
    await Promise.race([this.closed, new Promise((r) => setTimeout(r, 2000).unref())]);
    this.sock.destroy();
  }

  /** Drops the connection at once: every request in flight fails. */
  destroy(): void {
    this.fail(new CliError('the transfer was stopped'));
    this.sock.destroy();
  }

  private header(type: number, cookie: number, offset: number, length: number): Buffer {
    const h = Buffer.allocUnsafe(C.NBD_REQUEST_SIZE);
    h.writeUInt32BE(C.NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(0, 4);
    h.writeUInt16BE(type, 6);
    h.writeUInt32BE(0, 8);
    h.writeUInt32BE(cookie, 12);
    h.writeUInt32BE(Math.floor(offset / 2 ** 32), 16);
    h.writeUInt32BE(offset >>> 0, 20);
    h.writeUInt32BE(length, 24);
    return h;
  }

  private request(type: number, offset: number, length: number, payload?: Buffer, sent?: () => void): Promise<Buffer | Extent[] | undefined> {
    if (this.failure) {
      sent?.();
      return Promise.reject(this.failure);
    }
    const cookie = this.nextCookie;
    this.nextCookie = this.nextCookie === 0xffffffff ? 1 : this.nextCookie + 1;
    return new Promise((resolve, reject) => {
      const buf = type === C.NBD_CMD_READ ? Buffer.allocUnsafe(length) : null;
      this.pending.set(cookie, { type, offset, length, buf, extents: type === C.NBD_CMD_BLOCK_STATUS ? [] : null, error: null, resolve, reject });
      const h = this.header(type, cookie, offset, length);
      if (payload) {
        this.sock.cork();
        this.sock.write(h);
        this.sock.write(payload, sent);
        this.sock.uncork();
      } else this.sock.write(h);
    });
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  private protocolError(what: string): void {
    this.fail(new CliError(`the NBD server at ${this.where} sent ${what}`));
    this.sock.destroy();
  }

  private finish(cookie: number, p: Pending): void {
    this.pending.delete(cookie);
    if (p.error !== null) p.reject(new CliError(p.error));
    else p.resolve(p.buf ?? p.extents ?? undefined);
  }

  private errorOf(p: Pending, errno: number, message: string): string {
    const name = ERRNO_NAMES[errno] ?? `error ${errno}`;
    return `the NBD server answered ${CMD[p.type] ?? p.type} of ${p.length} bytes at offset ${p.offset} with ${name}${message ? ` (${message.replace(/\.$/, '')})` : ''}`;
  }

  private onData(b: Buffer): void {
    this.rx.push(b);
    const rx = this.rx;
    for (;;) {
      if (this.failure) return;
      if (this.state === Rx.Header) {
        if (rx.size < 4) return;
        rx.take(this.hdr, 0, 4, false);
        const magic = this.hdr.readUInt32BE(0);
        const need = magic === C.NBD_SIMPLE_REPLY_MAGIC ? C.NBD_SIMPLE_REPLY_SIZE : magic === C.NBD_STRUCTURED_REPLY_MAGIC ? C.NBD_STRUCTURED_REPLY_SIZE : -1;
        if (need < 0) return this.protocolError(`a reply with an unknown magic (0x${magic.toString(16)})`);
        if (rx.size < need) return;
        rx.take(this.hdr, 0, need);
        const cookie = this.hdr.readUInt32BE(12);
        const p = this.pending.get(cookie);
        if (!p || this.hdr.readUInt32BE(8) !== 0) return this.protocolError('a reply to a request it was never sent');
        if (need === C.NBD_SIMPLE_REPLY_SIZE) {
          const errno = this.hdr.readUInt32BE(4);
          if (errno !== 0) {
            p.error = this.errorOf(p, errno, '');
            this.finish(cookie, p);
          } else if (p.type === C.NBD_CMD_READ && !this.structured) {
            this.cur = p;
            this.remaining = p.length;
            this.dataPos = 0;
            this.state = Rx.SimpleData;
          } else this.finish(cookie, p);
          continue;
        }
        this.cur = p;
        this.chunkFlags = this.hdr.readUInt16BE(4);
        this.chunkType = this.hdr.readUInt16BE(6);
        this.remaining = this.hdr.readUInt32BE(16);
        if (this.chunkType === C.NBD_REPLY_TYPE_OFFSET_DATA) {
          if (p.type !== C.NBD_CMD_READ || this.remaining < 8) return this.protocolError('data for a request that reads none');
          if (rx.size < 8) {
            this.state = Rx.ChunkPayload; // wait for the offset: handled as a whole payload below
            continue;
          }
          this.startChunkData(p);
          continue;
        }
        this.state = Rx.ChunkPayload;
        continue;
      }
      const p = this.cur!;
      if (this.state === Rx.SimpleData || this.state === Rx.ChunkData) {
        const n = Math.min(rx.size, this.remaining);
        if (n === 0) return;
        rx.take(p.buf!, this.dataPos, n);
        this.dataPos += n;
        this.remaining -= n;
        if (this.remaining > 0) return;
        this.state = Rx.Header;
        if (this.hdr.readUInt32BE(0) === C.NBD_SIMPLE_REPLY_MAGIC || this.chunkFlags & C.NBD_REPLY_FLAG_DONE) this.finish(this.hdr.readUInt32BE(12), p);
        continue;
      }
      // Rx.ChunkPayload
      if (this.chunkType === C.NBD_REPLY_TYPE_OFFSET_DATA) {
        if (rx.size < 8) return;
        this.startChunkData(p);
        continue;
      }
      if (this.remaining > 16 * 1024 * 1024) return this.protocolError('a reply chunk too large to be real');
      if (rx.size < this.remaining) return;
      const payload = Buffer.allocUnsafe(this.remaining);
      rx.take(payload, 0, this.remaining);
      this.chunk(p, payload);
      if (this.failure) return;
      this.state = Rx.Header;
      if (this.chunkFlags & C.NBD_REPLY_FLAG_DONE) this.finish(this.hdr.readUInt32BE(12), p);
    }
  }

  /** An OFFSET_DATA chunk: its offset is in the queue; the data goes straight into the READ's buffer. */
  private startChunkData(p: Pending): void {
    const off = Buffer.allocUnsafe(8);
    this.rx.take(off, 0, 8);
    const at = Number(off.readBigUInt64BE(0)) - p.offset;
    this.remaining -= 8;
    if (at < 0 || at + this.remaining > p.length) return this.protocolError('data outside the range it was asked for');
    this.dataPos = at;
    this.state = Rx.ChunkData;
    if (this.remaining === 0) {
      this.state = Rx.Header;
      if (this.chunkFlags & C.NBD_REPLY_FLAG_DONE) this.finish(this.hdr.readUInt32BE(12), p);
    }
  }

  private chunk(p: Pending, payload: Buffer): void {
    switch (this.chunkType) {
      case C.NBD_REPLY_TYPE_NONE:
        return;
      case C.NBD_REPLY_TYPE_OFFSET_HOLE: {
        if (p.type !== C.NBD_CMD_READ || payload.length !== 12) return this.protocolError('a malformed hole chunk');
        const at = Number(payload.readBigUInt64BE(0)) - p.offset;
        const len = payload.readUInt32BE(8);
        if (at < 0 || at + len > p.length) return this.protocolError('a hole outside the range it was asked for');
        p.buf!.fill(0, at, at + len);
        return;
      }
      case C.NBD_REPLY_TYPE_BLOCK_STATUS: {
        if (p.type !== C.NBD_CMD_BLOCK_STATUS || payload.length < 4 || (payload.length - 4) % 8 !== 0) return this.protocolError('a malformed block status chunk');
        if (payload.readUInt32BE(0) !== this.allocationContext) return;
        for (let i = 4; i < payload.length; i += 8) {
          const state = payload.readUInt32BE(i + 4);
          p.extents!.push({ length: payload.readUInt32BE(i), hole: (state & 1) !== 0, zero: (state & 2) !== 0 });
        }
        return;
      }
      case C.NBD_REPLY_TYPE_ERROR:
      case C.NBD_REPLY_TYPE_ERROR_OFFSET: {
        if (payload.length < 6) return this.protocolError('a malformed error chunk');
        const msgLen = payload.readUInt16BE(4);
        p.error ??= this.errorOf(p, payload.readUInt32BE(0), payload.subarray(6, 6 + msgLen).toString('utf8'));
        return;
      }
      default:
        // An unknown chunk type is an error only if the spec says so (error bit set).
        if (this.chunkType & 0x8000) p.error ??= this.errorOf(p, C.NBD_EIO, `unknown error chunk type ${this.chunkType}`);
    }
  }
}
