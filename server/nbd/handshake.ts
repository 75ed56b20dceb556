// Fixed newstyle handshake (doc/proto.md "Handshake"): greeting, client flags, then option haggling
// until NBD_OPT_GO / NBD_OPT_EXPORT_NAME selects an export, the client aborts, or it misbehaves.
//
// The handshake is not a hot path, so it is written as straightforward async code over a
// `read(n)` primitive supplied by the connection.
//
// TLS (NBD_OPT_STARTTLS, nbdkit's semantics): after the ACK the connection swaps its transport for
// a TLSSocket (HandshakeIO.startTls) and the same option loop goes on over it, with everything
// negotiated in plaintext forgotten (structured replies, meta contexts: CVE-2021-3716). With
// `require`, only STARTTLS and ABORT are served before TLS: other options get
// NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME (which cannot be refused) closes the connection.

import type { BlockExport, ExportProvider, NbdSession } from '../volume/export-port.js';
import * as C from './constants.js';
import { MetaContextSelection, type SelectedContext } from './meta-context.js';
import { decodeString } from './strings.js';

export type TlsMode = 'off' | 'on' | 'require';

export interface HandshakeIO {
  /** Resolves with exactly n bytes; rejects when the connection goes away. */
  read(n: number): Promise<Buffer>;
  write(buf: Buffer): void;
  /**
   * Called right after the STARTTLS ACK is written: from now on input is TLS. Anything the client
   * sent after STARTTLS in plaintext must be dropped. Resolves once the client is authenticated;
   * rejects if the TLS handshake fails (the connection is then closed).
   */
  startTls?(): Promise<NbdSession>;
}

export interface Logger {
  info(obj: unknown, msg?: string): void;
  warn(obj: unknown, msg?: string): void;
  error(obj: unknown, msg?: string): void;
  debug(obj: unknown, msg?: string): void;
}

export interface HandshakeOptions {
  provider: ExportProvider;
  /** Passed to ExportProvider.openExport for the export chosen with GO / EXPORT_NAME. */
  onRevoke: () => void;
  log?: Logger;
  /** The client's address, for log lines. */
  peer?: string;
  /** Options accepted before we give up on the client (DoS guard). */
  maxOptions?: number;
  /** NBD_OPT_STARTTLS policy (default off); on/require need HandshakeIO.startTls. */
  tls?: TlsMode;
  /**
   * Serve nothing: every option but ABORT gets NBD_REP_ERR_SHUTDOWN with this message (the
   * server is over its connection limit). EXPORT_NAME, which cannot be refused, closes.
   */
  refuse?: string;
}

export interface Negotiated {
  export: BlockExport;
  /** The export's canonical name (the default export's real name if the client asked for ""). */
  exportName: string;
  size: number;
  /** Transmission flags sent to the client. */
  flags: number;
  structured: boolean;
  /** Meta contexts selected with NBD_OPT_SET_META_CONTEXT for this export (BLOCK_STATUS answers each). */
  metaContexts: SelectedContext[];
  /** Largest READ/WRITE payload accepted. */
  maxPayload: number;
  minBlock: number;
  session: NbdSession;
}

/** A violation that ends the connection (logged by the caller at debug/warn level). */
export class ProtocolError extends Error {
  override name = 'ProtocolError';
}

interface BlockSize {
  minimum: number;
  preferred: number;
  maximum: number;
}

const isPow2 = (n: number) => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

/** The export's block-size constraints, made consistent and capped at what the engine accepts. */
function blockSizeOf(exp: BlockExport): BlockSize {
  const bs = exp.blockSize ?? { minimum: 1, preferred: 4096, maximum: C.MAX_PAYLOAD };
  const minimum = isPow2(bs.minimum) && bs.minimum <= 65536 ? bs.minimum : 1;
  let preferred = isPow2(bs.preferred) && bs.preferred >= minimum ? bs.preferred : Math.max(4096, minimum);
  let maximum = Number.isInteger(bs.maximum) && bs.maximum >= minimum ? Math.min(bs.maximum, C.MAX_PAYLOAD) : C.MAX_PAYLOAD;
  maximum -= maximum % minimum;
  if (preferred > 32 * 1024 * 1024) preferred = 32 * 1024 * 1024;
  return { minimum, preferred, maximum };
}

