// One client connection: socket framing, the handshake → transmission state machine, backpressure,
// revoke, and cleanup (export.close(), observer.connectionClosed()), each exactly once.
// After NBD_OPT_STARTTLS the plain socket is replaced by a TLSSocket on the same descriptor;
// everything below (handshake reads, framing, replies, teardown) then uses that.

import type { Socket } from 'node:net';
import type { ExportProvider, NbdSession } from '../volume/export-port.js';
import type { NbdObserver } from './observer.js';
import { negotiate, ProtocolError, type Logger, type Negotiated, type TlsMode } from './handshake.js';
import { Request, Transmission, type RequestLoad } from './transmission.js';
import type { TlsCredentials } from './tls-credentials.js';
import { TlsHandshakeError, upgradeToTls } from './tls-session.js';
import * as C from './constants.js';
import { ByteQueue } from './byte-queue.js';
import { payloads } from '../payload-pool.js';

/** Stop reading requests while this many reply bytes wait for the socket (bounds pinned cache frames). */
const MAX_QUEUED_REPLY_BYTES = 8 * 1024 * 1024;

export interface ConnectionOptions {
  provider: ExportProvider;
  observer?: NbdObserver;
  /** The server's request count, shared by its connections. */
  load?: RequestLoad;
  log: Logger;
  /** A client that has not entered transmission after this long is disconnected. */
  handshakeTimeoutMs: number;
  /** Reading pauses while this many payload bytes are held for in-flight requests. */
  maxInFlightBytes: number;
  /** Reading pauses while this many requests are in flight. */
  maxInFlightRequests: number;
  /** NBD_OPT_STARTTLS: off, or on/require with the credentials to use. */
  tls?: { mode: Exclude<TlsMode, 'off'>; credentials: TlsCredentials };
  /** Over the connection limit: refuse every option with this message (see HandshakeOptions.refuse). */
  refuse?: string;
}

const enum Phase {
  Handshake,
  Transmission,
  Closing,
  Closed,
}

const enum Rx {
  Header,
  Payload,
  Discard,
}

const closedError = () => Object.assign(new Error('connection closed'), { code: 'ECONNCLOSED' });

export class NbdConnection {
  /** The client's stream: the accepted socket, or the TLSSocket over it after STARTTLS. */
  private sock: Socket;
  /** The accepted socket (same as sock until STARTTLS). */
  private readonly raw: Socket;
  private readonly opts: ConnectionOptions;
  private readonly log: Logger;
  private phase = Phase.Handshake;
  private readonly hq = new ByteQueue();
  private handshakeTimer: NodeJS.Timeout | null = null;
  private neg: Negotiated | null = null;
  private tx: Transmission | null = null;
  private exportClosed = false;
  private closedNotified = false;
  private revokedEarly = false;
  private closeHandled = false;
  /** Resolves when the socket has closed and the export is released. */
  readonly done: Promise<void>;
  private resolveDone!: () => void;
  private readonly peer: string;

  // --- transmission framing state ---
  private rx = Rx.Header;
  /** Header bytes when a 28-byte request straddles socket chunks (otherwise parsed in place). */
  private readonly hdr = Buffer.allocUnsafe(C.NBD_REQUEST_SIZE);
  private hdrFill = 0;
  private pendingReq: Request | null = null;
  private payload: Buffer | null = null;
  private payloadLen = 0;
  private payloadFill = 0;
  private discardLeft = 0;
  /** The invalid WRITE whose payload is being discarded, answered once it is consumed. */
  private rejected: Request | null = null;
  private rejectedErrno = 0;
  private rejectedMsg = '';
  /** Unparsed input kept while reading is paused for backpressure. */
  private held: Buffer[] = [];
  private paused = false;
  private disconnecting = false;

