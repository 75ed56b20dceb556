// Transmission phase (doc/proto.md "Transmission"): validates requests, runs them against the
// export concurrently, and encodes simple or structured replies as each completes (replies may go
// out of order; the spec allows it). The socket framing lives in connection.ts.
//
// Hot-path notes (4 KiB reads at queue depth 32 must stay cheap):
// - Handles are carried as two u32s and offsets as doubles: no BigInt per request.
// - Reply headers come from Buffer.allocUnsafe(<4 KiB), which is carved from Node's shared pool
//   (no fresh ArrayBuffer per reply); read data is written as-is, never copied.
// - Replies completing in the same turn of the event loop are written under one cork(), uncorked
//   by setImmediate, so N replies cost one writev() syscall instead of 2N write()s. (Uncorked on
//   nextTick, a 4K random write stream at QD32 sent most replies alone: each chunk-file write's
//   completion is its own callback, and the socket writes were 15% of the event loop.)

import type { Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { ErrorCodes, nbdErrnoOf, isShoalError } from '../errors.js';
import type { BlockExport, Extent, ReadResult } from '../volume/export-port.js';
import type { NbdObserver } from './observer.js';
import type { Logger, Negotiated } from './handshake.js';
import type { SelectedContext } from './meta-context.js';
import * as C from './constants.js';
import { payloads } from '../payload-pool.js';

const TWO_32 = 4294967296;

/** At most one log line per connection for failed requests this often (see logFault). */
const FAULT_LOG_MS = 10_000;

/** One request in flight. A class so every instance has the same hidden shape. */
export class Request {
  replied = false;
  start = 0;
  /** Links of the transmission's list of requests not yet answered (see Transmission.unreplied). */
  prev: Request | null = null;
  next: Request | null = null;
  constructor(
    readonly type: number,
    readonly flags: number,
    readonly hHi: number,
    readonly hLo: number,
    readonly offset: number,
    readonly length: number,
  ) {}
}

function totalLength(bufs: Buffer[]): number {
  let n = 0;
  for (const b of bufs) n += b.length;
  return n;
}

function uncork(t: Transmission): void {
  t.corked = false;
  if (!t.closed) t.sock.uncork();
}

// Flags each command accepts. FUA is valid on every command once SEND_FUA is advertised (spec:
// "the server MUST accept all commands with this bit set"); DF only with structured replies.
function allowedFlags(type: number, structured: boolean): number {
  switch (type) {
    case C.NBD_CMD_READ:
      return C.NBD_CMD_FLAG_FUA | (structured ? C.NBD_CMD_FLAG_DF : 0);
    case C.NBD_CMD_WRITE:
    case C.NBD_CMD_FLUSH:
    case C.NBD_CMD_TRIM:
    case C.NBD_CMD_CACHE:
    case C.NBD_CMD_DISC:
      return C.NBD_CMD_FLAG_FUA;
    case C.NBD_CMD_WRITE_ZEROES:
      return C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_NO_HOLE | C.NBD_CMD_FLAG_FAST_ZERO;
    case C.NBD_CMD_BLOCK_STATUS:
      return C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_REQ_ONE;
    default:
      return -1;
  }
}

/** Requests over every connection of a server: dispatched since start, and running now. */
export interface RequestLoad {
  started: number;
  inFlight: number;
}

export interface TransmissionOptions {
  sock: Socket;
  neg: Negotiated;
  observer?: NbdObserver;
  /** The server's count, shared by its connections. */
  load?: RequestLoad;
  log: Logger;
  /** Called after every request settles (reply queued), for backpressure and teardown. */
  onSettled: () => void;
}

export class Transmission {
  readonly sock: Socket;
  readonly exp: BlockExport;
  readonly neg: Negotiated;
  private readonly observer?: NbdObserver;
  private readonly load: RequestLoad;
  private readonly log: Logger;
  private readonly onSettled: () => void;
  private readonly structured: boolean;
  private readonly size: number;

  /** Backend operations still running (the export must stay open until this is 0). */
  inFlight = 0;
  /** Payload bytes held for in-flight reads and writes (for backpressure). */
  inFlightBytes = 0;
  corked = false;
  /** The socket is gone: nothing more may be written. */
  closed = false;
  /** The export was revoked (or the server is shutting down): every request fails with ESHUTDOWN. */
  revoked = false;
  /**
   * Requests not yet answered, so revoke can fail them at once: newest first, linked through the
   * requests themselves. A Set's add and delete per request grew and shrank its table with the
   * requests in flight (V8 shrinks a Set that falls under a quarter full), ~120 bytes of garbage a
   * request in a heap profile of 4K reads.
   */
  private unreplied: Request | null = null;
  /** Write-type operations in flight, so FLUSH can wait for those received before it. */
  private readonly writes = new Set<Promise<unknown>>();
  /** Storage faults not logged since the last one was (one line per FAULT_LOG_MS, not one per request). */
  private faultsUnlogged = 0;
  private faultLoggedAt = -Infinity;
  /** Message of the last validate() failure. */
  lastError = '';

  constructor(o: TransmissionOptions) {
    this.sock = o.sock;
    this.neg = o.neg;
    this.exp = o.neg.export;
    this.observer = o.observer;
    this.load = o.load ?? { started: 0, inFlight: 0 };
    this.log = o.log;
    this.onSettled = o.onSettled;
    this.structured = o.neg.structured;
    this.size = o.neg.size;
  }

  /**
   * Checks a request header. Returns 0 if the request may run, else the errno to reply with
   * (and sets lastError). The caller still has to consume a WRITE's payload either way.
   */
  validate(type: number, flags: number, offset: number, length: number): number {
    const allowed = allowedFlags(type, this.structured);
    if (allowed < 0) return this.invalid(C.NBD_EINVAL, `unknown command ${type}`);
    if (flags & ~allowed) return this.invalid(C.NBD_EINVAL, `invalid flags 0x${flags.toString(16)} for ${C.CMD_NAMES[type]}`);
    if (this.revoked) return this.invalid(C.NBD_ESHUTDOWN, 'export is no longer available');
    if (type === C.NBD_CMD_FLUSH || type === C.NBD_CMD_DISC) return 0; // offset/length ignored
    if (this.exp.readOnly && (type === C.NBD_CMD_WRITE || type === C.NBD_CMD_TRIM || type === C.NBD_CMD_WRITE_ZEROES)) {
      return this.invalid(C.NBD_EPERM, 'export is read-only');
    }
    if (type === C.NBD_CMD_BLOCK_STATUS && this.neg.metaContexts.length === 0) return this.invalid(C.NBD_EINVAL, 'no metadata context was negotiated');
    if (length === 0) return this.invalid(C.NBD_EINVAL, 'zero-length request');
    // offset is exact below 2^53; above it, it is still far beyond any export size.
    if (offset > this.size || length > this.size - offset) return this.invalid(C.NBD_EINVAL, 'request beyond the end of the export');
    if ((type === C.NBD_CMD_READ || type === C.NBD_CMD_WRITE) && length > this.neg.maxPayload) {
      return this.invalid(C.NBD_EINVAL, `request of ${length} bytes exceeds the maximum of ${this.neg.maxPayload}`);
    }
    return 0;
  }

  private invalid(errno: number, msg: string): number {
    this.lastError = msg;
    return errno;
  }

  /** Runs a validated request. For WRITE, `payload` holds exactly `length` bytes. */
  dispatch(req: Request, payload: Buffer | null): void {
    this.inFlight++;
    this.load.started++;
    this.load.inFlight++;
    if (req.type === C.NBD_CMD_READ || req.type === C.NBD_CMD_WRITE) this.inFlightBytes += req.length;
    req.next = this.unreplied;
    if (this.unreplied) this.unreplied.prev = req;
    this.unreplied = req;
    if (this.observer) req.start = performance.now();
    void this.exec(req, payload);
  }

  private async exec(req: Request, payload: Buffer | null): Promise<void> {
    const exp = this.exp;
    const fua = (req.flags & C.NBD_CMD_FLAG_FUA) !== 0;
    let ok = false;
    try {
      switch (req.type) {
        case C.NBD_CMD_READ: {
          const got = exp.read(req.offset, req.length);
          const r = got instanceof Promise ? await got : got; // a cached read answers in this turn
          const bytes = Array.isArray(r.data) ? totalLength(r.data) : r.data.length;
          if (bytes !== req.length) {
            r.release();
            throw new Error(`export returned ${bytes} bytes for a ${req.length}-byte read`);
          }
          ok = true;
          this.replyRead(req, r);
          break;
        }
        case C.NBD_CMD_WRITE:
        case C.NBD_CMD_TRIM:
        case C.NBD_CMD_WRITE_ZEROES: {
          // Tracked here rather than in an async helper of its own: one promise and one await less
          // for every write (nearly every request of a write workload).
          const p = this.change(req, payload, fua);
          this.writes.add(p);
          try {
            await p;
          } finally {
            this.writes.delete(p);
          }
          if (req.type === C.NBD_CMD_WRITE) payloads.give(payload!); // done with it (a failed write's may still be read: not given back)
          ok = true;
          this.replyOk(req);
          break;
        }
        case C.NBD_CMD_FLUSH:
          // Every write received before this flush must be covered by it: wait for them first.
          if (this.writes.size > 0) await Promise.allSettled(Array.from(this.writes));
          await exp.flush();
          ok = true;
          this.replyOk(req);
          break;
        case C.NBD_CMD_CACHE:
          await exp.cache(req.offset, req.length);
          ok = true;
          this.replyOk(req);
          break;
        case C.NBD_CMD_BLOCK_STATUS: {
          const contexts = this.neg.metaContexts;
          const extents = await Promise.all(contexts.map((c) => this.contextStatus(c, req)));
          // One NBD_REPLY_TYPE_BLOCK_STATUS chunk per selected context, the last one with DONE.
          const chunks = contexts.map((c, i) => this.statusChunk(req, c, extents[i]!, i === contexts.length - 1));
          ok = true;
          this.replyChunks(req, chunks);
          break;
        }
      }
    } catch (e) {
      const errno = C.ERRNO[nbdErrnoOf(e)] ?? C.NBD_EIO;
      if (isShoalError(e) && (ErrorCodes[e.code].status < 500 || ErrorCodes[e.code].status === 503)) this.log.debug({ err: e, op: C.CMD_NAMES[req.type], export: this.neg.exportName }, 'nbd: request failed');
      else this.logFault(e, req.type);
      this.replyError(req, errno, isShoalError(e) ? e.message : 'I/O error');
    } finally {
      this.inFlight--;
      this.load.inFlight--;
      if (req.type === C.NBD_CMD_READ || req.type === C.NBD_CMD_WRITE) this.inFlightBytes -= req.length;
      if (this.observer) {
        try {
          this.observer.request(C.CMD_NAMES[req.type], this.neg.exportName, req.type === C.NBD_CMD_READ || req.type === C.NBD_CMD_WRITE ? req.length : 0, (performance.now() - req.start) / 1000, ok);
        } catch (e) {
          this.log.error({ err: e }, 'nbd: observer failed');
        }
      }
      this.onSettled(); // never throws (connection.ts catches)
    }
  }

  private contextStatus(c: SelectedContext, req: Request): Promise<Extent[]> {
    if (c.id === C.BASE_ALLOCATION_ID) return this.exp.blockStatus(req.offset, req.length);
    if (!this.exp.metaContextStatus) throw new Error(`export ${this.neg.exportName} offered meta context ${c.name} but answers no status for it`);
    return this.exp.metaContextStatus(c.name, req.offset, req.length);
  }

  /**
   * A request failed on the server's side (a disk error, a pack or metadata that does not check out): an
   * operator must hear of it, at error level, but a guest retrying a damaged block must not flood the log.
   */
  private logFault(e: unknown, type: number): void {
    const now = performance.now();
    if (now - this.faultLoggedAt < FAULT_LOG_MS) {
      this.faultsUnlogged++;
      return;
    }
    const suppressed = this.faultsUnlogged;
    this.faultsUnlogged = 0;
    this.faultLoggedAt = now;
    this.log.error({ err: e, op: C.CMD_NAMES[type], export: this.neg.exportName, suppressed }, `nbd: ${C.CMD_NAMES[type]} failed: ${(e as Error).message}${suppressed ? ` (and ${suppressed} more since the last report)` : ''}`);
  }

  /** Starts a request that changes the export (a write, trim or zero). */
  private change(req: Request, payload: Buffer | null, fua: boolean): Promise<void> {
    const exp = this.exp;
    if (req.type === C.NBD_CMD_WRITE) return exp.write(req.offset, payload!, fua);
    if (req.type === C.NBD_CMD_TRIM) return exp.trim(req.offset, req.length, fua);
    return exp.writeZeroes(req.offset, req.length, {
      noHole: (req.flags & C.NBD_CMD_FLAG_NO_HOLE) !== 0,
      fastZero: (req.flags & C.NBD_CMD_FLAG_FAST_ZERO) !== 0,
      fua,
    });
  }

  /** Fails every request not yet answered with `errno` (revoke, shutdown); later ones fail in validate(). */
  failAll(errno: number, msg: string): void {
    this.revoked = true;
    for (let req = this.unreplied; req !== null; ) {
      const next = req.next;
      this.replyError(req, errno, msg); // unlinks req
      req = next;
    }
  }

  // --- replies ---------------------------------------------------------------------------------

  /** False if the reply must not be sent (already answered, or the socket is gone). */
  private begin(req: Request): boolean {
    if (req.replied) return false;
    req.replied = true;
    if (req.prev) req.prev.next = req.next;
    else if (this.unreplied === req) this.unreplied = req.next;
    if (req.next) req.next.prev = req.prev;
    req.prev = req.next = null;
    if (this.closed) return false;
    if (!this.corked) {
      this.corked = true;
      this.sock.cork();
      setImmediate(uncork, this);
    }
    return true;
  }

  private simpleHeader(req: Request, errno: number): Buffer {
    const h = Buffer.allocUnsafe(C.NBD_SIMPLE_REPLY_SIZE);
    h.writeUInt32BE(C.NBD_SIMPLE_REPLY_MAGIC, 0);
    h.writeUInt32BE(errno, 4);
    h.writeUInt32BE(req.hHi, 8);
    h.writeUInt32BE(req.hLo, 12);
    return h;
  }

  private structuredHeader(h: Buffer, req: Request, flags: number, type: number, length: number): void {
    h.writeUInt32BE(C.NBD_STRUCTURED_REPLY_MAGIC, 0);
    h.writeUInt16BE(flags, 4);
    h.writeUInt16BE(type, 6);
    h.writeUInt32BE(req.hHi, 8);
    h.writeUInt32BE(req.hLo, 12);
    h.writeUInt32BE(length, 16);
  }

  private replyOk(req: Request): void {
    if (!this.begin(req)) return;
    // A simple reply is allowed for any data-less success, even with structured replies.
    this.sock.write(this.simpleHeader(req, 0));
  }

  private replyRead(req: Request, r: ReadResult): void {
    // A view of the shared cache is held until the socket has taken the bytes (or never will).
    if (!this.begin(req)) {
      r.release();
      return;
    }
    const data = r.data;
    if (!this.structured) {
      this.sock.write(this.simpleHeader(req, 0));
    } else {
      // One OFFSET_DATA chunk with DONE: never fragmented, which is also what DF asks for.
      const h = Buffer.allocUnsafe(C.NBD_STRUCTURED_REPLY_SIZE + 8);
      this.structuredHeader(h, req, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_OFFSET_DATA, 8 + req.length);
      h.writeUInt32BE(Math.floor(req.offset / TWO_32), 20);
      h.writeUInt32BE(req.offset >>> 0, 24);
      this.sock.write(h);
    }
    if (Array.isArray(data)) {
      // Views of cached chunks: queued under the cork, they leave in one writev.
      const last = data.length - 1;
      for (let i = 0; i < last; i++) this.sock.write(data[i]);
      this.sock.write(data[last], () => r.release());
    } else this.sock.write(data, () => r.release());
  }

  /** Replies with an error (simple reply without payload, or an NBD_REPLY_TYPE_ERROR chunk). */
  replyError(req: Request, errno: number, msg: string): void {
    if (!this.begin(req)) return;
    if (!this.structured) {
      this.sock.write(this.simpleHeader(req, errno));
      return;
    }
    const m = Buffer.from(msg.length > 1024 ? msg.slice(0, 1024) : msg, 'utf8');
    const h = Buffer.allocUnsafe(C.NBD_STRUCTURED_REPLY_SIZE + 6 + m.length);
    this.structuredHeader(h, req, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_ERROR, 6 + m.length);
    h.writeUInt32BE(errno, 20);
    h.writeUInt16BE(m.length, 24);
    m.copy(h, 26);
    this.sock.write(h);
  }

  /** Replies to a request that failed validation (the caller has built the Request). */
  reject(req: Request, errno: number): void {
    this.replyError(req, errno, this.lastError);
  }

  private replyChunks(req: Request, chunks: Buffer[]): void {
    if (!this.begin(req)) return;
    for (const h of chunks) this.sock.write(h);
  }

  private statusChunk(req: Request, context: SelectedContext, extents: Extent[], last: boolean): Buffer {
    // Clamp what the export returned to the spec's rules: descriptors are non-empty, their sum
    // does not exceed the request, adjacent equal ones merge, and REQ_ONE gets exactly one.
    const one = (req.flags & C.NBD_CMD_FLAG_REQ_ONE) !== 0;
    const mask = context.id === C.BASE_ALLOCATION_ID ? 3 : 0xffffffff;
    const lens: number[] = [];
    const flags: number[] = [];
    let left = req.length;
    for (let i = 0; i < extents.length && left > 0; i++) {
      const e = extents[i];
      let len = Math.floor(e.length);
      if (!(len > 0)) continue;
      if (len > left) len = left;
      const f = (e.flags & mask) >>> 0;
      const n = lens.length;
      if (n > 0 && flags[n - 1] === f) lens[n - 1] += len;
      else {
        lens.push(len);
        flags.push(f);
      }
      left -= len;
    }
    if (lens.length === 0) {
      // For base:allocation the safe answer is "allocated, contents unknown"; any other context's
      // safe answer is its own to define, so an export that says nothing gets an error.
      if (context.id !== C.BASE_ALLOCATION_ID) throw new Error(`export ${this.neg.exportName} returned no extents for ${context.name}`);
      lens.push(req.length);
      flags.push(0);
    }
    const n = one ? 1 : lens.length;
    const h = Buffer.allocUnsafe(C.NBD_STRUCTURED_REPLY_SIZE + 4 + 8 * n);
    this.structuredHeader(h, req, last ? C.NBD_REPLY_FLAG_DONE : 0, C.NBD_REPLY_TYPE_BLOCK_STATUS, 4 + 8 * n);
    h.writeUInt32BE(context.id, 20);
    for (let i = 0; i < n; i++) {
      h.writeUInt32BE(lens[i], 24 + 8 * i);
      h.writeUInt32BE(flags[i], 28 + 8 * i);
    }
    return h;
  }
}
