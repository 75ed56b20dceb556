// The NBD server: listens on TCP and/or Unix sockets and runs one NbdConnection per client.
// Many clients and many exports at once; each connection is independent (a misbehaving client
// only ever loses its own connection).

import net from 'node:net';
import { lstat, unlink } from 'node:fs/promises';
import type { ExportProvider } from '../volume/export-port.js';
import type { NbdObserver } from './observer.js';
import type { Logger } from './handshake.js';
import { NbdConnection } from './connection.js';

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
}

const silent: Logger = { info() {}, warn() {}, error() {}, debug() {} };

export class NbdServer {
  private readonly opts: NbdServerOptions;
  private readonly log: Logger;
  private readonly servers: net.Server[] = [];
  private readonly connections = new Set<NbdConnection>();
  private closing = false;

  constructor(opts: NbdServerOptions) {
    this.opts = opts;
    this.log = opts.logger ?? silent;
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
   * Listens on a Unix socket. A socket file left behind by a daemon killed with -9 is removed
   * first — but only if it is a socket and nothing answers on it; anything else is an error.
   */
  async listenUnix(path: string): Promise<string> {
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
    await Promise.all([...stopped, ...Array.from(this.connections, (c) => c.shutdown(grace))]);
  }

  private makeServer(tcp: boolean): net.Server {
    return net.createServer({ noDelay: tcp, keepAlive: true, keepAliveInitialDelay: 60_000 }, (sock) => {
      if (this.closing) {
        sock.destroy();
        return;
      }
      if (tcp) sock.setNoDelay(true); // replies are latency-bound; we batch with cork() ourselves
      const conn = new NbdConnection(sock, {
        provider: this.opts.provider,
        observer: this.opts.observer,
        log: this.log,
        handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? 30_000,
        maxInFlightBytes: this.opts.maxInFlightBytes ?? 64 * 1024 * 1024,
        maxInFlightRequests: this.opts.maxInFlightRequests ?? 1024,
      });
      this.connections.add(conn);
      void conn.done.then(() => this.connections.delete(conn));
    });
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
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  const alive = await new Promise<boolean>((resolve) => {
    const c = net.connect({ path });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (alive) throw Object.assign(new Error(`${path}: another server is listening on this socket`), { code: 'EADDRINUSE' });
  await unlink(path);
}