  constructor(sock: Socket, opts: ConnectionOptions) {
    this.sock = this.raw = sock;
    this.opts = opts;
    this.log = opts.log;
    this.peer = sock.remoteAddress ? `${sock.remoteAddress}:${sock.remotePort}` : 'unix';
    this.done = new Promise((r) => (this.resolveDone = r));
    if (!opts.refuse) {
      try {
        opts.observer?.connectionOpened();
      } catch (e) {
        this.log.error({ err: e }, 'nbd: observer failed');
      }
    }

    this.listen(sock);
    this.handshakeTimer = setTimeout(() => {
      this.log.warn({ peer: this.peer, tls: this.sock !== this.raw }, 'nbd: handshake timed out');
      this.destroy();
    }, opts.handshakeTimeoutMs);
    this.handshakeTimer.unref?.();
    void this.runHandshake();
  }

  private readonly onDataFn = (b: Buffer) => this.onData(b);
  private readonly onDrainFn = () => {
    try {
      this.maybeResume();
    } catch (e) {
      this.fatal(e);
    }
  };
  private readonly onCloseFn = () => this.onClose();

  private listen(sock: Socket): void {
    sock.on('data', this.onDataFn);
    sock.on('error', (e) => this.log.debug({ err: e, peer: this.peer }, 'nbd: socket error'));
    sock.on('close', this.onCloseFn);
    sock.on('drain', this.onDrainFn);
  }

  /** Closes both layers at once (destroying a TLSSocket alone may leave its descriptor open). */
  private destroy(): void {
    this.sock.destroy();
    if (this.sock !== this.raw) this.raw.destroy();
  }

  /**
   * STARTTLS was acknowledged: drop what the client sent after it in plaintext (never parsed),
   * then run the TLS handshake on the same descriptor. Called synchronously after the ACK is
   * queued, in the same tick as the STARTTLS option was read, so no later plaintext is delivered.
   */
  private startTls(): Promise<NbdSession> {
    const creds = this.opts.tls!.credentials;
    const injected = this.hq.drain().reduce((n, b) => n + b.length, 0);
    if (injected > 0) this.log.info({ peer: this.peer, bytes: injected }, 'nbd: discarded plaintext sent after STARTTLS');
    // Stop delivering plaintext; what the socket still buffers goes to the TLS layer.
    this.raw.off('data', this.onDataFn);
    this.raw.off('drain', this.onDrainFn);
    this.raw.pause();
    const up = upgradeToTls(this.raw, creds);
    this.sock = up.sock;
    this.listen(up.sock);
    return up.ready;
  }

  private async runHandshake(): Promise<void> {
    let neg: Negotiated | null;
    try {
      neg = await negotiate(
        {
          read: (n) => this.hq.read(n),
          write: (b) => {
            if (!this.sock.destroyed) this.sock.write(b);
          },
          startTls: this.opts.tls ? () => this.startTls() : undefined,
        },
        {
          provider: this.opts.provider,
          onRevoke: () => this.revoke(),
          log: this.log,
          peer: this.peer,
          tls: this.opts.tls?.mode ?? 'off',
          refuse: this.opts.refuse,
          maxOptions: this.opts.refuse ? 16 : undefined,
        },
      );
    } catch (e) {
      if ((e as { code?: string }).code !== 'ECONNCLOSED') {
        if (e instanceof ProtocolError || e instanceof TlsHandshakeError) this.log.info({ peer: this.peer, reason: e.message }, 'nbd: handshake failed, closing');
        else this.log.error({ err: e, peer: this.peer }, 'nbd: handshake error');
      }
      this.destroy();
      return;
    }
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    if (!neg) {
      // NBD_OPT_ABORT: the ACK is written; let it flush, then close.
      this.phase = Phase.Closing;
      this.sock.end();
      return;
    }
    this.neg = neg;
    if (this.phase !== Phase.Handshake) {
      // The socket closed while the export was being opened.
      this.releaseExport();
      return;
    }
    this.phase = Phase.Transmission;
    this.tx = new Transmission({ sock: this.sock, neg, observer: this.opts.observer, load: this.opts.load, log: this.log, onSettled: () => this.onSettled() });
    this.log.debug({ peer: this.peer, export: neg.exportName, structured: neg.structured, tls: neg.session.tls, identity: neg.session.identity }, 'nbd: transmission');
    if (this.revokedEarly) this.revoke();
    for (const b of this.hq.drain()) this.onData(b);
  }