/** Transmission flags: advertise exactly what the engine and this export support. */
function transmissionFlags(exp: BlockExport, structured: boolean): number {
  let f = C.NBD_FLAG_HAS_FLAGS | C.NBD_FLAG_SEND_FLUSH | C.NBD_FLAG_SEND_FUA | C.NBD_FLAG_SEND_CACHE;
  // We never fragment a read reply, so DF is honoured trivially; only meaningful with structured replies.
  if (structured) f |= C.NBD_FLAG_SEND_DF;
  if (exp.readOnly) f |= C.NBD_FLAG_READ_ONLY;
  else f |= C.NBD_FLAG_SEND_TRIM | C.NBD_FLAG_SEND_WRITE_ZEROES | C.NBD_FLAG_SEND_FAST_ZERO;
  if (exp.multiConn) f |= C.NBD_FLAG_CAN_MULTI_CONN;
  return f;
}

function optionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.allocUnsafe(20 + len);
  b.writeBigUInt64BE(C.OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, 20);
  return b;
}

function u32String(s: string, extra?: string): Buffer {
  const name = Buffer.from(s, 'utf8');
  const more = extra ? Buffer.from(extra, 'utf8') : null;
  const b = Buffer.allocUnsafe(4 + name.length + (more ? more.length : 0));
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  if (more) more.copy(b, 4 + name.length);
  return b;
}

/**
 * Runs the handshake. Resolves with the negotiated export when the client enters transmission,
 * or null when it ends the handshake cleanly (NBD_OPT_ABORT). Rejects on protocol violations or
 * when the connection closes.
 */
