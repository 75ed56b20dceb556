// Every entry point of the native addon refuses bad input with a TypeError or RangeError: a typed
// array of the wrong element type, a NaN, a fraction, a negative or out-of-range number, a missing
// argument. None of them may reach native code as an unchecked cast (an out-of-bounds read or
// write), and after all of this the objects still work.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../server/native.js';

const CS = 4096;
const BAD_NUMBERS = [NaN, Infinity, -Infinity, -1, 1.5, '1', undefined, null, 2 ** 60];

/** Calls fn with each bad value in argument position i of args: each must throw a Type/RangeError. */
function refuses(name: string, fn: (...a: unknown[]) => unknown, args: unknown[], i: number, bad: unknown[] = BAD_NUMBERS): void {
  for (const b of bad) {
    const a = [...args];
    a[i] = b;
    let err: unknown;
    try {
      const r = fn(...a);
      if (r instanceof Promise) r.catch(() => {});
    } catch (e) {
      err = e;
    }
    assert.ok(err instanceof TypeError || err instanceof RangeError, `${name}: argument ${i} = ${String(b)} was not refused (${String(err)})`);
  }
}

const wrongArrays = (len: number) => [new Float64Array(len), new Int32Array(len), new Uint32Array(len), new Uint16Array(len), new Uint8Array(len), [1, 2, 3], 'x', undefined];
/** The arrays of `wrongArrays` except the right type. */
const notA = (ctor: abstract new (...args: never[]) => object, len = 64) => wrongArrays(len).filter((a) => !(a instanceof ctor) || (ctor === Uint8Array && !(a instanceof Uint8Array)));

test('fingerprint functions check the data, the chunk size and the domain', async () => {
  const a = native();
  const data = Buffer.alloc(2 * CS, 7);
  for (const [name, f] of [
    ['fingerprintSync', a.fingerprintSync],
    ['fingerprint', a.fingerprint],
  ] as const) {
    refuses(name, f as (...x: unknown[]) => unknown, [data, CS, 1], 0, notA(Uint8Array));
    refuses(name, f as (...x: unknown[]) => unknown, [data, CS, 1], 1, [...BAD_NUMBERS, 0]);
    refuses(name, f as (...x: unknown[]) => unknown, [data, CS, 1], 2, [NaN, -2, 1.5, 2 ** 33, 'a', null]);
  }
  const into = a.fingerprintInto as (...x: unknown[]) => unknown;
  const out = Buffer.alloc(2 * 36);
  refuses('fingerprintInto', into, [data, CS, 1, out, 0], 0, notA(Uint8Array));
  refuses('fingerprintInto', into, [data, CS, 1, out, 0], 1, [...BAD_NUMBERS, 0]);
  refuses('fingerprintInto', into, [data, CS, 1, out, 0], 2, [NaN, -1, 1.5, 2 ** 33, 'a', null, undefined]);
  refuses('fingerprintInto', into, [data, CS, 1, out, 0], 3, notA(Uint8Array, 2 * 36));
  refuses('fingerprintInto', into, [data, CS, 1, out, 0], 4, [...BAD_NUMBERS, 1]); // 1: the keys would overrun out
  assert.throws(() => into(data, CS, 1, Buffer.alloc(2 * 36 - 1), 0), RangeError);
  refuses('fingerprintReference', a.fingerprintReference as (...x: unknown[]) => unknown, [data, CS], 0, notA(Uint8Array));
  refuses('fingerprintReference', a.fingerprintReference as (...x: unknown[]) => unknown, [data, CS], 1, [...BAD_NUMBERS, 0]);
  const many = a.fingerprintMany as (...x: unknown[]) => unknown;
  refuses('fingerprintMany', many, [[data], new Float64Array([1]), CS], 0, ['x', new Float64Array(4), undefined]);
  refuses('fingerprintMany', many, [[data], new Float64Array([1]), CS], 1, notA(Float64Array));
  refuses('fingerprintMany', many, [[data], new Float64Array([1]), CS], 2, [...BAD_NUMBERS, 0]);
  for (const bad of [[new Float64Array(8)], [data, data]]) assert.throws(() => many(bad, new Float64Array([1]), CS), TypeError);
  for (const d of [NaN, -1, 1.5]) assert.throws(() => many([data], new Float64Array([d]), CS), TypeError);
  // Still correct afterwards.
  assert.deepEqual(a.fingerprintSync(data, CS, 1), await a.fingerprint(data, CS, 1));
});

