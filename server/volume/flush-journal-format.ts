// The flush journal's records (flush-journal.ts says what they are for). A record is the volume
// operations one FLUSH made durable, in the order they completed:
//
//   record header (32 bytes, little-endian)
//     u32 magic 'SHFJ' · u32 crc32 of bytes [8, 32 + payload) · f64 record sequence ·
//     u32 payload bytes · u32 operations · u64 reserved (0)
//   then per operation
//     u8 kind (1 write, 2 trim, 3 zero, 4 snapshot, 5 clone) · u8 flags (1: zero without holes) ·
//     u16 volume name bytes · u16 createdAt bytes · u16 reserved · f64 operation number · f64 offset ·
//     f64 length · the volume name, its createdAt (UTF-8), and then `length` bytes: for a write its
//     data; for a snapshot or a clone of the volume the JSON of a VolumeOp (offset is 0)
//
// A daemon older than the snapshot and clone operations stops its replay at the first record that
// holds one, as at a torn record: stop the daemon cleanly (its last commit covers the whole journal)
// before going back to such a version.
//
// Records start on 512-byte sector boundaries, so writing one never changes a sector an earlier
// record (already acknowledged) lives in: the page the two share goes to the disk again, but with
// that record's bytes unchanged, so a write torn by a power cut can only damage the record being
// written, and its checksum then ends the replay there.
import { crc32 } from 'node:zlib';

const JOURNAL_ALIGN = 512;
const MAGIC = 0x4a464853; // 'SHFJ' read little-endian
const HEADER = 32;
const OP_HEADER = 40;

export type JournalOpKind = 'write' | 'trim' | 'zero' | 'snapshot' | 'clone';
const KIND_CODE: Record<JournalOpKind, number> = { write: 1, trim: 2, zero: 3, snapshot: 4, clone: 5 };
const KIND_OF = [undefined, 'write', 'trim', 'zero', 'snapshot', 'clone'] as const;

/**
 * A change to a volume's metadata journaled among its writes (snapshot-operations.ts): a snapshot of
 * it, or a clone of it (of the volume itself, or of one of its snapshots).
 */
export type VolumeOp = { kind: 'snapshot'; name: string; createdAt: string } | { kind: 'clone'; name: string; createdAt: string; snapshot?: string };

/** Whether an operation of this kind carries `length` bytes after its names. */
function carriesData(kind: JournalOpKind): boolean {
  return kind !== 'trim' && kind !== 'zero';
}

export interface JournalOp {
  kind: JournalOpKind;
  /** Monotonic over the daemon's lifetime and across restarts (the superblock keeps the last one committed). */
  opNo: number;
  /** The volume, by name and creation time: a volume deleted and made again under the name is another. */
  volume: string;
  createdAt: string;
  offset: number;
  length: number;
  /** zero: allocated zeroes (NBD_CMD_FLAG_NO_HOLE). */
  noHole: boolean;
  /** write: the bytes (length of them); snapshot, clone: the JSON of its VolumeOp (length bytes). */
  data: Buffer | null;
}

export interface JournalRecord {
  seq: number;
  ops: JournalOp[];
  /** Bytes the record takes in the file, aligned. */
  size: number;
}

function opBytes(op: JournalOp): number {
  return OP_HEADER + Buffer.byteLength(op.volume) + Buffer.byteLength(op.createdAt) + (carriesData(op.kind) ? op.length : 0);
}

/** Bytes a record of these operations takes in the file. */
export function recordSize(ops: readonly JournalOp[]): number {
  let n = HEADER;
  for (const op of ops) n += opBytes(op);
  return Math.ceil(n / JOURNAL_ALIGN) * JOURNAL_ALIGN;
}

/**
 * One record of `ops`, padded with zeroes to its aligned size: written at the start of `into` (at least
 * recordSize(ops) bytes; the journal's page-aligned buffer for O_DIRECT writes), or into a new Buffer.
 */
export function encodeRecord(seq: number, ops: readonly JournalOp[], into?: Buffer): Buffer {
  const size = recordSize(ops);
  const b = into ? into.subarray(0, size).fill(0) : Buffer.alloc(size);
  let p = HEADER;
  for (const op of ops) {
    b[p] = KIND_CODE[op.kind];
    b[p + 1] = op.noHole ? 1 : 0;
    const nameLen = b.write(op.volume, p + OP_HEADER, 'utf8');
    const createdLen = b.write(op.createdAt, p + OP_HEADER + nameLen, 'utf8');
    b.writeUInt16LE(nameLen, p + 2);
    b.writeUInt16LE(createdLen, p + 4);
    b.writeDoubleLE(op.opNo, p + 8);
    b.writeDoubleLE(op.offset, p + 16);
    b.writeDoubleLE(op.length, p + 24);
    p += OP_HEADER + nameLen + createdLen;
    if (carriesData(op.kind)) {
      op.data!.copy(b, p, 0, op.length);
      p += op.length;
    }
  }
  b.writeUInt32LE(MAGIC, 0);
  b.writeDoubleLE(seq, 8);
  b.writeUInt32LE(p - HEADER, 16);
  b.writeUInt32LE(ops.length, 20);
  b.writeUInt32LE(crc32(b.subarray(8, p)), 4);
  return b;
}

/**
 * The records at the start of `file`, in order, while each is whole (magic, length and checksum)
 * and follows the one before (sequence + 1). Whatever follows is a torn write or older records
 * that the commit after them covered.
 */
export function* decodeRecords(file: Buffer): Generator<JournalRecord> {
  let at = 0;
  let prev = -1;
  while (at + HEADER <= file.length) {
    if (file.readUInt32LE(at) !== MAGIC) return;
    const seq = file.readDoubleLE(at + 8);
    const payload = file.readUInt32LE(at + 16);
    const count = file.readUInt32LE(at + 20);
    const end = at + HEADER + payload;
    if (end > file.length || (prev >= 0 && seq !== prev + 1)) return;
    if (crc32(file.subarray(at + 8, end)) !== file.readUInt32LE(at + 4)) return;
    const ops: JournalOp[] = [];
    let p = at + HEADER;
    for (let i = 0; i < count; i++) {
      if (p + OP_HEADER > end) return;
      const kind = KIND_OF[file[p]];
      const nameLen = file.readUInt16LE(p + 2);
      const createdLen = file.readUInt16LE(p + 4);
      const length = file.readDoubleLE(p + 24);
      const carries = kind !== undefined && carriesData(kind);
      const dataLen = carries ? length : 0;
      const body = p + OP_HEADER;
      if (kind === undefined || body + nameLen + createdLen + dataLen > end) return;
      ops.push({
        kind,
        noHole: file[p + 1] === 1,
        opNo: file.readDoubleLE(p + 8),
        offset: file.readDoubleLE(p + 16),
        length,
        volume: file.toString('utf8', body, body + nameLen),
        createdAt: file.toString('utf8', body + nameLen, body + nameLen + createdLen),
        data: carries ? file.subarray(body + nameLen + createdLen, body + nameLen + createdLen + dataLen) : null,
      });
      p = body + nameLen + createdLen + dataLen;
    }
    const size = Math.ceil((end - at) / JOURNAL_ALIGN) * JOURNAL_ALIGN;
    yield { seq, ops, size };
    prev = seq;
    at += size;
  }
}