  // --- input ----------------------------------------------------------------------------------

  private onData(b: Buffer): void {
    if (this.phase === Phase.Handshake) {
      this.hq.push(b);
      // A well-behaved client never has more than one option (≤ 64 KiB) outstanding.
      if (this.hq.size > 4 * C.MAX_OPTION_LENGTH) {
        this.log.info({ peer: this.peer }, 'nbd: client flooded the handshake, closing');
        this.destroy();
      }
      return;
    }
    if (this.phase !== Phase.Transmission) return;
    if (this.paused || this.held.length > 0) {
      this.held.push(b);
      return;
    }
    try {
      this.parse(b, 0);
    } catch (e) {
      this.fatal(e);
    }
  }

  /** A bug, not bad input: lose this connection, never the daemon. */
  private fatal(e: unknown): void {
    this.log.error({ err: e, peer: this.peer }, 'nbd: internal error, closing connection');
    this.phase = Phase.Closing;
    this.destroy();
  }

  /** True when reading must stop until in-flight work (or unsent replies) drains. */
  private mustPause(): boolean {
    const tx = this.tx!;
    return (
      tx.inFlightBytes + this.payloadLen > this.opts.maxInFlightBytes ||
      tx.inFlight >= this.opts.maxInFlightRequests ||
      // Replies queued for a slow reader: they may be views pinning cache frames, so keep few.
      this.sock.writableLength > MAX_QUEUED_REPLY_BYTES
    );
  }

  private pause(rest: Buffer): void {
    this.held.unshift(rest);
    if (!this.paused) {
      this.paused = true;
      this.sock.pause();
    }
  }

  private maybeResume(): void {
    if (!this.paused || this.phase !== Phase.Transmission || this.disconnecting || this.mustPause()) return;
    this.paused = false;
    while (this.held.length > 0 && !this.paused && this.phase === Phase.Transmission && !this.disconnecting) {
      this.parse(this.held.shift()!, 0);
    }
    if (!this.paused && this.phase === Phase.Transmission && !this.disconnecting) this.sock.resume();
  }

  /**
   * Incremental request framing. Headers are parsed straight out of the socket chunk when they
   * fit (the common case: no copy); a header split across chunks is assembled in `hdr`. A WRITE
   * payload that lies entirely inside one chunk is passed on as a zero-copy view; one that spans
   * chunks is gathered into a single buffer of its exact size (one copy, no Buffer.concat).
   */
  private parse(b: Buffer, pos: number): void {
    const end = b.length;
    while (pos < end) {
      if (this.phase !== Phase.Transmission || this.disconnecting) return;
      switch (this.rx) {
        case Rx.Header: {
          if (this.hdrFill === 0 && this.mustPause()) {
            this.pause(b.subarray(pos));
            return;
          }
          if (this.hdrFill === 0 && end - pos >= C.NBD_REQUEST_SIZE) {
            const p = pos;
            pos += C.NBD_REQUEST_SIZE;
            this.onHeader(b, p);
          } else {
            const n = Math.min(C.NBD_REQUEST_SIZE - this.hdrFill, end - pos);
            b.copy(this.hdr, this.hdrFill, pos, pos + n);
            this.hdrFill += n;
            pos += n;
            if (this.hdrFill < C.NBD_REQUEST_SIZE) return;
            this.hdrFill = 0;
            this.onHeader(this.hdr, 0);
          }
          break;
        }
        case Rx.Payload: {
          const need = this.payloadLen - this.payloadFill;
          const avail = end - pos;
          if (this.payloadFill === 0 && avail >= need) {
            const data = b.subarray(pos, pos + need);
            pos += need;
            this.onPayload(data);
          } else {
            if (!this.payload) this.payload = payloads.take(this.payloadLen);
            const n = Math.min(need, avail);
            b.copy(this.payload, this.payloadFill, pos, pos + n);
            this.payloadFill += n;
            pos += n;
            if (this.payloadFill === this.payloadLen) {
              const data = this.payload;
              this.payload = null;
              this.onPayload(data);
            }
          }
          break;
        }
        case Rx.Discard: {
          const n = Math.min(this.discardLeft, end - pos);
          this.discardLeft -= n;
          pos += n;
          if (this.discardLeft === 0) {
            this.rx = Rx.Header;
            const req = this.rejected!;
            this.rejected = null;
            this.tx!.replyError(req, this.rejectedErrno, this.rejectedMsg);
          }
          break;
        }
      }
    }
  }