test('the fingerprint table checks keys, offsets, counts and slots', () => {
  const t = new (native().FingerprintTable)();
  const keys = Buffer.alloc(36 * 4, 3);
  const call = (m: keyof typeof t) => (t[m] as (...x: unknown[]) => unknown).bind(t);
  refuses('get', call('get'), [keys, 0], 0, notA(Uint8Array));
  refuses('get', call('get'), [keys, 0], 1, [...BAD_NUMBERS, 36 * 4]);
  refuses('set', call('set'), [keys, 0, 5], 2, [...BAD_NUMBERS, 0]);
  refuses('deleteIf', call('deleteIf'), [keys, 0, 5], 2);
  refuses('getMany', call('getMany'), [keys, 4, new Float64Array(4)], 0, notA(Uint8Array));
  refuses('getMany', call('getMany'), [keys, 4, new Float64Array(4)], 1, [...BAD_NUMBERS, 5]);
  refuses('getMany', call('getMany'), [keys, 4, new Float64Array(4)], 2, notA(Float64Array));
  const log = Buffer.alloc(42 * 4);
  const args = [keys, new Uint32Array([0, 1]), new Float64Array([5, 6]), 2, log, 0];
  refuses('logMany', call('logMany'), args, 0, notA(Uint8Array));
  refuses('logMany', call('logMany'), args, 1, notA(Uint32Array));
  refuses('logMany', call('logMany'), args, 2, notA(Float64Array));
  refuses('logMany', call('logMany'), args, 3, [...BAD_NUMBERS, 3]);
  refuses('logMany', call('logMany'), args, 4, notA(Uint8Array));
  refuses('logMany', call('logMany'), args, 5, [...BAD_NUMBERS, 42 * 3 + 1]);
  assert.throws(() => t.logMany(keys, new Uint32Array([9]), new Float64Array([5]), 1, log, 0), RangeError);
  assert.equal(t.size, 0, 'nothing refused changed the table');
  t.set(keys, 0, 5);
  assert.equal(t.get(keys, 0), 5);
});

