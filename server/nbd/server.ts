// The NBD server: listens on TCP and/or Unix sockets and runs one NbdConnection per client.
// Many clients and many exports at once; each connection is independent (a misbehaving client
// only ever loses its own connection), and their number is bounded: a client over the limit is
// told so in the handshake (NBD_REP_ERR_SHUTDOWN with a message) and closed.

import net from 'node:net';
import { ShoalError } from '../errors.js';
import { chmod, lstat, unlink } from 'node:fs/promises';
import type { ExportProvider } from '../volume/export-port.js';
import type { NbdObserver } from './observer.js';
import type { Logger, TlsMode } from './handshake.js';
import type { TlsCredentials } from './tls-credentials.js';
import { NbdConnection } from './connection.js';
import type { RequestLoad } from './transmission.js';

export type { Logger } from './handshake.js';

export interface NbdServerOptions {
  provider: ExportProvider;
  observer?: NbdObserver;
  /** pino-like logger; defaults to silence. */
  logger?: Logger;
  /** Disconnect clients that have not finished the handshake after this long (default 30 s). */
  handshakeTimeoutMs?: number;
  /** Per connection: stop reading requests while this many payload bytes are in flight (default 64 MiB). */
  maxInFlightBytes?: number;
  /** Per connection: stop reading requests while this many are in flight (default 1024). */
  maxInFlightRequests?: number;
  /** On close(), how long in-flight requests may take before they are failed (default 5 s). */
  shutdownGraceMs?: number;
  /** NBD_OPT_STARTTLS: absent or off = refused; on/require need credentials. */
  tls?: { mode: TlsMode; credentials: TlsCredentials | null };
  /** Connections served at once (handshake or transmission); default 1024. */
  maxConnections?: number;
}

/** Over-limit clients being told so at once; beyond this they are dropped without a word. */
const MAX_REFUSING = 64;
/** How long an over-limit client may take to hear its refusal. */
const REFUSE_TIMEOUT_MS = 5000;

const silent: Logger = { info() {}, warn() {}, error() {}, debug() {} };

export class NbdServer {
  private readonly opts: NbdServerOptions;
  private readonly log: Logger;
  private readonly servers: net.Server[] = [];
  private readonly connections = new Set<NbdConnection>();
  /** Over-limit clients being told so (not counted as connections). */
  private readonly refusing = new Set<NbdConnection>();
  private refusedSinceLog = 0;
  private lastRefusalLog = 0;
  private closing = false;
  private readonly tls: { mode: 'on' | 'require'; credentials: TlsCredentials } | undefined;
  private readonly maxConnections: number;
  /** Requests over every connection: dispatched since start, and running now (read by the cache's prefault). */
  readonly load: RequestLoad = { started: 0, inFlight: 0 };

  constructor(opts: NbdServerOptions) {
    this.opts = opts;
    this.log = opts.logger ?? silent;
    const t = opts.tls;
    if (t && t.mode !== 'off') {
      if (!t.credentials) throw new Error(`TLS mode ${t.mode} needs credentials`);
      this.tls = { mode: t.mode, credentials: t.credentials };
    }
    this.maxConnections = opts.maxConnections ?? 1024;
  }

