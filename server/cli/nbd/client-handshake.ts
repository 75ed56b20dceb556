// The client side of the NBD handshake (fixed newstyle, doc/proto.md of NetworkBlockDevice/nbd):
// STARTTLS when asked, structured replies, the base:allocation meta context (block status: where
// the holes are) and NBD_OPT_GO. Refusals become sentences for `shoal import`/`shoal export`.
import net from 'node:net';
import type tls from 'node:tls';
import type { Duplex } from 'node:stream';
import * as C from '../../nbd/constants.js';
import { CliError } from '../api-client.js';
import { SocketReader } from './socket-reader.js';

/** How to reach one export. */
export interface NbdTarget {
  address: { path: string } | { host: string; port: number };
  exportName: string;
  /** STARTTLS with these credentials; null: plaintext. */
  tls: ClientTls | null;
}

export interface ClientTls {
  /** PEM CA certificate(s) to verify the server's certificate (the system's when absent). */
  ca?: Buffer;
  /** A pre-shared key instead of certificates (psktool's "identity:hexkey"). */
  psk?: { identity: string; key: Buffer };
}

export interface Negotiated {
  sock: Duplex;
  size: number;
  /** Transmission flags (NBD_FLAG_*). */
  flags: number;
  structured: boolean;
  /** The id the server gave base:allocation; null: no block status. */
  allocationContext: number | null;
  /** Largest payload the server takes in one request (its NBD_INFO_BLOCK_SIZE maximum, or 32 MiB). */
  maxPayload: number;
  /** Bytes that arrived after the handshake (start of transmission). */
  leftover: Buffer;
}

/** Where the target is, for sentences: "the NBD server at /run/shoal.sock". */
export function describeAddress(t: NbdTarget): string {
  return 'path' in t.address ? t.address.path : `${t.address.host.includes(':') ? `[${t.address.host}]` : t.address.host}:${t.address.port}`;
}

/** An option reply's type and data. */
interface OptionReply {
  type: number;
  data: Buffer;
}

const REP_ERR = 0x80000000;

function optionRequest(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.allocUnsafe(16 + data.length);
  h.writeUInt32BE(C.IHAVEOPT_HI, 0);
  h.writeUInt32BE(C.IHAVEOPT_LO, 4);
  h.writeUInt32BE(option, 8);
  h.writeUInt32BE(data.length, 12);
  data.copy(h, 16);
  return h;
}

function nameField(name: string): Buffer {
  const b = Buffer.from(name, 'utf8');
  const out = Buffer.allocUnsafe(4 + b.length);
  out.writeUInt32BE(b.length, 0);
  b.copy(out, 4);
  return out;
}

async function readReply(r: SocketReader, option: number): Promise<OptionReply> {
  const h = await r.read(20);
  if (h.readBigUInt64BE(0) !== C.OPTION_REPLY_MAGIC) throw new CliError('the NBD server sent a malformed option reply');
  if (h.readUInt32BE(8) !== option) throw new CliError(`the NBD server answered option ${h.readUInt32BE(8)} when asked ${option}`);
  const length = h.readUInt32BE(16);
  if (length > C.MAX_OPTION_LENGTH) throw new CliError('the NBD server sent an option reply too long to be real');
  return { type: h.readUInt32BE(12), data: length > 0 ? await r.read(length) : Buffer.alloc(0) };
}

/** The server's own words in an error reply, if it sent any. */
const why = (rep: OptionReply) => (rep.data.length > 0 ? ` (${rep.data.toString('utf8').replace(/\.$/, '')})` : '');

export async function connectSocket(t: NbdTarget): Promise<net.Socket> {
  const sock = 'path' in t.address ? net.connect({ path: t.address.path }) : net.connect({ host: t.address.host, port: t.address.port, noDelay: true });
  await new Promise<void>((resolve, reject) => {
    sock.once('connect', resolve);
    sock.once('error', (e: NodeJS.ErrnoException) => {
      const code = e.code ?? e.message;
      reject(new CliError(`cannot reach the daemon's NBD server at ${describeAddress(t)} (${code})${code === 'EACCES' ? ': this user may not open its socket' : ''}`));
    });
  });
  return sock;
}

async function startTls(sock: net.Socket, r: SocketReader, t: NbdTarget, creds: ClientTls): Promise<tls.TLSSocket> {
  sock.write(optionRequest(C.NBD_OPT_STARTTLS));
  const rep = await readReply(r, C.NBD_OPT_STARTTLS);
  if (rep.type !== C.NBD_REP_ACK) throw new CliError(`the NBD server at ${describeAddress(t)} refused TLS${why(rep)}`);
  r.detach();
  const host = 'host' in t.address ? t.address.host : undefined;
  const opts: tls.ConnectionOptions = { socket: sock };
  if (creds.psk) {
    const { identity, key } = creds.psk;
    // Node offers PSK with TLS 1.2's PSK suites (as the daemon, GnuTLS's clients and nbdkit do).
    Object.assign(opts, { pskCallback: () => ({ psk: key, identity }), ciphers: 'PSK', maxVersion: 'TLSv1.2', checkServerIdentity: () => undefined });
  } else {
    if (creds.ca) opts.ca = creds.ca;
    // Over a Unix socket there is no host name to check: the socket's path is what the user chose.
    if (host === undefined) opts.checkServerIdentity = () => undefined;
    else if (!net.isIP(host)) opts.servername = host;
    else opts.host = host;
  }
  // Loaded here: node:tls costs every plain copy's start ~4 ms.
  const { connect } = await import('node:tls');
  const secure = connect(opts);
  await new Promise<void>((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('error', (e: NodeJS.ErrnoException) => {
      const code = e.code ?? '';
      const hint = code.includes('CERT') || code.includes('SIGNATURE') || code === 'DEPTH_ZERO_SELF_SIGNED_CERT' ? ': give the CA that signed its certificate with --cacert FILE' : '';
      reject(new CliError(`TLS with the NBD server at ${describeAddress(t)} failed (${code || e.message})${hint}`));
    });
  });
  return secure;
}