test('the cache arena checks every array, number and frame', async () => {
  const Cache = native().NativeChunkCache;
  for (const [cap, cs] of [[NaN, CS], [-1, CS], [CS, 1000], [CS, NaN], [CS, 3 * CS]] as const) assert.throws(() => new Cache(cap, cs), /TypeError|RangeError/);
  const h = new Cache(16 * CS, CS);
  const call = (m: keyof typeof h) => (h[m] as (...x: unknown[]) => unknown).bind(h);
  const chunk = Buffer.alloc(CS, 1);
  refuses('insert', call('insert'), [1, chunk, 1], 0);
  refuses('insert', call('insert'), [1, chunk, 1], 1, [...notA(Uint8Array), Buffer.alloc(CS - 1)]);
  refuses('insert', call('insert'), [1, chunk, 1], 2, [NaN, -2, 1.5, 'a']);
  refuses('drop', call('drop'), [1], 0);
  refuses('has', call('has'), [1], 0);
  refuses('pin', call('pin'), [1, 1], 1, [NaN, -2, 1.5, 'a', 2 ** 40]);
  refuses('pin', call('pin'), [1, 1], 0);
  refuses('pin', call('pin'), [1, 1, true], 2, ['yes', 1]);
  refuses('unpin', call('unpin'), [0], 0);
  assert.throws(() => h.unpin(3), RangeError, 'unpin of a frame that is not pinned');
  const dst = Buffer.alloc(CS);
  refuses('lookupCopy', call('lookupCopy'), [1, dst, 0, 0, CS, 1], 1, notA(Uint8Array));
  for (const i of [0, 2, 3, 4]) refuses('lookupCopy', call('lookupCopy'), [1, dst, 0, 0, CS, 1], i);
  h.insert(1, chunk, 1);
  assert.throws(() => h.lookupCopy(1, dst, 1, 0, CS, 1), RangeError, 'past the end of dst');
  assert.throws(() => h.lookupCopy(1, dst, 0, 1, CS, 1), RangeError, 'past the end of the chunk');
  const slots = new Float64Array([1, 2]);
  const hit = new Uint8Array(2);
  const gargs = [slots, 2, Buffer.alloc(2 * CS), 0, 0, 2 * CS, 1, hit];
  refuses('gather', call('gather'), gargs, 0, notA(Float64Array));
  refuses('gather', call('gather'), gargs, 2, notA(Uint8Array));
  refuses('gather', call('gather'), gargs, 7, notA(Uint8Array));
  for (const i of [1, 3, 4, 5]) refuses('gather', call('gather'), gargs, i);
  assert.throws(() => h.gather(slots, 3, Buffer.alloc(3 * CS), 0, 0, 3 * CS, 1, hit), RangeError, 'n past slots');
  const frames = new Int32Array(2);
  refuses('pinMany', call('pinMany'), [slots, 2, frames, 1, true], 0, notA(Float64Array));
  refuses('pinMany', call('pinMany'), [slots, 2, frames, 1, true], 2, notA(Int32Array));
  refuses('pinMany', call('pinMany'), [slots, 2, frames, 1, true], 1, [...BAD_NUMBERS, 3]);
  refuses('unpinMany', call('unpinMany'), [frames, 2], 0, notA(Int32Array));
  refuses('unpinMany', call('unpinMany'), [frames, 2], 1, [...BAD_NUMBERS, 3]);
  const outcome = new Uint8Array(2);
  const res = new Uint32Array(2);
  const ids = new Uint32Array(2);
  const rargs = [new Float64Array([3, 4]), 2, 1, false, outcome, res, 7, ids];
  refuses('reserve', call('reserve'), rargs, 0, notA(Float64Array));
  refuses('reserve', call('reserve'), rargs, 1, [...BAD_NUMBERS, 3]);
  refuses('reserve', call('reserve'), rargs, 3, ['no', 0]);
  refuses('reserve', call('reserve'), rargs, 4, notA(Uint8Array));
  refuses('reserve', call('reserve'), rargs, 5, notA(Uint32Array));
  refuses('reserve', call('reserve'), rargs, 6, [...BAD_NUMBERS, 0]);
  refuses('reserve', call('reserve'), rargs, 7, notA(Uint32Array));
  refuses('reserve', call('reserve'), [new Float64Array([3, 4]), 2, 1, false, outcome, res, 7, new Uint32Array(1)], 1, [2]);
  assert.throws(() => h.reserve(new Float64Array([3, NaN]), 2, 1, false, outcome, res, 7, ids), TypeError, 'a NaN slot');
  assert.equal(h.stats().loading, 0, 'nothing was reserved by refused calls');
  // complete() and readFile() only take frames reserved for a load.
  assert.throws(() => h.complete(new Uint32Array([0]), 1, true), RangeError);
  assert.throws(() => h.readFile(0, new Uint32Array([0]), new Float64Array([0]), 1), RangeError);
  assert.equal(h.reserve(new Float64Array([3]), 1, 1, false, outcome, res, 7, ids), 1);
  // A second load of the slot coalesces: it is told the first one's id.
  assert.equal(h.reserve(new Float64Array([3]), 1, 1, false, outcome, res.subarray(1), 8, ids), 0);
  assert.deepEqual([outcome[0], ids[0]], [1, 7]);
  const f = new Uint32Array([res[0]]);
  refuses('readFile', call('readFile'), [0, f, new Float64Array([0]), 1], 0);
  refuses('readFile', call('readFile'), [0, f, new Float64Array([0]), 1], 1, notA(Uint32Array));
  refuses('readFile', call('readFile'), [0, f, new Float64Array([0]), 1], 2, notA(Float64Array));
  assert.throws(() => h.readFile(0, f, new Float64Array([100]), 1), RangeError, 'an offset not on a chunk boundary');
  refuses('complete', call('complete'), [f, 1, true], 0, notA(Uint32Array));
  refuses('complete', call('complete'), [f, 1, true], 2, [1, 'yes', undefined]);
  h.complete(f, 1, false);
  assert.equal(h.stats().loading, 0);
  assert.throws(() => h.complete(f, 1, true), RangeError, 'a frame completed twice');
  // Still serving.
  assert.equal(h.pin(1, 1), h.pin(1, 2));
});

