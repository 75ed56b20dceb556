// systemd socket activation (sd_listen_fds(3)): the service manager opens the listening sockets
// and passes them as file descriptors 3, 4, … with LISTEN_FDS (how many), LISTEN_PID (the process
// they are meant for) and LISTEN_FDNAMES (colon-separated, FileDescriptorName= of the socket unit).
// Shoal serves NBD on sockets named `nbd` or `nbd-unix` (TCP or Unix, whichever the socket is) and
// the REST API on the one named `api`; a socket without a name is `nbd`. Each passed socket
// replaces the listener that --nbd, --nbd-socket or --api would open.
import net from 'node:net';
import { readFileSync, readlinkSync } from 'node:fs';
import { ShoalError } from './errors.js';
import { formatListenAddress } from './config.js';
import type { NbdServer } from './nbd/server.js';

const SD_LISTEN_FDS_START = 3;

export interface InheritedSocket {
  fd: number;
  name: string; // as passed ('' when unnamed)
  role: 'nbd' | 'api';
}

function bad(message: string): never {
  throw new ShoalError('invalid_request', message);
}

/**
 * The sockets passed to this process, or [] when none are (no LISTEN_PID, or another process's).
 * Unsets the variables, so nothing this process starts takes them for its own.
 */
export function inheritedSockets(env: NodeJS.ProcessEnv = process.env, pid = process.pid): InheritedSocket[] {
  const { LISTEN_PID: listenPid, LISTEN_FDS: count, LISTEN_FDNAMES: names } = env;
  if (listenPid === undefined || count === undefined || Number(listenPid) !== pid) return [];
  delete env.LISTEN_PID;
  delete env.LISTEN_FDS;
  delete env.LISTEN_FDNAMES;
  if (!/^\d+$/.test(count)) bad(`LISTEN_FDS "${count}" is not a number of sockets.`);
  const n = Number(count);
  const nameList = names === undefined ? [] : names.split(':');
  if (names !== undefined && nameList.length !== n) bad(`LISTEN_FDNAMES "${names}" names ${nameList.length} sockets but LISTEN_FDS passes ${n}.`);
  const sockets: InheritedSocket[] = [];
  for (let i = 0; i < n; i++) {
    const name = nameList[i] ?? '';
    sockets.push({ fd: SD_LISTEN_FDS_START + i, name, role: roleOf(name) });
  }
  if (sockets.filter((s) => s.role === 'api').length > 1) bad('systemd passed more than one socket named "api"; the REST API listens on one.');
  return sockets;
}

function roleOf(name: string): 'nbd' | 'api' {
  // sd_listen_fds_with_names reports "unknown" without LISTEN_FDNAMES; a socket unit without
  // FileDescriptorName= names its sockets after itself ("shoal.socket").
  if (name === 'nbd' || name === 'nbd-unix' || name === '' || name === 'unknown' || name.endsWith('.socket')) return 'nbd';
  if (name === 'api') return 'api';
  bad(`systemd passed a socket named "${name}"; Shoal takes sockets named nbd, nbd-unix and api (FileDescriptorName=).`);
}

/** Where the inherited sockets serve; null for a kind that none of them is. */
export interface InheritedListeners {
  nbd: string | null; // TCP "HOST:PORT" (several joined by ", ")
  nbdSocket: string | null; // Unix socket path(s)
  api: string | null; // "http://HOST:PORT" or a Unix socket path
}

/** Serves NBD and the REST API on the inherited sockets. */
export async function serveInherited(sockets: InheritedSocket[], nbd: NbdServer, api: { ready(): PromiseLike<unknown>; server: net.Server }): Promise<InheritedListeners> {
  const out: InheritedListeners = { nbd: null, nbdSocket: null, api: null };
  const join = (prev: string | null, next: string) => (prev ? `${prev}, ${next}` : next);
  for (const s of sockets) {
    if (s.role === 'api') {
      await api.ready();
      await listenOnFd(api.server, s);
      const a = listenerAddress(api.server, s.fd);
      out.api = 'tcp' in a ? `http://${a.tcp}` : a.unix;
    } else {
      const a = listenerAddress(await nbd.listenWith((srv) => listenOnFd(srv, s)), s.fd);
      if ('tcp' in a) out.nbd = join(out.nbd, a.tcp);
      else out.nbdSocket = join(out.nbdSocket, a.unix);
    }
  }
  return out;
}

function listenOnFd(server: net.Server, s: InheritedSocket): Promise<void> {
  return new Promise((resolve, reject) => {
    const fail = (e: Error) => reject(new ShoalError('invalid_request', `cannot serve on the socket systemd passed as fd ${s.fd} (${s.name || 'unnamed'}): ${e.message}.`));
    server.once('error', fail);
    server.listen({ fd: s.fd }, () => {
      server.off('error', fail);
      resolve();
    });
  });
}

/** Where a server on an inherited socket listens: "HOST:PORT", or the Unix socket's path. */
function listenerAddress(server: net.Server, fd: number): { tcp: string } | { unix: string } {
  const a = server.address();
  if (a && typeof a === 'object') return { tcp: formatListenAddress({ host: a.address, port: a.port }) };
  return { unix: unixSocketPath(fd) ?? `fd ${fd}` };
}

/** A Unix socket's path, from its inode in /proc/net/unix (Node knows no path for a socket it did not bind). */
function unixSocketPath(fd: number): string | null {
  try {
    const inode = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`))?.[1];
    // Columns: Num RefCount Protocol Flags Type St Inode Path
    for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n')) {
      const cols = line.trim().split(/\s+/);
      if (cols[6] === inode && cols[7]) return cols.slice(7).join(' ');
    }
  } catch {
    /* no /proc: the caller names the fd instead */
  }
  return null;
}