/** Negotiates `t.exportName` on a connected socket. */
export async function handshake(raw: net.Socket, t: NbdTarget): Promise<Negotiated> {
  let sock: Duplex = raw;
  let r = new SocketReader(raw);
  try {
    const hello = await r.read(18);
    if (hello.readBigUInt64BE(0) !== C.NBDMAGIC) throw new CliError(`${describeAddress(t)} is not an NBD server`);
    if (hello.readBigUInt64BE(8) !== C.IHAVEOPT) throw new CliError(`the NBD server at ${describeAddress(t)} speaks only the old handshake`);
    const serverFlags = hello.readUInt16BE(16);
    if (!(serverFlags & C.NBD_FLAG_FIXED_NEWSTYLE)) throw new CliError(`the NBD server at ${describeAddress(t)} does not speak the fixed newstyle handshake`);
    const clientFlags = Buffer.allocUnsafe(4);
    clientFlags.writeUInt32BE(C.NBD_FLAG_C_FIXED_NEWSTYLE | (serverFlags & C.NBD_FLAG_NO_ZEROES ? C.NBD_FLAG_C_NO_ZEROES : 0));
    raw.write(clientFlags);

    if (t.tls) {
      sock = await startTls(raw, r, t, t.tls);
      r = new SocketReader(sock);
    }

    sock.write(optionRequest(C.NBD_OPT_STRUCTURED_REPLY));
    let rep = await readReply(r, C.NBD_OPT_STRUCTURED_REPLY);
    if (rep.type === C.NBD_REP_ERR_TLS_REQD) throw new CliError(`the NBD server at ${describeAddress(t)} requires TLS, and the daemon did not say so`);
    const structured = rep.type === C.NBD_REP_ACK;

    let allocationContext: number | null = null;
    if (structured) {
      const query = Buffer.from(C.BASE_ALLOCATION);
      const q = Buffer.allocUnsafe(8 + query.length);
      q.writeUInt32BE(1, 0);
      q.writeUInt32BE(query.length, 4);
      query.copy(q, 8);
      sock.write(optionRequest(C.NBD_OPT_SET_META_CONTEXT, Buffer.concat([nameField(t.exportName), q])));
      for (;;) {
        rep = await readReply(r, C.NBD_OPT_SET_META_CONTEXT);
        if (rep.type === C.NBD_REP_META_CONTEXT && rep.data.length >= 4 && rep.data.subarray(4).toString() === C.BASE_ALLOCATION) allocationContext = rep.data.readUInt32BE(0);
        else if (rep.type === C.NBD_REP_ERR_UNKNOWN) throw noExport(t, rep);
        else if (rep.type === C.NBD_REP_ACK || rep.type >= REP_ERR) break;
      }
    }

    const info = Buffer.allocUnsafe(4);
    info.writeUInt16BE(1, 0);
    info.writeUInt16BE(C.NBD_INFO_BLOCK_SIZE, 2);
    sock.write(optionRequest(C.NBD_OPT_GO, Buffer.concat([nameField(t.exportName), info])));
    let size = -1;
    let flags = 0;
    let maxPayload = 32 * 1024 * 1024;
    for (;;) {
      rep = await readReply(r, C.NBD_OPT_GO);
      if (rep.type === C.NBD_REP_ACK) break;
      if (rep.type === C.NBD_REP_INFO && rep.data.length >= 2) {
        const kind = rep.data.readUInt16BE(0);
        if (kind === C.NBD_INFO_EXPORT && rep.data.length >= 12) {
          size = Number(rep.data.readBigUInt64BE(2));
          flags = rep.data.readUInt16BE(10);
        } else if (kind === C.NBD_INFO_BLOCK_SIZE && rep.data.length >= 14) {
          maxPayload = rep.data.readUInt32BE(10);
        }
        continue;
      }
      if (rep.type === C.NBD_REP_ERR_UNKNOWN) throw noExport(t, rep);
      if (rep.type === C.NBD_REP_ERR_TLS_REQD) throw new CliError(`the NBD server at ${describeAddress(t)} requires TLS, and the daemon did not say so`);
      if (rep.type >= REP_ERR) throw new CliError(`the NBD server at ${describeAddress(t)} refused export ${t.exportName}${why(rep)}`);
    }
    if (size < 0) throw new CliError(`the NBD server at ${describeAddress(t)} did not say how big export ${t.exportName} is`);
    return { sock, size, flags, structured, allocationContext, maxPayload, leftover: r.detach() };
  } catch (e) {
    r.detach();
    sock.destroy();
    raw.destroy();
    throw e;
  }
}

function noExport(t: NbdTarget, rep: OptionReply): CliError {
  return new CliError(`the NBD server at ${describeAddress(t)} has no export named ${t.exportName}${why(rep)}`);
}