test('file helpers check their arguments', () => {
  const a = native();
  refuses('openDirect', a.openDirect as (...x: unknown[]) => unknown, ['/nonexistent'], 0, [1, undefined, null]);
  refuses('openDirect', a.openDirect as (...x: unknown[]) => unknown, ['/nonexistent', false], 1, [1, 'yes']);
  for (const i of [0, 1, 2]) refuses('fadviseDontNeed', a.fadviseDontNeed as (...x: unknown[]) => unknown, [0, 0, 0], i);
  // Refused before any job is queued: this process's own pool keeps its priority.
  refuses('setPoolNice', a.setPoolNice as (...x: unknown[]) => unknown, [4, 5], 0, [...BAD_NUMBERS, 0, 1025]);
  refuses('setPoolNice', a.setPoolNice as (...x: unknown[]) => unknown, [4, 5], 1, [...BAD_NUMBERS, 20]);
});

test('writeRuns checks its arguments, writes each run at its position, and tells how many runs a failure left written', async () => {
  const a = native();
  const wr = a.writeRuns as (...x: unknown[]) => unknown;
  const b = Buffer.alloc(CS);
  const ok = [0, [b, b], new Uint32Array([1, 1]), new Float64Array([0, CS]), 2];
  refuses('writeRuns', wr, ok, 0);
  refuses('writeRuns', wr, ok, 1, [b, 'x', undefined, [b, 'x'], [b, new Float64Array(4)]]);
  refuses('writeRuns', wr, ok, 2, [new Float64Array([1, 1]), new Uint32Array([2, 1]), new Uint32Array([0, 2]), new Uint32Array([1]), new Uint32Array([1025, 1])]);
  refuses('writeRuns', wr, ok, 3, [new Uint32Array([0, 1]), new Float64Array([0, -1]), new Float64Array([0, 1.5]), new Float64Array([0, NaN]), new Float64Array([0])]);
  refuses('writeRuns', wr, ok, 4, [...BAD_NUMBERS, 0, 3]);

  const dir = mkdtempSync(join(tmpdir(), 'shoal-writeruns-'));
  const path = join(dir, 'f');
  const fd = openSync(path, 'w+');
  try {
    // Three runs out of order, one of two buffers (one a view at an offset), over 64 KiB apart.
    const x = randomBytes(3 * CS);
    const runs = [x.subarray(0, CS), x.subarray(CS, 2 * CS), x.subarray(2 * CS, 3 * CS)];
    await a.writeRuns(fd, runs, new Uint32Array([1, 2]), new Float64Array([20 * CS, 3 * CS]), 2);
    const f = readFileSync(path);
    assert.equal(f.length, 21 * CS);
    assert.ok(f.subarray(20 * CS, 21 * CS).equals(runs[0]));
    assert.ok(f.subarray(3 * CS, 5 * CS).equals(x.subarray(CS, 3 * CS)));
    assert.ok(f.subarray(0, 3 * CS).equals(Buffer.alloc(3 * CS)));
    // The third run lies past the largest file the filesystem allows: the two before it are written.
    const y = Buffer.alloc(CS, 0x5a);
    await assert.rejects(a.writeRuns(fd, [y, y, y], new Uint32Array([1, 1, 1]), new Float64Array([0, 8 * CS, 2 ** 52]), 3), (e: NodeJS.ErrnoException & { runsWritten: number }) => {
      assert.equal(e.code, 'EFBIG');
      assert.equal(e.runsWritten, 2);
      return true;
    });
    const g = readFileSync(path);
    assert.ok(g.subarray(0, CS).equals(y) && g.subarray(8 * CS, 9 * CS).equals(y));
  } finally {
    closeSync(fd);
    rmSync(dir, { recursive: true, force: true });
  }
  // A closed descriptor: nothing written, the error says so.
  await assert.rejects(a.writeRuns(fd, [b], new Uint32Array([1]), new Float64Array([0]), 1), (e: NodeJS.ErrnoException & { runsWritten: number }) => e.code === 'EBADF' && e.runsWritten === 0);
});

