// A node of a volume's map: a fixed-fanout radix tree node (dm-thin keeps its maps in
// copy-on-write b-trees; a radix tree needs no splits or merges and a chunk index picks
// its path directly, so lookups cost the same at any clone depth).
//
// Level 0 nodes (leaves) hold chunk references; level L > 0 nodes hold child node ids.
// An entry of 0 is a hole. ZERO_CHUNK (1) in a leaf is "allocated, reads as zeroes"
// (WRITE_ZEROES with NO_HOLE) and is never stored. Stored chunk ids start at FIRST_SLOT.

import { ShoalError } from '../errors.js';

export const FANOUT = 256;
export const HOLE = 0;
export const ZERO_CHUNK = 1;
export const FIRST_SLOT = 2;

export interface MapNode {
  readonly id: number;
  readonly level: number;
  /** Child ids (level > 0) or chunk ids (level 0). Float64 holds ids exactly up to 2^53. */
  readonly entries: Float64Array;
}

// Encoding: u8 level, u8 reserved, u16 count, then count × (u8 index, u48 id little-endian).
// Sparse nodes stay small; a full node is 1,796 bytes, under LMDB's inline value limit for 4 KiB pages.
const ENTRY_BYTES = 7;

export function encodeNode(node: MapNode): Buffer {
  let count = 0;
  const e = node.entries;
  for (let i = 0; i < FANOUT; i++) if (e[i] !== 0) count++;
  const buf = Buffer.allocUnsafe(4 + count * ENTRY_BYTES);
  buf[0] = node.level;
  buf[1] = 0;
  buf.writeUInt16LE(count, 2);
  let p = 4;
  for (let i = 0; i < FANOUT; i++) {
    const v = e[i];
    if (v !== 0) {
      // The 48-bit id byte by byte: writeUIntLE's checks and dispatch were half of a commit's encoding.
      const lo = v >>> 0; // ToUint32: the low 32 bits of any integer below 2^53
      const hi = (v / 4294967296) >>> 0;
      buf[p] = i;
      buf[p + 1] = lo;
      buf[p + 2] = lo >>> 8;
      buf[p + 3] = lo >>> 16;
      buf[p + 4] = lo >>> 24;
      buf[p + 5] = hi;
      buf[p + 6] = hi >>> 8;
      p += ENTRY_BYTES;
    }
  }
  return buf;
}

export function decodeNode(id: number, buf: Uint8Array): MapNode {
  const count = decodeEntries(id, buf, scratchIdx, scratchVal);
  const entries = new Float64Array(FANOUT);
  for (let k = 0; k < count; k++) entries[scratchIdx[k]] = scratchVal[k];
  return { id, level: buf[0], entries };
}
const scratchIdx = new Uint8Array(FANOUT);
const scratchVal = new Float64Array(FANOUT);

/**
 * The non-zero entries of an encoded node (the record in b[off, end)), in ascending index order:
 * idx[k] and val[k] for k below the returned count. Reads the record as stored, without a
 * 256-entry array (map-diff.ts).
 */
export function decodeEntries(id: number, b: Uint8Array, idx: Uint8Array, val: Float64Array, off = 0, end = b.length): number {
  if (end - off < 4) throw new ShoalError('corrupt_metadata', `map node ${id} is truncated (${end - off} bytes)`);
  const count = b[off + 2] | (b[off + 3] << 8);
  if (end - off !== 4 + count * ENTRY_BYTES || count > FANOUT) throw new ShoalError('corrupt_metadata', `map node ${id} has a bad length (${end - off} bytes for ${count} entries)`);
  for (let k = 0, p = off + 4; k < count; k++, p += ENTRY_BYTES) {
    idx[k] = b[p];
    val[k] = b[p + 1] + b[p + 2] * 0x100 + b[p + 3] * 0x10000 + b[p + 4] * 0x1000000 + b[p + 5] * 0x100000000 + b[p + 6] * 0x10000000000;
  }
  return count;
}

/** Bytes of the record that starts at b[off] (its header says how many entries follow). */
export function recordLength(b: Uint8Array, off: number): number {
  return 4 + ENTRY_BYTES * (b[off + 2] | (b[off + 3] << 8));
}

/** The non-zero entries of a node in memory, as decodeEntries returns them. */
export function sparseEntries(entries: Float64Array, idx: Uint8Array, val: Float64Array): number {
  let count = 0;
  for (let i = 0; i < FANOUT; i++) {
    const v = entries[i];
    if (v !== 0) {
      idx[count] = i;
      val[count++] = v;
    }
  }
  return count;
}

/** Number of chunks a node at `level` covers. */
function span(level: number): number {
  return FANOUT ** (level + 1);
}

/** Levels a tree needs to map `chunks` chunk indices. */
export function levelsFor(chunks: number): number {
  let levels = 1;
  while (span(levels - 1) < chunks) levels++;
  return levels;
}
