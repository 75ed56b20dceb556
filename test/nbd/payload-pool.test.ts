// The WRITE payload pool (server/payload-pool.ts): a gathered payload's buffer serves a later request
// only when it is the pool's own and every holder (the request, the flush journal) has given it back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PayloadPool } from '../../dist/server/payload-pool.js';

const KiB = 1024;

test('a large payload buffer given back serves the next request of its size class; small ones are not pooled', () => {
  const pool = new PayloadPool();
  const a = pool.take(1024 * KiB);
  assert.equal(a.length, 1024 * KiB);
  pool.give(a);
  assert.equal(pool.idleSize, 1024 * KiB);
  const b = pool.take(1000 * KiB); // same class (1 MiB)
  assert.equal(b.length, 1000 * KiB);
  assert.equal(b.buffer, a.buffer, 'reused');
  assert.equal(pool.idleSize, 0);
  const c = pool.take(1024 * KiB);
  assert.notEqual(c.buffer, a.buffer, 'in use: a new one');
  // Given twice: held once.
  pool.give(b);
  pool.give(b);
  assert.equal(pool.idleSize, 1024 * KiB);
  // Small payloads come from V8's allocator and never come back.
  const s = pool.take(4 * KiB);
  pool.give(s);
  assert.equal(pool.idleSize, 1024 * KiB);
});

test('a kept payload comes back only when its last holder gives it back; a buffer the pool did not make (a view into a socket chunk) never', () => {
  const pool = new PayloadPool();
  const kept = pool.take(256 * KiB);
  pool.keep(kept.subarray(0, 100)); // the flush journal holds it past the request
  pool.give(kept); // the request is done
  assert.equal(pool.idleSize, 0);
  assert.notEqual(pool.take(256 * KiB).buffer, kept.buffer, 'still held: not reused');
  pool.give(kept.subarray(0, 100)); // the journal is done
  assert.equal(pool.idleSize, 256 * KiB);
  assert.equal(pool.take(256 * KiB).buffer, kept.buffer);
  const chunk = Buffer.allocUnsafeSlow(256 * KiB);
  pool.keep(chunk);
  pool.give(chunk.subarray(28));
  pool.give(chunk);
  assert.equal(pool.idleSize, 0);
});

test('idle buffers are bounded: past 32 MiB a given-back buffer is let go', () => {
  const pool = new PayloadPool();
  const taken = Array.from({ length: 40 }, () => pool.take(1024 * KiB));
  for (const b of taken) pool.give(b);
  assert.equal(pool.idleSize, 32 * 1024 * KiB);
});

test('a full pool makes room for a buffer of another size class: a new request size is served from the pool again', () => {
  const pool = new PayloadPool();
  // A copy in 256 KiB requests fills the idle bytes with its buffers...
  const small = Array.from({ length: 160 }, () => pool.take(256 * KiB));
  for (const b of small) pool.give(b);
  assert.equal(pool.idleSize, 32 * 1024 * KiB);
  // ...then a client writes 1 MiB at a time: its buffers come back, and are reused.
  const first = Array.from({ length: 8 }, () => pool.take(1024 * KiB));
  for (const b of first) pool.give(b);
  assert.equal(pool.idleSize, 32 * 1024 * KiB, 'still bounded');
  const again = Array.from({ length: 8 }, () => pool.take(1024 * KiB));
  const reused = new Set(first.map((b) => b.buffer));
  assert.equal(again.filter((b) => reused.has(b.buffer)).length, 8, 'every 1 MiB request reuses a buffer given back');
  for (const b of again) pool.give(b);
  // The class used longest ago goes first: 256 KiB buffers were let go to make room, 1 MiB ones kept.
  const big = pool.take(1024 * KiB);
  assert.ok(reused.has(big.buffer));
});