test('upload digests check their arguments; crc32Chunks gives zlib.crc32 of each chunk', async () => {
  const a = native();
  refuses('md5', a.md5 as (...x: unknown[]) => unknown, [Buffer.alloc(16)], 0, [new Float64Array(4), 'x', undefined]);
  const crc = a.crc32Chunks as (...x: unknown[]) => unknown;
  refuses('crc32Chunks', crc, [Buffer.alloc(CS), CS], 0, [new Float64Array(CS), [1, 2], 'x', undefined]);
  refuses('crc32Chunks', crc, [Buffer.alloc(CS), CS], 1, [...BAD_NUMBERS, 0]);
  refuses('crc32Chunks', crc, [Buffer.alloc(CS + 1), CS], 0, [Buffer.alloc(CS + 1)]); // not whole chunks
  const data = randomBytes(5 * CS);
  const got = await a.crc32Chunks(data.subarray(CS), CS); // at an offset into its buffer
  assert.equal(got.length, 16);
  for (let i = 0; i < 4; i++) assert.equal(got.readUInt32LE(i * 4), crc32(data.subarray((i + 1) * CS, (i + 2) * CS)), `chunk ${i}`);
  assert.equal((await a.crc32Chunks(Buffer.alloc(0), CS)).length, 0);
  assert.equal((await a.md5(Buffer.from('abc'))).toString('hex'), '900150983cd24fb0d6963f7d28e17f72');
});

test('crc32ChunksInto checks its arguments and, like crc32Chunks, gives zlib.crc32 at every length the fold splits', async () => {
  const a = native();
  const into = a.crc32ChunksInto as (...x: unknown[]) => unknown;
  const args = [Buffer.alloc(CS), CS, new Uint32Array(1), 0];
  refuses('crc32ChunksInto', into, args, 0, [new Float64Array(CS), [1, 2], 'x', undefined]);
  refuses('crc32ChunksInto', into, args, 1, [...BAD_NUMBERS, 0]);
  refuses('crc32ChunksInto', into, args, 2, notA(Uint32Array));
  refuses('crc32ChunksInto', into, args, 3, [-1, 0.5, NaN, 'x', undefined]);
  refuses('crc32ChunksInto', into, args, 3, [1, 2]); // no room in out from there
  refuses('crc32ChunksInto', into, [Buffer.alloc(2 * CS), CS, new Uint32Array(1), 0], 2, [new Uint32Array(1)]); // two chunks, room for one
  refuses('crc32ChunksInto', into, [Buffer.alloc(CS + 1), CS, new Uint32Array(2), 0], 0, [Buffer.alloc(CS + 1)]); // not whole chunks
  // The folded CRC takes 64 bytes and up, in 16-byte blocks; zlib the rest: lengths on each side of those edges.
  for (const len of [1, 15, 16, 63, 64, 65, 79, 80, 127, 128, 129, 4095, 4096, 4097, 65543, 1 << 20]) {
    const data = randomBytes(3 * len + 1).subarray(1); // at an odd offset into its buffer
    const out = new Uint32Array(5).fill(7);
    a.crc32ChunksInto(data, len, out, 1);
    const pooled = await a.crc32Chunks(data, len);
    for (let i = 0; i < 3; i++) {
      const want = crc32(data.subarray(i * len, (i + 1) * len));
      assert.equal(out[1 + i], want, `length ${len}, chunk ${i}`);
      assert.equal(pooled.readUInt32LE(i * 4), want, `length ${len}, chunk ${i}, on the pool`);
    }
    assert.deepEqual([out[0], out[4]], [7, 7], 'nothing outside out[at..at+n) changes');
  }
});
