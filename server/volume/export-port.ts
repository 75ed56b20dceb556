// The port between the NBD protocol engine (server/nbd/) and whatever serves the bytes: the
// engine calls down into these interfaces and the volume layer implements them
// (volume-exports.ts). The engine knows nothing of chunks, dedup or snapshots, and the volume
// layer nothing of the protocol.

/** Largest READ or WRITE a volume accepts in one request (nbdkit's limit; QEMU sends up to 32 MiB). */
export const MAX_REQUEST_BYTES = 64 * 1024 * 1024;

export const EXTENT_HOLE = 1; // base:allocation: no storage allocated (NBD_STATE_HOLE)
export const EXTENT_ZERO = 2; // base:allocation: reads as zeroes (NBD_STATE_ZERO)
export const EXTENT_DIRTY = 1; // qemu:dirty-bitmap:*: may differ from the bitmap's base (NBD_STATE_DIRTY)

export interface Extent {
  length: number;
  /** The meta context's flags: EXTENT_HOLE | EXTENT_ZERO for base:allocation. */
  flags: number;
}

export interface ZeroOptions {
  noHole: boolean; // keep the range allocated (NBD_CMD_FLAG_NO_HOLE)
  fastZero: boolean; // fail with ENOTSUP rather than write slowly (NBD_CMD_FLAG_FAST_ZERO)
  fua: boolean;
}

/**
 * A read's bytes: one Buffer, or several back to back (sent with one writev). They may be views
 * of the shared cache, held until release(): the engine calls it once the reply's bytes have left
 * for the socket (or will never be sent). release() is idempotent.
 */
export interface ReadResult {
  readonly data: Buffer | Buffer[];
  release(): void;
}

/** One open export, held by one NBD connection. */
export interface BlockExport {
  readonly name: string;
  readonly description: string;
  /** Size in bytes, read when the client negotiates (volumes can be resized later). */
  readonly size: number;
  readonly readOnly: boolean;
  readonly blockSize: { minimum: number; preferred: number; maximum: number };
  /** Whether a completed write is visible on every connection and a flush covers all of them. */
  readonly multiConn: boolean;
  /** A read of cached bytes may answer at once, without a promise (the hot path of a read workload). */
  read(offset: number, length: number): ReadResult | Promise<ReadResult>;
  /**
   * `data` may be reused for another request once the returned promise resolves: what keeps a view
   * of it longer marks it with payloads.keep() (server/payload-pool.ts).
   */
  write(offset: number, data: Buffer, fua: boolean): Promise<void>;
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  writeZeroes(offset: number, length: number, opts: ZeroOptions): Promise<void>;
  flush(): Promise<void>;
  /** NBD_CMD_CACHE: load the range into the cache; resolves when done. */
  cache(offset: number, length: number): Promise<void>;
  /** base:allocation extents covering at least the first byte of [offset, offset+length). */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /**
   * Extents of another meta context this export offers (ExportProvider.metaContexts), covering
   * at least the first byte of the range; rejects if the context is no longer available.
   */
  metaContextStatus?(context: string, offset: number, length: number): Promise<Extent[]>;
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

/** What the NBD engine asks of the rest of the daemon. */
export interface ExportProvider {
  listExports(session: NbdSession): ExportListing[];
  /**
   * Opens the named export for one connection, or returns null if there is none (or this
   * session may not see it). `onRevoke` is called if the export goes away (volume deleted with
   * force): the connection should then fail in-flight and later requests with ESHUTDOWN and close.
   */
  openExport(name: string, onRevoke: () => void, session: NbdSession): BlockExport | null;
  /** The export a client gets when it asks for the empty name "", if any. */
  defaultExportName(): string | null;
  /**
   * The meta contexts besides base:allocation that the named export offers (full names,
   * "namespace:leaf"); none for an unknown export. The engine matches clients' queries against
   * them and asks the opened export for their status by name.
   */
  metaContexts?(exportName: string, session: NbdSession): string[];
}