  private onHeader(h: Buffer, p: number): void {
    if (h.readUInt32BE(p) !== C.NBD_REQUEST_MAGIC) {
      // Framing is lost; nothing after this can be trusted. Requests already received are
      // still answered, then the connection closes.
      this.log.warn({ peer: this.peer, magic: h.readUInt32BE(p) }, 'nbd: bad request magic, closing connection');
      this.beginDisconnect();
      return;
    }
    const flags = h.readUInt16BE(p + 4);
    const type = h.readUInt16BE(p + 6);
    const offHi = h.readUInt32BE(p + 16);
    const offset = offHi * 4294967296 + h.readUInt32BE(p + 20);
    const length = h.readUInt32BE(p + 24);
    const req = new Request(type, flags, h.readUInt32BE(p + 8), h.readUInt32BE(p + 12), offset, length);
    const tx = this.tx!;
    let errno = tx.validate(type, flags, offset, length);
    if (errno === 0 && offHi >= 0x200000) errno = C.NBD_EINVAL; // offset ≥ 2^53: not exact as a double

    if (type === C.NBD_CMD_WRITE) {
      if (errno === 0) {
        this.pendingReq = req;
        this.payloadLen = length;
        this.payloadFill = 0;
        this.rx = Rx.Payload;
        return;
      }
      // Stay in sync by skipping the payload, unless it is absurd (the spec allows a hard
      // disconnect when a client sends more than the advertised maximum).
      if (length > 2 * C.MAX_PAYLOAD) {
        tx.reject(req, errno);
        this.log.info({ peer: this.peer, length }, 'nbd: oversized write payload, closing connection');
        this.beginDisconnect();
        return;
      }
      if (length === 0) {
        tx.reject(req, errno);
        return;
      }
      // Reply only once the payload is consumed: some clients (libnbd 1.14) cannot match a
      // reply that arrives while they are still sending the request.
      this.rejected = req;
      this.rejectedErrno = errno;
      this.rejectedMsg = tx.lastError;
      this.discardLeft = length;
      this.rx = Rx.Discard;
      return;
    }
    if (type === C.NBD_CMD_DISC && errno === 0) {
      this.beginDisconnect();
      return;
    }
    if (errno !== 0) tx.reject(req, errno);
    else tx.dispatch(req, null);
  }

  private onPayload(data: Buffer): void {
    const req = this.pendingReq!;
    this.pendingReq = null;
    this.payloadLen = 0;
    this.payloadFill = 0;
    this.rx = Rx.Header;
    const tx = this.tx!;
    // The export may have been revoked while the payload was arriving.
    if (tx.revoked) tx.replyError(req, C.NBD_ESHUTDOWN, 'export is no longer available');
    else tx.dispatch(req, data);
  }

  // --- teardown -------------------------------------------------------------------------------

  /** NBD_CMD_DISC (or a fatal request): stop reading, finish in-flight requests, then close. */
  private beginDisconnect(): void {
    this.disconnecting = true;
    this.held = [];
    this.sock.pause();
    if (this.tx!.inFlight === 0) this.finish();
  }

