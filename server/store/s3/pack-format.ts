// A pack: one immutable S3 object holding many chunks, so a volume of millions of 4 KiB chunks is not
// millions of objects (each PUT costs a request and a fee, each object an index entry in the bucket).
//
//   header  32 B   "SHOALPAK", version u16, reserved u16, chunk count u32, data length u64, header CRC32 u32, reserved u32
//   data           the chunks' bytes back to back, from byte 32
//   index   24 B × count   chunk id u64, offset u32, length u32, CRC32 of the chunk u32, reserved u32
//   trailer 32 B   index offset u64, chunk count u32, index CRC32 u32, pack length u64, "SHOALEND"
//
// All numbers little-endian. The index is at the end so a writer can stream chunks and then describe them;
// a reader that knows a chunk's offset and length (from the metadata) reads just that range and checks its
// CRC32, and one that knows nothing reads the trailer (the last 32 bytes), then the index. CRC32 detects
// damage, not tampering; chunk identity is the metadata's business (fingerprints are BLAKE3).
import { crc32 } from 'node:zlib';
import { ShoalError } from '../../errors.js';

const PACK_VERSION = 1;
export const HEADER_BYTES = 32;
export const TRAILER_BYTES = 32;
export const INDEX_ENTRY_BYTES = 24;
const HEAD_MAGIC = Buffer.from('SHOALPAK');
const TAIL_MAGIC = Buffer.from('SHOALEND');
// Offsets and lengths are u32: far above the 16 MiB packs are made of, and refused above.
const MAX_PACK_BYTES = 2 ** 32 - 1;

export interface PackChunk {
  id: number;
  data: Buffer;
}

export interface PackEntry {
  id: number;
  offset: number; // from the start of the pack
  length: number;
  crc32: number;
}

export interface PackTrailer {
  indexOffset: number;
  count: number;
  indexCrc32: number;
  packLength: number;
}

/** The encoded size of a pack holding chunks of these lengths. */
export function packSize(count: number, dataBytes: number): number {
  return HEADER_BYTES + dataBytes + count * INDEX_ENTRY_BYTES + TRAILER_BYTES;
}

/** Encodes chunks (distinct ids, non-empty data) into one pack. */
export function encodePack(chunks: readonly PackChunk[]): { pack: Buffer; entries: PackEntry[] } {
  if (chunks.length === 0) throw new ShoalError('invalid_request', 'a pack needs at least one chunk.');
  const ids = new Set<number>();
  let dataBytes = 0;
  for (const c of chunks) {
    if (!Number.isSafeInteger(c.id) || c.id < 0) throw new ShoalError('invalid_request', `chunk id ${c.id} is not a non-negative integer.`);
    if (ids.has(c.id)) throw new ShoalError('invalid_request', `chunk ${c.id} is twice in one pack.`);
    if (c.data.length === 0) throw new ShoalError('invalid_request', `chunk ${c.id} is empty.`);
    ids.add(c.id);
    dataBytes += c.data.length;
  }
  const total = packSize(chunks.length, dataBytes);
  if (total > MAX_PACK_BYTES) throw new ShoalError('invalid_request', `a pack of ${total} bytes is over the ${MAX_PACK_BYTES}-byte limit.`);

  const pack = Buffer.allocUnsafe(total);
  encodeHeader(chunks.length, dataBytes).copy(pack, 0);
  const entries: PackEntry[] = [];
  let at = HEADER_BYTES;
  for (const c of chunks) {
    c.data.copy(pack, at);
    entries.push({ id: c.id, offset: at, length: c.data.length, crc32: crc32(c.data) });
    at += c.data.length;
  }
  encodeIndex(entries, at).copy(pack, at);
  return { pack, entries };
}

/** A pack's header: for `count` chunks of `dataBytes` in all. */
export function encodeHeader(count: number, dataBytes: number): Buffer {
  const h = Buffer.allocUnsafe(HEADER_BYTES);
  HEAD_MAGIC.copy(h, 0);
  h.writeUInt16LE(PACK_VERSION, 8);
  h.writeUInt16LE(0, 10);
  h.writeUInt32LE(count, 12);
  h.writeBigUInt64LE(BigInt(dataBytes), 16);
  h.writeUInt32LE(crc32(h.subarray(0, 24)), 24);
  h.writeUInt32LE(0, 28);
  return h;
}

/**
 * A pack's index and trailer, to be placed at `indexOffset` (right after the data): for a writer that lays
 * the chunks out itself (a pack filled in place in a local file).
 */
export function encodeIndex(entries: readonly PackEntry[], indexOffset: number): Buffer {
  const b = Buffer.allocUnsafe(entries.length * INDEX_ENTRY_BYTES + TRAILER_BYTES);
  let at = 0;
  for (const e of entries) {
    b.writeBigUInt64LE(BigInt(e.id), at);
    b.writeUInt32LE(e.offset, at + 8);
    b.writeUInt32LE(e.length, at + 12);
    b.writeUInt32LE(e.crc32, at + 16);
    b.writeUInt32LE(0, at + 20);
    at += INDEX_ENTRY_BYTES;
  }
  b.writeBigUInt64LE(BigInt(indexOffset), at);
  b.writeUInt32LE(entries.length, at + 8);
  b.writeUInt32LE(crc32(b.subarray(0, at)), at + 12);
  b.writeBigUInt64LE(BigInt(indexOffset + b.length), at + 16);
  TAIL_MAGIC.copy(b, at + 24);
  return b;
}

