// Copies between a raw image file and an NBD export, sparse-aware both ways.
//   import: the file is read in pieces by several workers per connection; blocks (the volume's
//     chunk size) that are all zeroes are not sent: the volume is new, so they already read as
//     zeroes and take no space.
//   export: block status says where the export has data; holes and zero extents are not read,
//     and data that reads as zeroes is not written, so the file keeps holes where the volume has.
import { readSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { CliError } from '../api-client.js';
import type { NbdPool } from '../nbd/nbd-pool.js';
import type { NbdClient } from '../nbd/nbd-client.js';
import type { Progress } from './progress.js';

/**
 * Import: bytes per WRITE, and WRITEs in flight per connection. Many smaller writes keep Shoal's
 * write path busier than a few big ones (it fingerprints concurrent writes in one job and stores
 * them in parallel): 256 KiB x 64 per connection, nbdcopy's own choice, beat 2 MiB x 4 by 20-30%.
 * The file is read in pieces of 1 MiB (4 writes each; a read per write cost the CLI's thread twice
 * the CPU) by 2 readers per connection. A reader's buffer is free again once the kernel has taken
 * its writes, before their replies: 8 MiB of buffers instead of the 64 MiB in flight, fewer page
 * faults and a working set the CPU's cache holds (the daemon shares the machine's cores with us).
 */
const WRITE_BYTES = 256 * 1024;
const WRITE_DEPTH = 64;
const PIECE_BYTES = 1024 * 1024;
const READERS = 2;
/** Export: bytes per READ and READs in flight per connection (reads are served from the cache or one disk read). */
const READ_BYTES = 2 * 1024 * 1024;
const READ_DEPTH = 4;
/** Block status is asked for this much at a time. */
const MAP_BYTES = 1024 * 1024 * 1024;

export interface CopyResult {
  /** Bytes that carried data (sent on import, written on export). */
  dataBytes: number;
  /** Bytes skipped as zeroes or holes. */
  zeroBytes: number;
}

export interface CopyOptions {
  signal: AbortSignal;
  progress: Progress;
}

function stopped(signal: AbortSignal): void {
  if (signal.aborted) throw new CliError('interrupted');
}

/**
 * Fills buf[0, len) from the file at `pos`; short only at the end of the file (the rest is zeroed).
 * Blocking, on purpose: a read from the page cache takes ~0.1 ms per MiB, and the event loop has
 * nothing else to do meanwhile but take replies, which wait in the socket. fs.promises' reads went
 * through libuv's thread pool: ~5 futex calls and two thread wake-ups per read, 5,600 futex calls
 * per GiB, 0.05-0.08 s more system time, and CPU taken from the daemon on the same two cores.
 */
function readFull(fd: number, buf: Buffer, len: number, pos: number): void {
  let got = 0;
  while (got < len) {
    const n = readSync(fd, buf, got, len - got, pos + got);
    if (n === 0) break;
    got += n;
  }
  if (got < len) buf.fill(0, got, len);
}

let zeroes = Buffer.alloc(0);
/** A buffer of at least n zero bytes (one, grown as needed: compare() only reads it). */
function zeroBuffer(n: number): Buffer {
  if (zeroes.length < n) zeroes = Buffer.alloc(n);
  return zeroes;
}

/** The runs [from, to) of buf[0, len) made of blocks that are not all zeroes. */
function dataRuns(buf: Buffer, len: number, block: number): Array<[number, number]> {
  const zero = zeroBuffer(len);
  // A piece of nothing but zeroes (common in disk images) in one compare.
  if (len === 0 || (buf[0] === 0 && buf[len - 1] === 0 && buf.compare(zero, 0, len, 0, len) === 0)) return [];
  const runs: Array<[number, number]> = [];
  let start = -1;
  for (let i = 0; i < len; i += block) {
    const end = Math.min(i + block, len);
    // Most data blocks differ from zero in their first or last byte: no call into compare for them.
    const isZero = buf[i] === 0 && buf[end - 1] === 0 && buf.compare(zero, 0, end - i, i, end) === 0;
    if (!isZero && start < 0) start = i;
    else if (isZero && start >= 0) {
      runs.push([start, i]);
      start = -1;
    }
  }
  if (start >= 0) runs.push([start, len]);
  return runs;
}

/** `depth` workers per connection (worker i of all); each takes the next piece of work until none is left. */
async function workers(pool: NbdPool, depth: number, fn: (conn: NbdClient, i: number) => Promise<void>): Promise<void> {
  const all = pool.conns.flatMap((c) => Array.from({ length: depth }, () => c));
  await Promise.all(all.map((c, i) => fn(c, i)));
}

/**
 * `n` buffers of `bytes` each, every one starting on a page. The kernel copies file data into a
 * buffer that is not 64-byte aligned at half the speed: reading a 1 GiB image in 4 MiB pieces took
 * 0.24 s of system time into Buffer.allocUnsafe's buffers (malloc's, 16 bytes past a page) and
 * 0.16 s into these (0.13 s and 0.06 s for one buffer, 16 bytes off and aligned). A WebAssembly
 * memory is page-aligned by construction; nothing else in JavaScript says where its bytes are.
 */
function alignedBuffers(n: number, bytes: number): Buffer[] {
  const page = 64 * 1024; // a WebAssembly page
  const stride = Math.ceil(bytes / 4096) * 4096;
  const mem = Buffer.from(new WebAssembly.Memory({ initial: Math.ceil((n * stride) / page) }).buffer);
  return Array.from({ length: n }, (_, i) => mem.subarray(i * stride, i * stride + bytes));
}

export async function importRaw(path: string, pool: NbdPool, blockSize: number, o: CopyOptions): Promise<CopyResult> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    if (size > pool.size) throw new CliError(`${path} (${size} bytes) does not fit in the volume (${pool.size} bytes)`);
    const write = Math.min(WRITE_BYTES, pool.first.maxPayload) - (Math.min(WRITE_BYTES, pool.first.maxPayload) % blockSize);
    const piece = Math.max(write, PIECE_BYTES - (PIECE_BYTES % write));
    let next = 0;
    const result: CopyResult = { dataBytes: 0, zeroBytes: 0 };
    // Replies still to come, per connection, oldest first.
    const replies = new Map(pool.conns.map((c) => [c, [] as Array<Promise<void>>]));
    let failure: unknown = null;
    const bufs = alignedBuffers(pool.conns.length * READERS, piece);
    await workers(
      pool,
      READERS,
      async (conn, i) => {
        const buf = bufs[i]!;
        const mine = replies.get(conn)!;
        for (;;) {
          stopped(o.signal);
          if (failure) throw failure;
          const off = next;
          if (off >= size) return;
          next += piece;
          const len = Math.min(piece, size - off);
          readFull(fh.fd, buf, len, off);
          const sent: Array<Promise<void>> = [];
          let bytes = 0;
          for (const [a, b] of dataRuns(buf, len, blockSize)) {
            for (let p = a; p < b; p += write) {
              while (mine.length >= WRITE_DEPTH) await mine.shift();
              let done!: () => void;
              sent.push(new Promise<void>((r) => (done = r)));
              const reply = conn.write(off + p, buf.subarray(p, Math.min(b, p + write)), done);
              reply.catch((e: unknown) => (failure ??= e));
              mine.push(reply);
            }
            bytes += b - a;
          }
          // The buffer is free once the kernel has its bytes: the replies are awaited later.
          await Promise.all(sent);
          result.dataBytes += bytes;
          result.zeroBytes += len - bytes;
          o.progress.add(len);
        }
      },
    );
    for (const r of replies.values()) await Promise.all(r);
    stopped(o.signal);
    await pool.flush();
    return result;
  } finally {
    await fh.close();
  }
}

