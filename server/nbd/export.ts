// The narrow interface between the NBD protocol engine and whatever serves the bytes.
// The engine knows nothing of chunks, dedup or snapshots; the volume layer implements this.

/**
 * A Buffer (or array of Buffers) returned by NbdExport.read may carry a function under this key: the engine calls it
 * once the reply's bytes have left for the socket (or will never be sent). The volume layer uses
 * it to hold a zero-copy view of the shared cache until the send is done.
 */
export const kRelease = Symbol('shoal.nbd.release');

export const EXTENT_HOLE = 1; // NBD_STATE_HOLE: no storage allocated
export const EXTENT_ZERO = 2; // NBD_STATE_ZERO: reads as zeroes

export interface Extent {
  length: number;
  flags: number; // EXTENT_HOLE | EXTENT_ZERO
}

export interface ZeroOptions {
  noHole: boolean; // NBD_CMD_FLAG_NO_HOLE: keep the range allocated
  fastZero: boolean; // NBD_CMD_FLAG_FAST_ZERO: fail with ENOTSUP rather than write slowly
  fua: boolean;
}

/** One open export, held by one NBD connection. */
export interface NbdExport {
  readonly name: string;
  readonly description: string;
  /** Size in bytes, read when the client negotiates (volumes can be resized later). */
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: { minimum: number; preferred: number; maximum: number };
  /** Whether a completed write is visible on every connection and a flush covers all of them. */
  readonly multiConn: boolean;
  /** The bytes, as one Buffer or several back to back (sent with one writev); see kRelease. */
  read(offset: number, length: number): Promise<Buffer | Buffer[]>;
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void>;
  flush(): Promise<void>;
  /** NBD_CMD_CACHE: load the range into the cache; resolves when done (or immediately if advisory). */
  cache(offset: number, length: number): Promise<void>;
  /** base:allocation extents covering at least the first byte of [offset, offset+length). */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** The connection is gone; release it. Idempotent. */
  close(): void;
}

export interface ExportListing {
  name: string;
  description: string;
}

/**
 * Who is on the other end of a connection, as far as the transport knows, so the provider can
 * decide what this client may list and open. Fixed once TLS is up (nothing before STARTTLS counts).
 */
export interface NbdSession {
  /** The connection is encrypted (NBD_OPT_STARTTLS completed). */
  tls: boolean;
  /** The PSK identity, or the client certificate's CN with --tls-verify-peer; null otherwise. */
  identity: string | null;
}

/** What the NBD server asks of the rest of the daemon. */
export interface ExportProvider {
  listExports(session: NbdSession): ExportListing[];
  /**
   * Opens the named export for one connection, or returns null if there is none (or this
   * session may not see it). `onRevoke` is called if the export goes away (volume deleted with
   * force): the connection should then fail in-flight and later requests with ESHUTDOWN and close.
   */
  openExport(name: string, onRevoke: () => void, session: NbdSession): NbdExport | null;
  /** The export a client gets when it asks for the empty name "", if any. */
  defaultExportName(): string | null;
}

/** Observability hooks; the daemon wires them to Prometheus. All optional to call cheaply. */
export interface NbdObserver {
  connectionOpened(): void;
  connectionClosed(): void;
  /** Called once per completed request. `op` is lower-case: read, write, flush, trim, write_zeroes, cache, block_status. */
  request(op: string, exportName: string, bytes: number, seconds: number, ok: boolean): void;
}