export async function negotiate(io: HandshakeIO, opts: HandshakeOptions): Promise<Negotiated | null> {
  const { provider } = opts;
  const maxOptions = opts.maxOptions ?? 10_000;
  const tlsMode = opts.tls ?? 'off';

  const greeting = Buffer.allocUnsafe(18);
  greeting.writeBigUInt64BE(C.NBDMAGIC, 0);
  greeting.writeBigUInt64BE(C.IHAVEOPT, 8);
  greeting.writeUInt16BE(C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES, 16);
  io.write(greeting);

  const clientFlags = (await io.read(4)).readUInt32BE(0);
  if (clientFlags & ~C.KNOWN_CLIENT_FLAGS) throw new ProtocolError(`unknown client flags 0x${clientFlags.toString(16)}`);
  const fixed = (clientFlags & C.NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (clientFlags & C.NBD_FLAG_C_NO_ZEROES) !== 0;

  let session: NbdSession = { tls: false, identity: null };
  let tlsRequiredLogged = false;
  let structured = false;

  const reply = (option: number, type: number, data?: Buffer) => io.write(optionReply(option, type, data));
  const error = (option: number, type: number, msg: string) => reply(option, type, Buffer.from(msg, 'utf8'));

  const resolveName = (name: string): string | null => (name === '' ? provider.defaultExportName() : name);
  // Meta contexts selected with SET_META_CONTEXT, for the export name it named: a later GO for a
  // different export discards them (as nbdkit does).
  let meta = new MetaContextSelection(provider, resolveName, () => session);

  for (let n = 0; ; n++) {
    if (n >= maxOptions) throw new ProtocolError('too many options');
    const hdr = await io.read(16);
    if (hdr.readUInt32BE(0) !== C.IHAVEOPT_HI || hdr.readUInt32BE(4) !== C.IHAVEOPT_LO) throw new ProtocolError('bad option magic');
    const option = hdr.readUInt32BE(8);
    const length = hdr.readUInt32BE(12);
    if (length > C.MAX_OPTION_LENGTH) throw new ProtocolError(`option ${option} length ${length} too large`);
    const data = length > 0 ? await io.read(length) : Buffer.alloc(0);

    if (!fixed && option !== C.NBD_OPT_EXPORT_NAME) {
      // Non-fixed newstyle clients cannot parse option replies.
      throw new ProtocolError(`option ${option} from a non-fixed-newstyle client`);
    }

    if (option !== C.NBD_OPT_ABORT && (opts.refuse !== undefined || (tlsMode === 'require' && !session.tls && option !== C.NBD_OPT_STARTTLS))) {
      // EXPORT_NAME has no error reply: the spec says to terminate the session.
      if (option === C.NBD_OPT_EXPORT_NAME) {
        throw new ProtocolError(opts.refuse !== undefined ? `EXPORT_NAME refused: ${opts.refuse}` : 'EXPORT_NAME in plaintext while TLS is required');
      }
      if (opts.refuse !== undefined) error(option, C.NBD_REP_ERR_SHUTDOWN, opts.refuse);
      else {
        if (!tlsRequiredLogged) opts.log?.info({ peer: opts.peer, option }, 'nbd: plaintext client refused: TLS is required');
        tlsRequiredLogged = true;
        error(option, C.NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
      }
      continue;
    }

    switch (option) {
      case C.NBD_OPT_EXPORT_NAME: {
        const raw = decodeString(data);
        const name = raw === null ? null : resolveName(raw);
        const exp = name === null ? null : provider.openExport(name, opts.onRevoke, session);
        // EXPORT_NAME cannot return an error: the spec says to terminate the session.
        if (!exp) throw new ProtocolError(`EXPORT_NAME: unknown export ${JSON.stringify(raw)}`);
        const neg = negotiated(exp, name!, structured, meta.for(raw!), session);
        const b = Buffer.alloc(noZeroes ? 10 : 10 + 124);
        b.writeBigUInt64BE(BigInt(neg.size), 0);
        b.writeUInt16BE(neg.flags, 8);
        io.write(b);
        return neg;
      }

      case C.NBD_OPT_ABORT:
        reply(option, C.NBD_REP_ACK);
        return null;

      case C.NBD_OPT_LIST: {
        if (length !== 0) {
          error(option, C.NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
          break;
        }
        for (const e of provider.listExports(session)) reply(option, C.NBD_REP_SERVER, u32String(e.name, e.description));
        reply(option, C.NBD_REP_ACK);
        break;
      }

      case C.NBD_OPT_STARTTLS:
        if (length !== 0) {
          error(option, C.NBD_REP_ERR_INVALID, 'NBD_OPT_STARTTLS takes no data');
          break;
        }
        if (tlsMode === 'off' || !io.startTls) {
          error(option, C.NBD_REP_ERR_POLICY, 'TLS is not configured on this server');
          break;
        }
        if (session.tls) {
          // One TLS session per connection: a second handshake is not offered.
          error(option, C.NBD_REP_ERR_INVALID, 'TLS is already active on this connection');
          break;
        }
        reply(option, C.NBD_REP_ACK);
        session = await io.startTls();
        // Nothing negotiated in plaintext survives (a meddler may have sent it).
        structured = false;
        meta = new MetaContextSelection(provider, resolveName, () => session);
        break;

      case C.NBD_OPT_STRUCTURED_REPLY:
        if (length !== 0) {
          error(option, C.NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
          break;
        }
        structured = true;
        reply(option, C.NBD_REP_ACK);
        break;

      case C.NBD_OPT_INFO:
      case C.NBD_OPT_GO: {
        // Data: u32 name length, name, u16 number of info requests, u16 each.
        if (length < 6) {
          error(option, C.NBD_REP_ERR_INVALID, 'option too short');
          break;
        }
        const nameLen = data.readUInt32BE(0);
        if (nameLen > length - 6) {
          error(option, C.NBD_REP_ERR_INVALID, 'export name length exceeds option length');
          break;
        }
        const nInfo = data.readUInt16BE(4 + nameLen);
        if (length !== 6 + nameLen + 2 * nInfo) {
          error(option, C.NBD_REP_ERR_INVALID, 'information request count does not match option length');
          break;
        }
        const raw = decodeString(data.subarray(4, 4 + nameLen));
        if (raw === null) {
          error(option, C.NBD_REP_ERR_INVALID, 'export name is not a valid string');
          break;
        }
        const requests = new Set<number>();
        for (let i = 0; i < nInfo; i++) requests.add(data.readUInt16BE(6 + nameLen + 2 * i));

        const name = resolveName(raw);
        let exp: BlockExport | null = null;
        if (name !== null) {
          try {
            exp = provider.openExport(name, option === C.NBD_OPT_GO ? opts.onRevoke : noop, session);
          } catch (e) {
            opts.log?.warn({ err: e, export: name }, 'nbd: opening export failed');
            error(option, C.NBD_REP_ERR_UNKNOWN, `cannot open export ${JSON.stringify(name)}: ${(e as Error)?.message ?? e}`);
            break;
          }
        }
        if (!exp) {
          error(option, C.NBD_REP_ERR_UNKNOWN, raw === '' ? 'there is no default export' : `no export named ${JSON.stringify(raw)}`);
          break;
        }
        let neg: Negotiated;
        try {
          neg = negotiated(exp, name!, structured, meta.for(raw), session);
          sendInfo(reply, option, neg, exp, requests);
        } catch (e) {
          exp.close();
          throw e;
        }
        reply(option, C.NBD_REP_ACK);
        if (option === C.NBD_OPT_GO) return neg;
        exp.close();
        break;
      }

      case C.NBD_OPT_LIST_META_CONTEXT:
      case C.NBD_OPT_SET_META_CONTEXT:
        meta.handle(option, data, structured, reply);
        break;

      default:
        error(option, C.NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }
}

function noop() {}

function negotiated(exp: BlockExport, name: string, structured: boolean, metaContexts: SelectedContext[], session: NbdSession): Negotiated {
  const bs = blockSizeOf(exp);
  return {
    export: exp,
    exportName: name,
    size: exp.size,
    flags: transmissionFlags(exp, structured),
    structured,
    metaContexts: structured ? metaContexts : [],
    maxPayload: bs.maximum,
    minBlock: bs.minimum,
    session,
  };
}

function sendInfo(reply: (o: number, t: number, d?: Buffer) => void, option: number, neg: Negotiated, exp: BlockExport, requests: Set<number>): void {
  const info = Buffer.allocUnsafe(12);
  info.writeUInt16BE(C.NBD_INFO_EXPORT, 0);
  info.writeBigUInt64BE(BigInt(neg.size), 2);
  info.writeUInt16BE(neg.flags, 10);
  reply(option, C.NBD_REP_INFO, info);

  if (requests.has(C.NBD_INFO_NAME)) {
    const n = Buffer.from(neg.exportName, 'utf8');
    const b = Buffer.allocUnsafe(2 + n.length);
    b.writeUInt16BE(C.NBD_INFO_NAME, 0);
    n.copy(b, 2);
    reply(option, C.NBD_REP_INFO, b);
  }
  if (requests.has(C.NBD_INFO_DESCRIPTION) && exp.description) {
    const d = Buffer.from(exp.description.slice(0, C.MAX_STRING), 'utf8').subarray(0, C.MAX_STRING);
    const b = Buffer.allocUnsafe(2 + d.length);
    b.writeUInt16BE(C.NBD_INFO_DESCRIPTION, 0);
    d.copy(b, 2);
    reply(option, C.NBD_REP_INFO, b);
  }
  // Always sent (the spec allows it unrequested): tells clients our maximum payload.
  const bs = blockSizeOf(exp);
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(C.NBD_INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(bs.minimum, 2);
  b.writeUInt32BE(bs.preferred, 6);
  b.writeUInt32BE(bs.maximum, 10);
  reply(option, C.NBD_REP_INFO, b);
}
