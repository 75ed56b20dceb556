// A deliberately dumb NBD client over a raw socket, for sending what real clients never would.
import net from 'node:net';
import tls from 'node:tls';

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const REPLY_MAGIC = 0x3e889045565a9n;
export const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8, LIST_META: 9, SET_META: 10 };
export const REP = { ACK: 1, SERVER: 2, INFO: 3, META_CONTEXT: 4, ERR_UNSUP: 0x80000001, ERR_POLICY: 0x80000002, ERR_INVALID: 0x80000003, ERR_TLS_REQD: 0x80000005, ERR_UNKNOWN: 0x80000006, ERR_SHUTDOWN: 0x80000007 };
export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
export const EPERM = 1;
export const EINVAL = 22;
export const ESHUTDOWN = 108;

export class Raw {
  private chunks: Buffer[] = [];
  private size = 0;
  private waiters: (() => void)[] = [];
  closed = false;
  private readonly onData = (b: Buffer) => {
    this.chunks.push(b);
    this.size += b.length;
    this.wake();
  };
  private constructor(public sock: net.Socket) {
    sock.on('data', this.onData);
    sock.on('close', () => {
      this.closed = true;
      this.wake();
    });
    sock.on('error', () => {});
  }

  static connect(port: number, host = '127.0.0.1'): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host }, () => resolve(new Raw(s)));
      s.once('error', reject);
    });
  }

  static connectUnix(path: string): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ path }, () => resolve(new Raw(s)));
      s.once('error', reject);
    });
  }

  /**
   * After the server ACKed NBD_OPT_STARTTLS: runs the client side of the TLS handshake on the
   * same socket (rejects if it fails); later reads and writes are encrypted.
   */
  async startTls(options: tls.ConnectionOptions): Promise<void> {
    if (this.size > 0) throw new Error(`${this.size} plaintext bytes arrived after the STARTTLS ACK`);
    this.sock.off('data', this.onData);
    const t = tls.connect({ ...options, socket: this.sock });
    await new Promise<void>((resolve, reject) => {
      t.once('secureConnect', resolve);
      t.once('error', reject);
      t.once('close', () => reject(new Error('closed during the TLS handshake')));
    });
    this.sock = t;
    t.on('data', this.onData);
    t.on('close', () => {
      this.closed = true;
      this.wake();
    });
    t.on('error', () => {});
  }

  private wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Exactly n bytes; rejects if the server closes first or nothing arrives within timeoutMs. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.size < n) {
      if (this.closed) throw new Error(`connection closed with ${this.size}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${n} bytes (have ${this.size})`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.size -= n;
    return all.subarray(0, n);
  }

  /** Resolves true if the server closes the connection within timeoutMs. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return this.closed;
  }

  write(b: Buffer): void {
    this.sock.write(b);
  }

  /** From now on incoming bytes are only counted, not kept (for clients that ignore big replies). */
  discardIncoming(): () => number {
    let n = this.size;
    this.chunks = [];
    this.size = 0;
    this.sock.off('data', this.onData);
    this.sock.on('data', (b: Buffer) => (n += b.length));
    return () => n;
  }

  destroy(): void {
    this.sock.destroy();
  }

  /** Reads the server greeting and sends client flags. Returns the handshake flags. */
  async greet(clientFlags = 1): Promise<number> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.write(f);
    return g.readUInt16BE(16);
  }

  sendOption(opt: number, data: Buffer = Buffer.alloc(0), lengthOverride?: number): void {
    this.write(optionMessage(opt, data, lengthOverride));
  }

  async optionReply(): Promise<{ opt: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== REPLY_MAGIC) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    return { opt: h.readUInt32BE(8), type: h.readUInt32BE(12), data: len ? await this.read(len) : Buffer.alloc(0) };
  }

  /** Replies up to and including the final one (ACK or an error). */
  async optionReplies(): Promise<{ opt: number; type: number; data: Buffer }[]> {
    const out = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === REP.ACK || r.type >= 0x80000000) return out;
    }
  }

  /** Fixed-newstyle handshake with NBD_OPT_GO (after the greeting, unless `greeted`). Returns size and transmission flags. */
  async handshake(name: string, opts: { structured?: boolean; meta?: boolean; greeted?: boolean } = {}): Promise<{ size: number; flags: number }> {
    if (!opts.greeted) await this.greet(3);
    if (opts.structured) {
      this.sendOption(OPT.STRUCTURED_REPLY);
      const r = await this.optionReply();
      if (r.type !== REP.ACK) throw new Error('structured replies refused');
      if (opts.meta) {
        this.sendOption(OPT.SET_META, metaQuery(name, ['base:allocation']));
        await this.optionReplies();
      }
    }
    this.sendOption(OPT.GO, goData(name));
    let size = -1;
    let flags = -1;
    for (const r of await this.optionReplies()) {
      if (r.type >= 0x80000000) throw new Error(`GO failed: 0x${r.type.toString(16)} ${r.data}`);
      if (r.type === REP.INFO && r.data.readUInt16BE(0) === 0) {
        size = Number(r.data.readBigUInt64BE(2));
        flags = r.data.readUInt16BE(10);
      }
    }
    return { size, flags };
  }

  request(type: number, handle: bigint, offset: bigint | number, length: number, flags = 0, payload?: Buffer): void {
    this.write(requestMessage(type, handle, offset, length, flags, payload));
  }

  /** A simple reply; reads `dataLen` bytes of data if the error is 0. */
  async simpleReply(dataLen = 0): Promise<{ error: number; handle: bigint; data: Buffer }> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== 0x67446698) throw new Error(`not a simple reply: magic 0x${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    return { error, handle: h.readBigUInt64BE(8), data: error === 0 && dataLen ? await this.read(dataLen) : Buffer.alloc(0) };
  }

  /** One reply of either kind (structured: one chunk). */
  async anyReply(): Promise<{ structured: boolean; error: number; handle: bigint; type: number; flags: number; payload: Buffer }> {
    const m = (await this.read(4)).readUInt32BE(0);
    if (m === 0x67446698) {
      const r = await this.read(12);
      return { structured: false, error: r.readUInt32BE(0), handle: r.readBigUInt64BE(4), type: -1, flags: 0, payload: Buffer.alloc(0) };
    }
    if (m !== 0x668e33ef) throw new Error(`bad reply magic 0x${m.toString(16)}`);
    const r = await this.read(16);
    const len = r.readUInt32BE(12);
    const payload = len ? await this.read(len) : Buffer.alloc(0);
    const type = r.readUInt16BE(2);
    return { structured: true, error: type & 0x8000 ? payload.readUInt32BE(0) : 0, handle: r.readBigUInt64BE(4), type, flags: r.readUInt16BE(0), payload };
  }
}

/** A transmission request, as bytes: several sent in one write reach the server together (no Nagle delay between them). */
export function requestMessage(type: number, handle: bigint, offset: bigint | number, length: number, flags = 0, payload?: Buffer): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(handle, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return payload ? Buffer.concat([h, payload]) : h;
}

/** An option request: IHAVEOPT, the option, its length (or a lie about it), its data. */
export function optionMessage(opt: number, data: Buffer = Buffer.alloc(0), length = data.length): Buffer {
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(IHAVEOPT, 0);
  h.writeUInt32BE(opt >>> 0, 8);
  h.writeUInt32BE(length >>> 0, 12);
  return Buffer.concat([h, data]);
}

export function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((i, k) => b.writeUInt16BE(i, 6 + n.length + 2 * k));
  return b;
}

export function metaQuery(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    return b;
  };
  parts.push(u32(Buffer.byteLength(name)), Buffer.from(name), u32(queries.length));
  for (const q of queries) parts.push(u32(Buffer.byteLength(q)), Buffer.from(q));
  return Buffer.concat(parts);
}
