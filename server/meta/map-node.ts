// A node of a volume's map: a fixed-fanout radix tree node (dm-thin keeps its maps in
// copy-on-write b-trees; a radix tree needs no splits or merges and a chunk index picks
// its path directly, so lookups cost the same at any clone depth).
//
// Level 0 nodes (leaves) hold chunk references; level L > 0 nodes hold child node ids.
// An entry of 0 is a hole. ZERO_CHUNK (1) in a leaf is "allocated, reads as zeroes"
// (WRITE_ZEROES with NO_HOLE) and is never stored. Stored chunk ids start at FIRST_SLOT.

import { ShoalError } from '../errors.js';

export const FANOUT = 256;
export const FANOUT_BITS = 8;
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
      buf[p] = i;
      buf.writeUIntLE(v, p + 1, 6);
      p += ENTRY_BYTES;
    }
  }
  return buf;
}

export function decodeNode(id: number, buf: Uint8Array): MapNode {
  const b = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  if (b.length < 4) throw new ShoalError('corrupt_metadata', `map node ${id} is truncated (${b.length} bytes)`);
  const level = b[0];
  const count = b.readUInt16LE(2);
  if (b.length !== 4 + count * ENTRY_BYTES || count > FANOUT)
    throw new ShoalError('corrupt_metadata', `map node ${id} has a bad length (${b.length} bytes for ${count} entries)`);
  const entries = new Float64Array(FANOUT);
  let p = 4;
  for (let k = 0; k < count; k++) {
    entries[b[p]] = b.readUIntLE(p + 1, 6);
    p += ENTRY_BYTES;
  }
  return { id, level, entries };
}

/** Number of chunks a node at `level` covers. */
export function span(level: number): number {
  return FANOUT ** (level + 1);
}

/** Levels a tree needs to map `chunks` chunk indices. */
export function levelsFor(chunks: number): number {
  let levels = 1;
  while (span(levels - 1) < chunks) levels++;
  return levels;
}