/** Checks a pack's header (its first 32 bytes). */
export function parseHeader(header: Buffer, what: string): { count: number; dataBytes: number } {
  if (header.length < HEADER_BYTES || !header.subarray(0, 8).equals(HEAD_MAGIC)) throw corrupt(what, 'it does not start with a Shoal pack header');
  if (header.readUInt32LE(24) !== crc32(header.subarray(0, 24))) throw corrupt(what, 'its header checksum does not match');
  const version = header.readUInt16LE(8);
  if (version !== PACK_VERSION) throw corrupt(what, `it is pack format version ${version}; this Shoal reads version ${PACK_VERSION}`);
  return { count: header.readUInt32LE(12), dataBytes: safe(header.readBigUInt64LE(16), what) };
}

/** Reads a pack's trailer: its last 32 bytes, given the pack's length. */
export function parseTrailer(tail: Buffer, packLength: number, what: string): PackTrailer {
  if (tail.length !== TRAILER_BYTES || !tail.subarray(24).equals(TAIL_MAGIC)) throw corrupt(what, 'it does not end with a Shoal pack trailer (truncated?)');
  const t: PackTrailer = {
    indexOffset: safe(tail.readBigUInt64LE(0), what),
    count: tail.readUInt32LE(8),
    indexCrc32: tail.readUInt32LE(12),
    packLength: safe(tail.readBigUInt64LE(16), what),
  };
  if (t.packLength !== packLength) throw corrupt(what, `its trailer says ${t.packLength} bytes, the object has ${packLength}`);
  if (t.count === 0 || t.indexOffset < HEADER_BYTES || t.indexOffset + t.count * INDEX_ENTRY_BYTES + TRAILER_BYTES !== packLength) {
    throw corrupt(what, 'its trailer places the index outside the pack');
  }
  return t;
}

/** Decodes and checks the index (count × 24 bytes at trailer.indexOffset): every chunk inside the data, none overlapping. */
export function parseIndex(index: Buffer, trailer: PackTrailer, what: string): PackEntry[] {
  if (index.length !== trailer.count * INDEX_ENTRY_BYTES) throw corrupt(what, 'its index is cut short');
  if (crc32(index) !== trailer.indexCrc32) throw corrupt(what, 'its index checksum does not match');
  const entries: PackEntry[] = [];
  let next = HEADER_BYTES;
  for (let i = 0; i < trailer.count; i++) {
    const at = i * INDEX_ENTRY_BYTES;
    const e: PackEntry = { id: safe(index.readBigUInt64LE(at), what), offset: index.readUInt32LE(at + 8), length: index.readUInt32LE(at + 12), crc32: index.readUInt32LE(at + 16) };
    // The writer lays chunks out in index order, back to back: anything else is damage.
    if (e.offset !== next || e.length === 0 || e.offset + e.length > trailer.indexOffset) throw corrupt(what, `index entry ${i} (chunk ${e.id}) points outside its place in the data`);
    next = e.offset + e.length;
    entries.push(e);
  }
  if (next !== trailer.indexOffset) throw corrupt(what, 'its index does not cover the data');
  return entries;
}

/** Decodes a whole pack: header, trailer and index agree, and every chunk's checksum matches. */
export function decodePack(pack: Buffer, what: string): PackEntry[] {
  if (pack.length < HEADER_BYTES + TRAILER_BYTES) throw corrupt(what, `${pack.length} bytes is too short for a pack`);
  const header = parseHeader(pack.subarray(0, HEADER_BYTES), what);
  const trailer = parseTrailer(pack.subarray(pack.length - TRAILER_BYTES), pack.length, what);
  const entries = parseIndex(pack.subarray(trailer.indexOffset, pack.length - TRAILER_BYTES), trailer, what);
  if (header.count !== trailer.count || header.dataBytes !== trailer.indexOffset - HEADER_BYTES) throw corrupt(what, 'its header and trailer disagree');
  for (const e of entries) verifyChunk(pack.subarray(e.offset, e.offset + e.length), e, what);
  return entries;
}

/**
 * Throws corrupt_pack unless `crcs` (4 bytes little-endian per chunk, as the addon's crc32Chunks gives them)
 * match the index entries of chunks first.. .
 */
export function verifyCrcs(crcs: Buffer, entries: readonly PackEntry[], first: number, what: string): void {
  for (let k = 0; k < crcs.length / 4; k++) {
    const e = entries[first + k];
    if (crcs.readUInt32LE(k * 4) !== e.crc32) throw checksumMismatch(e, what);
  }
}

/** Throws corrupt_pack if `data` (the chunk's bytes as read) does not match its index entry. */
export function verifyChunk(data: Buffer, entry: PackEntry, what: string): void {
  if (data.length !== entry.length) throw corrupt(what, `chunk ${entry.id} came back as ${data.length} bytes, not ${entry.length}`);
  if (crc32(data) !== entry.crc32) throw checksumMismatch(entry, what);
}

function checksumMismatch(entry: PackEntry, what: string): ShoalError {
  return corrupt(what, `chunk ${entry.id} (at ${entry.offset}) does not match its checksum`);
}

function safe(n: bigint, what: string): number {
  if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw corrupt(what, `it holds a number too large (${n})`);
  return Number(n);
}

function corrupt(what: string, why: string): ShoalError {
  return new ShoalError('corrupt_pack', `${what} is not a valid pack: ${why}.`);
}
