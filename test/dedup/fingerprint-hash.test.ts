// The addon's chunk fingerprints: the SIMD-wide path (leaves of many chunks per blake3_hash_many
// call) must give exactly the digests of one BLAKE3 hasher per chunk, for every chunk size the
// store allows, with and without the domain prefix of the dedup key, sync and async; and
// BLAKE3-256 itself must be right (the official test vector of an empty input is not a chunk,
// so check a known digest of 1 KiB of the spec's input pattern instead).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { native } from '../../server/native.js';

const KiB = 1024;

test('wide fingerprints equal one-hasher-per-chunk fingerprints at every chunk size', async () => {
  const a = native();
  for (const cs of [4 * KiB, 8 * KiB, 16 * KiB, 64 * KiB, 256 * KiB, 1024 * KiB]) {
    // 70 chunks: more than one group of 64, and a group of 6.
    const n = cs >= 256 * KiB ? 5 : 70;
    const data = randomBytes(n * cs);
    const ref = a.fingerprintReference(data, cs);
    assert.equal(ref.length, n * 32);
    assert.deepEqual(a.fingerprintSync(data, cs), ref, `sync, ${cs}`);
    assert.deepEqual(await a.fingerprint(data, cs), ref, `async, ${cs}`);
    const keyed = await a.fingerprint(data, cs, 0x01020304);
    assert.equal(keyed.length, n * 36);
    for (let i = 0; i < n; i++) {
      assert.equal(keyed.readUInt32BE(i * 36), 0x01020304);
      assert.deepEqual(keyed.subarray(i * 36 + 4, i * 36 + 36), ref.subarray(i * 32, i * 32 + 32), `key ${i} at ${cs}`);
    }
    // Each digest is that chunk's alone: hashing the chunk by itself gives the same.
    assert.deepEqual(a.fingerprintSync(data.subarray(cs, 2 * cs), cs), ref.subarray(32, 64));
  }
});

test('BLAKE3-256 matches the reference test vector for a 1024-byte input', () => {
  // BLAKE3 test_vectors.json: input of length 1024 where byte i is i % 251.
  const input = Buffer.alloc(1024);
  for (let i = 0; i < input.length; i++) input[i] = i % 251;
  const hex = native().fingerprintSync(input, 1024).toString('hex');
  assert.equal(hex, '42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7');
  // 2048 bytes (a parent node): 'e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a'
  const input2 = Buffer.alloc(2048);
  for (let i = 0; i < input2.length; i++) input2[i] = i % 251;
  assert.equal(native().fingerprintSync(input2, 2048).toString('hex'), 'e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a');
});

test('fingerprintMany gives each batch the keys fingerprintSync gives it, in its own domain', async () => {
  const a = native();
  const cs = 4 * KiB;
  const batches = [randomBytes(64 * cs), randomBytes(cs), randomBytes(70 * cs), randomBytes(3 * cs)];
  const domains = new Float64Array([1, 7, 0, 4294967295]);
  const all = await a.fingerprintMany(batches, domains, cs);
  let off = 0;
  batches.forEach((b, i) => {
    const want = a.fingerprintSync(b, cs, domains[i]);
    assert.deepEqual(all.subarray(off, off + want.length), want, `batch ${i}`);
    off += want.length;
  });
  assert.equal(all.length, off);
  assert.equal((await a.fingerprintMany([], new Float64Array(0), cs)).length, 0);
});

test('fingerprintMany rejects bad arguments with a TypeError, never a crash', () => {
  const a = native();
  const one = [Buffer.alloc(4096)];
  assert.throws(() => (a.fingerprintMany as any)('x', new Float64Array(1), 4096), TypeError);
  assert.throws(() => a.fingerprintMany(one, new Float64Array(0), 4096), TypeError); // a domain short
  assert.throws(() => a.fingerprintMany(one, new Float64Array([-1]), 4096), TypeError);
  assert.throws(() => a.fingerprintMany(one, new Float64Array([1]), 0), TypeError);
  assert.throws(() => (a.fingerprintMany as any)(['not bytes'], new Float64Array([1]), 4096), TypeError);
  assert.throws(() => (a.fingerprintMany as any)(one, new Uint32Array([1]), 4096), TypeError);
});

test('fingerprintInto writes the keys fingerprintSync gives, at the offset, for one to five chunks', () => {
  const a = native();
  const cs = 4 * KiB;
  for (let n = 1; n <= 5; n++) {
    const data = randomBytes(n * cs);
    const out = Buffer.alloc(7 + n * 36 + 3, 0xee);
    a.fingerprintInto(data, cs, 42, out, 7);
    assert.deepEqual(out.subarray(7, 7 + n * 36), a.fingerprintSync(data, cs, 42), `${n} chunks`);
    // Nothing outside its place is touched.
    assert.ok(out.subarray(0, 7).every((b) => b === 0xee) && out.subarray(7 + n * 36).every((b) => b === 0xee));
    // Each chunk by itself, into its own place: the same keys.
    const each = Buffer.alloc(n * 36);
    for (let i = 0; i < n; i++) a.fingerprintInto(data.subarray(i * cs, (i + 1) * cs), cs, 42, each, i * 36);
    assert.deepEqual(each, out.subarray(7, 7 + n * 36));
  }
});