  /** Number of open client connections. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Listens on TCP; resolves with the bound address (port 0 picks a free port). */
  async listenTcp(host: string, port: number): Promise<{ host: string; port: number }> {
    const srv = this.makeServer(true);
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ host, port }, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    srv.on('error', (e) => this.log.error({ err: e }, 'nbd: listener error'));
    this.servers.push(srv);
    const a = srv.address() as net.AddressInfo;
    return { host: a.address, port: a.port };
  }

  /**
   * Listens on a Unix socket, then sets its permission bits to `mode` (connecting needs write
   * permission, so 0660 admits the owner and the group). A socket file left behind by a daemon
   * killed with -9 is removed first — but only if it is a socket and nothing answers on it;
   * anything else is an error.
   */
  async listenUnix(path: string, mode = 0o660): Promise<string> {
    await removeStaleSocket(path);
    const srv = this.makeServer(false);
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen({ path }, () => {
        srv.off('error', reject);
        resolve();
      });
    });
    srv.on('error', (e) => this.log.error({ err: e }, 'nbd: listener error'));
    this.servers.push(srv);
    await chmod(path, mode);
    return path;
  }

  /**
   * Serves on a socket opened elsewhere (systemd socket activation), TCP or Unix: `listen` starts
   * the server on it. Resolves with the server, whose address() tells which kind it is.
   */
  async listenWith(listen: (srv: net.Server) => Promise<void>): Promise<net.Server> {
    const srv = this.makeServer(true); // no-delay only touches TCP connections
    await listen(srv);
    srv.on('error', (e) => this.log.error({ err: e }, 'nbd: listener error'));
    this.servers.push(srv);
    return srv;
  }

  /** Stops listening and ends every connection (in-flight requests get a grace period). */
  async close(): Promise<void> {
    this.closing = true;
    const stopped = this.servers.map((s) => new Promise<void>((r) => s.close(() => r())));
    this.servers.length = 0;
    const grace = this.opts.shutdownGraceMs ?? 5000;
    await Promise.all([...stopped, ...Array.from(this.connections, (c) => c.shutdown(grace)), ...Array.from(this.refusing, (c) => c.shutdown(0))]);
  }

  private makeServer(tcp: boolean): net.Server {
    return net.createServer({ noDelay: tcp, keepAlive: true, keepAliveInitialDelay: 60_000 }, (sock) => {
      if (this.closing) {
        sock.destroy();
        return;
      }
      if (tcp) sock.setNoDelay(true); // replies are latency-bound; we batch with cork() ourselves
      if (this.connections.size >= this.maxConnections) {
        this.refuse(sock);
        return;
      }
      const conn = new NbdConnection(sock, {
        provider: this.opts.provider,
        observer: this.opts.observer,
        load: this.load,
        log: this.log,
        handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? 30_000,
        maxInFlightBytes: this.opts.maxInFlightBytes ?? 64 * 1024 * 1024,
        maxInFlightRequests: this.opts.maxInFlightRequests ?? 1024,
        tls: this.tls,
      });
      this.connections.add(conn);
      void conn.done.then(() => this.connections.delete(conn));
    });
  }

  /** Over the limit: the client hears why in the handshake (a few at a time), then is closed. */
  private refuse(sock: net.Socket): void {
    this.refusedSinceLog++;
    const now = Date.now();
    // One line per second at most: a flood of clients must not become a flood of log lines.
    if (now - this.lastRefusalLog >= 1000) {
      this.log.warn({ limit: this.maxConnections, refused: this.refusedSinceLog, peer: sock.remoteAddress ?? 'unix' }, 'nbd: connection limit reached, refusing new clients');
      this.lastRefusalLog = now;
      this.refusedSinceLog = 0;
    }
    if (this.refusing.size >= MAX_REFUSING) {
      sock.destroy();
      return;
    }
    const conn = new NbdConnection(sock, {
      provider: this.opts.provider,
      log: this.log,
      handshakeTimeoutMs: Math.min(REFUSE_TIMEOUT_MS, this.opts.handshakeTimeoutMs ?? REFUSE_TIMEOUT_MS),
      maxInFlightBytes: 0,
      maxInFlightRequests: 0,
      refuse: `the server has too many connections (limit ${this.maxConnections}); try again later`,
    });
    this.refusing.add(conn);
    void conn.done.then(() => this.refusing.delete(conn));
  }
}

async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await lstat(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!st.isSocket()) throw new ShoalError('address_in_use', `the NBD socket path ${path} exists and is not a socket; refusing to replace it (remove it, or choose another --nbd-socket)`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect({ path });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw new ShoalError('address_in_use', `another server is listening on the NBD socket ${path} (is a Shoal daemon already running on this data directory?)`);
  await unlink(path);
}
