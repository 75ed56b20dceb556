// The pack format (server/store/s3/pack-format.ts): round trips, reading from the tail alone, and
// every kind of damage refused with corrupt_pack and a sentence saying what is wrong.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import {
  decodePack,
  encodePack,
  parseHeader,
  parseIndex,
  parseTrailer,
  verifyChunk,
  verifyCrcs,
  HEADER_BYTES,
  INDEX_ENTRY_BYTES,
  TRAILER_BYTES,
  type PackChunk,
} from '../../server/store/s3/pack-format.js';
import { ShoalError } from '../../server/errors.js';
import { native } from '../../server/native.js';

const WHAT = 's3://b/p/packs/00000001/0000000000.pack';

const corrupt = (re: RegExp) => (e: unknown) => {
  assert.ok(e instanceof ShoalError, `expected a ShoalError, got ${e}`);
  assert.equal(e.code, 'corrupt_pack');
  assert.equal(e.nbdErrno, 'EIO');
  assert.match(e.message, new RegExp(`^s3://b/p/packs/00000001/0000000000\\.pack is not a valid pack: .*${re.source}`));
  return true;
};

function sampleChunks(): PackChunk[] {
  // Mixed sizes (4 KiB chunks, a 1 MiB one, odd lengths) and ids up to 2^53-1.
  return [
    { id: 0, data: randomBytes(4096) },
    { id: 7, data: randomBytes(1 << 20) },
    { id: 123_456_789, data: randomBytes(1) },
    { id: Number.MAX_SAFE_INTEGER, data: randomBytes(4093) },
    { id: 42, data: Buffer.alloc(4096) },
  ];
}

test('a pack decodes to the chunks it was made of, each at its offset', () => {
  const chunks = sampleChunks();
  const { pack, entries } = encodePack(chunks);
  const dataBytes = chunks.reduce((n, c) => n + c.data.length, 0);
  assert.equal(pack.length, HEADER_BYTES + dataBytes + chunks.length * INDEX_ENTRY_BYTES + TRAILER_BYTES);
  assert.equal(pack.subarray(0, 8).toString(), 'SHOALPAK');
  assert.equal(pack.subarray(pack.length - 8).toString(), 'SHOALEND');
  const decoded = decodePack(pack, WHAT);
  assert.deepEqual(decoded, entries);
  assert.deepEqual(
    decoded.map((e) => e.id),
    chunks.map((c) => c.id),
  );
  for (const [i, e] of decoded.entries()) assert.ok(pack.subarray(e.offset, e.offset + e.length).equals(chunks[i]!.data), `chunk ${e.id}`);
});

test('a reader that has only the tail finds the index; one that has only a range checks that chunk', () => {
  const chunks = sampleChunks();
  const { pack } = encodePack(chunks);
  // As from S3: the last 32 bytes, then the index range they point at.
  const trailer = parseTrailer(pack.subarray(pack.length - TRAILER_BYTES), pack.length, WHAT);
  assert.equal(trailer.count, chunks.length);
  const entries = parseIndex(pack.subarray(trailer.indexOffset, trailer.indexOffset + trailer.count * INDEX_ENTRY_BYTES), trailer, WHAT);
  assert.deepEqual(parseHeader(pack.subarray(0, HEADER_BYTES), WHAT), { count: chunks.length, dataBytes: trailer.indexOffset - HEADER_BYTES });
  const e = entries[3]!;
  const range = pack.subarray(e.offset, e.offset + e.length);
  verifyChunk(range, e, WHAT);
  assert.ok(range.equals(chunks[3]!.data));
});

test('a flipped byte anywhere in the pack is found', () => {
  const { pack, entries } = encodePack(sampleChunks());
  const flip = (at: number) => {
    const bad = Buffer.from(pack);
    bad[at]! ^= 0x40;
    return bad;
  };
  const e = entries[1]!;
  assert.throws(() => decodePack(flip(e.offset + 1000), WHAT), corrupt(/chunk 7 \(at \d+\) does not match its checksum\.$/));
  assert.throws(() => verifyChunk(flip(e.offset + 5).subarray(e.offset, e.offset + e.length), e, WHAT), corrupt(/chunk 7/));
  assert.throws(() => decodePack(flip(0), WHAT), corrupt(/it does not start with a Shoal pack header\.$/));
  assert.throws(() => decodePack(flip(13), WHAT), corrupt(/its header checksum does not match\.$/));
  const indexOffset = pack.length - TRAILER_BYTES - entries.length * INDEX_ENTRY_BYTES;
  assert.throws(() => decodePack(flip(indexOffset + 2), WHAT), corrupt(/its index checksum does not match\.$/));
  assert.throws(() => decodePack(flip(pack.length - 1), WHAT), corrupt(/it does not end with a Shoal pack trailer/));
  assert.throws(() => decodePack(flip(pack.length - TRAILER_BYTES + 1), WHAT), corrupt(/its trailer says|its trailer places the index outside/));
  assert.throws(() => decodePack(flip(pack.length - TRAILER_BYTES + 12), WHAT), corrupt(/its index checksum does not match/));
});