  private finish(): void {
    if (this.phase === Phase.Closed) return;
    this.phase = Phase.Closing;
    // Nothing more will run on the export: release it now, not when the peer's FIN arrives, so
    // the volume stops counting a client that has said goodbye.
    if (this.tx && this.tx.inFlight === 0) this.releaseExport();
    // end() flushes queued replies; destroy after a grace period if the peer never closes.
    // Resume so the peer's FIN is seen ('close' never fires on a paused socket); onData drops
    // anything that still arrives.
    this.sock.end();
    this.sock.resume();
    setTimeout(() => this.destroy(), 5000).unref();
  }

  private onSettled(): void {
    try {
      const tx = this.tx!;
      if (tx.inFlight === 0) {
        if (this.phase === Phase.Closed) this.releaseExport();
        else if (this.disconnecting) this.finish();
      }
      if (this.paused) this.maybeResume();
    } catch (e) {
      this.fatal(e);
    }
  }

  /** The export went away: fail everything with ESHUTDOWN, then close (the client should disconnect). */
  revoke(): void {
    if (!this.tx) {
      // Opened by NBD_OPT_GO but transmission has not started yet: revoke once it does.
      this.revokedEarly = true;
      return;
    }
    if (this.tx.revoked) return;
    this.log.info({ peer: this.peer, export: this.neg?.exportName }, 'nbd: export revoked, closing connection');
    this.tx.failAll(C.NBD_ESHUTDOWN, 'export is no longer available');
    // Stop reading and half-close once the ESHUTDOWN replies are flushed; the client sees EOF.
    this.disconnecting = true;
    this.held = [];
    this.sock.pause();
    this.finish();
  }

  /**
   * Server shutdown: stop reading, let in-flight requests finish (up to graceMs), then close.
   * Resolves once the socket is closed.
   */
  shutdown(graceMs = 5000): Promise<void> {
    if (this.phase === Phase.Handshake || !this.tx) {
      this.destroy();
      return this.done;
    }
    if (this.phase === Phase.Transmission) {
      this.disconnecting = true;
      this.held = [];
      this.sock.pause();
      if (this.tx.inFlight === 0) this.finish();
      const t = setTimeout(() => {
        this.tx?.failAll(C.NBD_ESHUTDOWN, 'server is shutting down');
        this.finish();
      }, graceMs);
      t.unref();
      void this.done.then(() => clearTimeout(t));
    }
    setTimeout(() => this.destroy(), graceMs + 1000).unref();
    return this.done;
  }

  private onClose(): void {
    // After STARTTLS both layers report their close.
    if (this.closeHandled) return;
    this.closeHandled = true;
    this.destroy();
    this.phase = Phase.Closed;
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.hq.fail(closedError());
    this.payload = null;
    this.held = [];
    if (this.tx) {
      this.tx.closed = true;
      if (this.tx.inFlight === 0) this.releaseExport();
    } else if (this.neg) this.releaseExport();
    if (!this.closedNotified && !this.opts.refuse) {
      this.closedNotified = true;
      try {
        this.opts.observer?.connectionClosed();
      } catch (e) {
        this.log.error({ err: e }, 'nbd: observer failed');
      }
    }
    if (!this.tx || this.tx.inFlight === 0) this.resolveDone();
    // A backend request that never finishes must not hold up server.close() forever; the
    // export is still released if it ever does.
    else setTimeout(() => this.resolveDone(), 5000).unref();
  }

  private releaseExport(): void {
    if (this.exportClosed || !this.neg) return;
    this.exportClosed = true;
    try {
      this.neg.export.close();
    } catch (e) {
      this.log.error({ err: e }, 'nbd: closing export failed');
    }
    // Done once the socket is closed too (the export may go first, at a clean disconnect).
    if (this.phase === Phase.Closed) this.resolveDone();
  }
}
