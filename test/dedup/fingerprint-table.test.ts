// The dedup log's native table (addon/src/fingerprint-table.cc) against a Map model: random
// inserts, replacements and conditional deletes across several growths, so backward-shift
// deletion must keep every probe run intact; and its bad-input errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { native } from '../../server/native.js';

test('the fingerprint table agrees with a Map through inserts, replacements and deletes', () => {
  const t = new (native().FingerprintTable)();
  const model = new Map<string, number>();
  const keys: Buffer[] = [];
  for (let i = 0; i < 20_000; i++) keys.push(randomBytes(36));
  // Keys that collide in the hash (same domain and first 8 digest bytes) make long probe runs.
  for (let i = 0; i < 200; i++) {
    const k = Buffer.from(keys[0]);
    k.writeUInt32BE(i, 32);
    keys.push(k);
  }
  let slot = 2;
  for (let round = 0; round < 60_000; round++) {
    const k = keys[Math.floor(Math.random() * keys.length)];
    const s = k.toString('latin1');
    const r = Math.random();
    if (r < 0.55) {
      t.set(k, 0, slot);
      model.set(s, slot++);
    } else {
      const want = model.get(s);
      const guess = want !== undefined && Math.random() < 0.8 ? want : slot + 1000; // sometimes the wrong slot
      const removed = t.deleteIf(k, 0, guess);
      assert.equal(removed, want === guess);
      if (removed) model.delete(s);
    }
  }
  assert.equal(t.size, model.size);
  const all = Buffer.concat(keys);
  const out = new Float64Array(keys.length);
  const hits = t.getMany(all, keys.length, out);
  let expectHits = 0;
  for (let i = 0; i < keys.length; i++) {
    const want = model.get(keys[i].toString('latin1'));
    assert.equal(out[i], want ?? -1, `key ${i}`);
    assert.equal(t.get(all, i * 36), want ?? -1);
    if (want !== undefined) expectHits++;
  }
  assert.equal(hits, expectHits);
  assert.ok(t.bytes >= t.size * 48);
});

test('while a growth drains the old table, every key is found once, replaced in place and deleted from either table', () => {
  const t = new (native().FingerprintTable)();
  // 2^17 + 1 keys: the last insert grows the table (load factor 1/2 of 2^18); the old table is then
  // drained 8 entries per change, so the changes below meet keys on both sides.
  const n = 2 ** 17 + 1;
  const keys = randomBytes(36 * n);
  for (let i = 0; i < n; i++) t.set(keys, i * 36, i + 2);
  const bytesAfterGrowth = t.bytes;
  assert.equal(t.size, n);
  const out = new Float64Array(n);
  assert.equal(t.getMany(keys, n, out), n);
  for (let i = 0; i < n; i++) assert.equal(out[i], i + 2, `key ${i} after the growth`);
  // Delete every fifth key (a wrong slot changes nothing) and replace every third, checking each at
  // once: the first few thousand changes meet moved and unmoved keys of the old table alike.
  let deleted = 0;
  for (let i = 0; i < n; i += 5) {
    assert.equal(t.deleteIf(keys, i * 36, i + 3), false);
    assert.equal(t.deleteIf(keys, i * 36, i + 2), true);
    assert.equal(t.get(keys, i * 36), -1, `key ${i} deleted`);
    deleted++;
  }
  for (let i = 0; i < n; i += 3) {
    t.set(keys, i * 36, 10_000_000 + i);
    assert.equal(t.get(keys, i * 36), 10_000_000 + i, `key ${i} replaced`);
  }
  assert.equal(t.size, n - deleted + Math.ceil(n / 15)); // every fifteenth key was deleted, then set again
  for (let i = 0; i < n; i++) {
    const want = i % 3 === 0 ? 10_000_000 + i : i % 5 === 0 ? -1 : i + 2;
    assert.equal(t.get(keys, i * 36), want, `key ${i}`);
  }
  // The drain is over (each change moved up to 8 old entries): the old table is gone.
  assert.ok(t.bytes < bytesAfterGrowth, `the old table was freed (${t.bytes} < ${bytesAfterGrowth} bytes)`);
});

test('the fingerprint table refuses bad arguments with an error, not a crash', () => {
  const t = new (native().FingerprintTable)();
  const k = randomBytes(36);
  assert.throws(() => t.get(k, 1), RangeError); // 36 bytes from offset 1 run past the end
  assert.throws(() => t.get(k, -1), TypeError); // not an offset at all
  assert.throws(() => (t as any).get('x', 0), TypeError);
  assert.throws(() => t.set(k, 0, 0), TypeError); // slots are positive integers
  assert.throws(() => t.set(k, 0, 1.5), TypeError);
  assert.throws(() => t.getMany(k, 2, new Float64Array(2)), RangeError); // 2 keys need 72 bytes
  assert.throws(() => (t as any).getMany(k, 1, new Uint8Array(8)), TypeError);
  assert.equal(t.size, 0);
});

test('logMany maps the chosen keys and writes their log entries, as set() and the log format would', () => {
  const t = new (native().FingerprintTable)();
  const keys = randomBytes(36 * 3000);
  const which = new Uint32Array(2000);
  const slots = new Float64Array(2000);
  for (let i = 0; i < 2000; i++) {
    which[i] = (i * 7) % 3000; // every 7th key, wrapping: a permutation of part of them
    slots[i] = 2 ** 40 + i; // past 32 bits: the 6-byte slot field must carry them
  }
  const log = Buffer.alloc(10 + 2000 * 42);
  const end = t.logMany(keys, which, slots, 2000, log, 10);
  assert.equal(end, 10 + 2000 * 42);
  assert.equal(t.size, 2000);
  for (let i = 0; i < 2000; i++) {
    const k = which[i] * 36;
    assert.equal(t.get(keys, k), slots[i]);
    const e = 10 + i * 42;
    assert.deepEqual(log.subarray(e, e + 36), keys.subarray(k, k + 36));
    assert.equal(log.readUIntBE(e + 36, 6), slots[i]);
  }
  assert.equal(log.readUInt32BE(0), 0, 'nothing written before logOff');
});

test('logMany refuses bad arguments and changes nothing', () => {
  const t = new (native().FingerprintTable)();
  const keys = randomBytes(72);
  const log = Buffer.alloc(84);
  const which = new Uint32Array([0, 1]);
  assert.throws(() => t.logMany(keys, which, new Float64Array([2, 3]), 2, log, 1), RangeError); // no room
  assert.throws(() => t.logMany(keys, new Uint32Array([0, 2]), new Float64Array([2, 3]), 2, log, 0), RangeError); // key 2 is past the end
  assert.throws(() => t.logMany(keys, which, new Float64Array([2, 0]), 2, log, 0), RangeError); // slots are positive
  assert.throws(() => t.logMany(keys, which, new Float64Array([2, 2 ** 48]), 2, log, 0), RangeError); // 48 bits at most
  assert.throws(() => t.logMany(keys, which, new Float64Array([2]), 2, log, 0), RangeError); // n past slots
  assert.throws(() => (t as any).logMany(keys, [0, 1], new Float64Array([2, 3]), 2, log, 0), TypeError);
  assert.equal(t.size, 0);
  assert.ok(log.equals(Buffer.alloc(84)));
});