test('truncated, padded, foreign and future packs are refused', () => {
  const { pack } = encodePack(sampleChunks());
  assert.throws(() => decodePack(pack.subarray(0, pack.length - 1), WHAT), corrupt(/trailer \(truncated\?\)/));
  assert.throws(() => decodePack(pack.subarray(0, 4200), WHAT), corrupt(/trailer/));
  assert.throws(() => decodePack(pack.subarray(0, 10), WHAT), corrupt(/10 bytes is too short for a pack\.$/));
  assert.throws(() => decodePack(Buffer.concat([pack, Buffer.alloc(1)]), WHAT), corrupt(/trailer/));
  assert.throws(() => parseTrailer(pack.subarray(pack.length - TRAILER_BYTES), pack.length + 5, WHAT), corrupt(/its trailer says \d+ bytes, the object has \d+\.$/));
  assert.throws(() => decodePack(Buffer.alloc(4096, 0x41), WHAT), corrupt(/does not start with a Shoal pack header/));

  // A pack from a later format version, intact otherwise (its header checksum recomputed).
  const future = Buffer.from(pack);
  future.writeUInt16LE(2, 8);
  future.writeUInt32LE(crc32(future.subarray(0, 24)), 24);
  assert.throws(() => decodePack(future, WHAT), corrupt(/it is pack format version 2; this Shoal reads version 1\.$/));
});

test('an index whose entries do not tile the data is refused, even with a matching checksum', () => {
  const { pack, entries } = encodePack(sampleChunks());
  const trailerAt = pack.length - TRAILER_BYTES;
  const indexOffset = trailerAt - entries.length * INDEX_ENTRY_BYTES;
  const forged = Buffer.from(pack);
  forged.writeUInt32LE(entries[2]!.offset + 1, indexOffset + 2 * INDEX_ENTRY_BYTES + 8); // chunk 123456789 one byte later
  forged.writeUInt32LE(crc32(forged.subarray(indexOffset, trailerAt)), trailerAt + 12);
  assert.throws(() => decodePack(forged, WHAT), corrupt(/index entry 2 \(chunk 123456789\) points outside its place in the data\.$/));
});

test('bad input to the encoder is refused and makes nothing', () => {
  const invalid = (re: RegExp) => (e: unknown) => e instanceof ShoalError && e.code === 'invalid_request' && re.test(e.message);
  assert.throws(() => encodePack([]), invalid(/at least one chunk/));
  assert.throws(() => encodePack([{ id: 1, data: Buffer.alloc(1) }, { id: 1, data: Buffer.alloc(1) }]), invalid(/chunk 1 is twice in one pack/));
  assert.throws(() => encodePack([{ id: -1, data: Buffer.alloc(1) }]), invalid(/not a non-negative integer/));
  assert.throws(() => encodePack([{ id: 1.5, data: Buffer.alloc(1) }]), invalid(/not a non-negative integer/));
  assert.throws(() => encodePack([{ id: 3, data: Buffer.alloc(0) }]), invalid(/chunk 3 is empty/));
});

test('a ranged read checked on the thread pool (crc32Chunks, verifyCrcs) passes whole and refuses a flipped byte', async () => {
  const cs = 4096;
  const chunks: PackChunk[] = Array.from({ length: 6 }, (_, i) => ({ id: 100 + i, data: randomBytes(cs) }));
  const { pack, entries } = encodePack(chunks);
  // Chunks 2..5 as one GET brings them: back to back from chunk 2's offset.
  const range = Buffer.from(pack.subarray(entries[2]!.offset, entries[5]!.offset + cs));
  verifyCrcs(await native().crc32Chunks(range, cs), entries, 2, WHAT);
  range[2 * cs + 17]! ^= 0x01; // inside chunk 4
  const crcs = await native().crc32Chunks(range, cs);
  assert.throws(() => verifyCrcs(crcs, entries, 2, WHAT), corrupt(/chunk 104 \(at \d+\) does not match its checksum\.$/));
});