/** A piece of the export to read. */
interface Piece {
  offset: number;
  length: number;
}

/** Walks the export's block status, a gigabyte at a time, and hands out its data in pieces. */
async function* dataPieces(conn: NbdClient, size: number, req: number, skipped: (n: number) => void, signal: AbortSignal): AsyncGenerator<Piece> {
  let off = 0;
  while (off < size) {
    stopped(signal);
    const extents = await conn.blockStatus(off, Math.min(MAP_BYTES, size - off));
    if (extents.length === 0) throw new CliError(`the NBD server gave no block status at offset ${off}`);
    for (const e of extents) {
      const len = Math.min(e.length, size - off);
      if (len <= 0) break;
      if (e.zero) skipped(len);
      else for (let p = 0; p < len; p += req) yield { offset: off + p, length: Math.min(req, len - p) };
      off += len;
    }
  }
}

/**
 * `file` is created (or, with `overwrite`, replaced), then `created` is called; it ends up as big
 * as the export, with holes where it reads as zeroes.
 */
export async function exportRaw(path: string, pool: NbdPool, overwrite: boolean, o: CopyOptions, created: () => void): Promise<CopyResult> {
  let fh: FileHandle;
  try {
    fh = await open(path, overwrite ? 'w' : 'wx');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new CliError(`${path} already exists: remove it, or give --force to replace it`);
    throw new CliError(`cannot create ${path} (${code ?? (e as Error).message})`);
  }
  created();
  try {
    const size = pool.size;
    await fh.truncate(size);
    const req = Math.min(READ_BYTES, pool.first.maxPayload);
    const result: CopyResult = { dataBytes: 0, zeroBytes: 0 };
    const skip = (n: number) => {
      result.zeroBytes += n;
      o.progress.add(n);
    };
    const pieces = dataPieces(pool.first, size, req, skip, o.signal);
    await workers(
      pool,
      READ_DEPTH,
      async (conn) => {
        for (;;) {
          stopped(o.signal);
          const { value: piece, done } = await pieces.next();
          if (done) return;
          const data = await conn.read(piece.offset, piece.length);
          let written = 0;
          // Zero test per 4 KiB: data that reads as zeroes stays a hole in the file.
          for (const [a, b] of dataRuns(data, data.length, 4096)) {
            await fh.write(data, a, b - a, piece.offset + a);
            written += b - a;
          }
          result.dataBytes += written;
          result.zeroBytes += piece.length - written;
          o.progress.add(piece.length);
        }
      },
    );
    stopped(o.signal);
    await fh.datasync();
    return result;
  } finally {
    await fh.close();
  }
}
