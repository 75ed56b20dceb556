// The native shared chunk cache (issue: shared cache in the addon, parts 1-5): hard byte budget,
// chunk bytes off the V8 heap, scan resistance, coalesced misses, never stale, pins that outlive
// eviction, O_DIRECT loads (and the buffered + fadvise fallback) that leave no page-cache copy.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, fsyncSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { NativeChunkCache } from '../../server/cache/native-chunk-cache.js';
import { native } from '../../server/native.js';

const CS = 4096;
// Not tmpfs: O_DIRECT needs a real filesystem (tmpfs answers EINVAL, tested separately).
const dir = mkdtempSync(join(existsSync('/var/tmp') ? '/var/tmp' : '/work', 'shoal-cache-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A chunk whose bytes identify (slot, version). */
function pat(slot: number, version = 0, cs = CS): Buffer {
  const b = Buffer.alloc(cs, (slot * 7 + version * 13 + 1) & 0xff);
  b.writeUInt32LE(slot, 0);
  b.writeUInt32LE(version, 4);
  return b;
}

/** A chunk file with `slots` chunks, slot N holding pat(N, version). Page cache dropped after. */
function chunkFile(name: string, slots: number, version = 0, cs = CS, base = dir): string {
  const path = join(base, name);
  const fd = openSync(path, 'w');
  for (let s = 0; s < slots; s++) writeSync(fd, pat(s, version, cs), 0, cs, s * cs);
  fsyncSync(fd);
  native().fadviseDontNeed(fd, 0, 0);
  closeSync(fd);
  return path;
}

function writeSlot(path: string, slot: number, data: Buffer): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, data, 0, data.length, slot * data.length);
  fsyncSync(fd);
  closeSync(fd);
}

function residentBytes(path: string): number | undefined {
  const r = spawnSync('fincore', ['--bytes', '--noheadings', '--output', 'RES', path], { encoding: 'utf8' });
  return r.status === 0 ? Number(r.stdout.trim()) : undefined;
}

function read(c: NativeChunkCache, slot: number, reader = 1): Buffer | undefined {
  const b = Buffer.alloc(CS);
  return c.readInto(slot, b, 0, 0, CS, reader) ? b : undefined;
}

test('the byte budget is hard: 10× capacity inserted, never more than capacity held', () => {
  const cap = 64 * CS + 1000; // not a multiple: floor(capacity / chunkSize) frames
  const c = new NativeChunkCache(cap, CS);
  for (let s = 0; s < 640; s++) {
    c.insert(s, pat(s));
    const st = c.stats();
    assert.ok(st.bytes <= cap && st.entries <= 64, `after ${s}: ${st.bytes} bytes, ${st.entries} entries`);
  }
  const st = c.stats();
  assert.equal(st.entries, 64);
  assert.equal(st.bytes, 64 * CS);
  assert.equal(st.evictions, 640 - 64);
  // The latest inserts are there with their own bytes.
  assert.deepEqual(read(c, 639), pat(639));
  assert.throws(() => c.insert(1, Buffer.alloc(CS - 1)), RangeError);
  // A cache smaller than one chunk holds nothing and never fails.
  const none = new NativeChunkCache(CS - 1, CS);
  none.insert(1, pat(1));
  assert.equal(none.stats().bytes, 0);
  assert.equal(read(none, 1), undefined);
});

test('chunk bytes are not on the V8 heap: heapUsed and arrayBuffers do not grow with the cache', () => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const cap = 128 * 1024 * 1024;
  gc();
  const before = process.memoryUsage();
  const c = new NativeChunkCache(cap, CS);
  const src = Buffer.alloc(CS, 0x5a);
  for (let s = 0; s < cap / CS; s++) c.insert(s, src);
  gc();
  const afterFill = process.memoryUsage();
  assert.equal(c.stats().bytes, cap);
  const heap = afterFill.heapUsed - before.heapUsed;
  const ab = afterFill.arrayBuffers - before.arrayBuffers;
  const rss = afterFill.rss - before.rss;
  assert.ok(heap < 8 * 1024 * 1024, `heapUsed grew by ${heap} bytes for a ${cap}-byte cache`);
  assert.ok(ab < 4 * 1024 * 1024, `arrayBuffers grew by ${ab} bytes for a ${cap}-byte cache`);
  // The process holds the budget plus a bounded index overhead (~100 bytes per frame), no more.
  assert.ok(rss < cap + 32 * 1024 * 1024, `rss grew by ${rss} bytes for a ${cap}-byte cache`);
  assert.deepEqual(read(c, 12345), src);
});

test('scan resistance: a sequential scan of 5× the cache leaves a re-read working set > 90% hits', async (t) => {
  const frames = 1024;
  const W = 512;
  const scanLen = 5 * frames;
  const path = chunkFile('scan.dat', W + scanLen);
  const c = new NativeChunkCache(frames * CS, CS);
  c.attachFile(path);
  const out = Buffer.alloc(CS);
  let hits = 0;
  let reads = 0;
  const readW = async (s: number) => {
    reads++;
    if (c.readInto(s, out, 0, 0, CS, 1)) hits++;
    else {
      await c.loadRuns([s], 1);
      assert.ok(c.readInto(s, out, 0, 0, CS, 1, false)); // the same access: counted as a miss already
    }
    assert.equal(out.readUInt32LE(0), s);
  };
  // Warm up: the working set is read twice (the second read promotes it out of probation).
  for (let pass = 0; pass < 2; pass++) for (let s = 0; s < W; s++) await readW(s);
  // The scan: `dd` of 5× the cache in 8-chunk requests, while the working set keeps being read.
  hits = reads = 0;
  let w = 0;
  for (let s = W; s < W + scanLen; s += 8) {
    const run = Array.from({ length: 8 }, (_, k) => s + k);
    await c.loadRuns(run, 2);
    for (const r of run) assert.ok(c.readInto(r, out, 0, 0, CS, 2, false) ? out.readUInt32LE(0) === r : true);
    for (let k = 0; k < 4; k++) await readW(w++ % W);
  }
  const during = hits / reads;
  hits = reads = 0;
  for (let s = 0; s < W; s++) await readW(s);
  const afterScan = hits / reads;
  t.diagnostic(`working-set hit ratio: ${during.toFixed(3)} during the scan, ${afterScan.toFixed(3)} after`);
  assert.ok(during >= 0.9, `hit ratio on the working set during the scan: ${during}`);
  assert.ok(afterScan >= 0.9, `hit ratio on the working set after the scan: ${afterScan}`);
  const st = c.stats();
  assert.ok(st.bytes <= frames * CS);
  assert.ok(st.evictions >= scanLen - frames, `evictions ${st.evictions}`);
  c.close();
});

test('concurrent misses on one chunk cause one store read (coalesced)', async () => {
  const path = chunkFile('coalesce.dat', 16);
  const c = new NativeChunkCache(64 * CS, CS);
  c.attachFile(path);
  const loader = () => Promise.reject(new Error('the loader must not be used with a file attached'));
  const got = await Promise.all(Array.from({ length: 100 }, (_, i) => c.fetch(7, i, loader)));
  for (const b of got) assert.deepEqual(b, pat(7));
  let st = c.stats();
  assert.equal(st.storeReads, 1);
  assert.equal(st.misses, 1);
  assert.equal(st.coalesced, 99);
  assert.equal(st.readerRefs, 64); // distinct readers, capped at 64 per entry
  // Batches overlapping a run in flight wait for it instead of reading again.
  await Promise.all([c.loadRuns([8, 9, 10, 11], 1), c.loadRuns([9, 10], 2), c.loadRuns([10, 11, 12], 3)]);
  st = c.stats();
  assert.equal(st.storeReads, 3); // 7, 8..11, 12
  assert.equal(st.storeReadBytes, 6 * CS);
  for (let s = 8; s <= 12; s++) assert.deepEqual(read(c, s), pat(s));
  // The loader path (no file attached: another backend) coalesces too.
  const d = new NativeChunkCache(64 * CS, CS);
  let calls = 0;
  const slow = async (s: number) => {
    calls++;
    await new Promise((r) => setTimeout(r, 10));
    return pat(s);
  };
  const all = await Promise.all(Array.from({ length: 100 }, () => d.fetch(3, 1, slow)));
  assert.equal(calls, 1);
  for (const b of all) assert.deepEqual(b, pat(3));
  assert.equal(d.stats().coalesced, 99);
  assert.deepEqual(d.get(3, 1), pat(3));
  c.close();
});

test('never stale: a dropped and reused id serves only its new bytes, even with a load in flight', async () => {
  const c = new NativeChunkCache(64 * CS, CS);
  c.insert(5, pat(5, 1));
  c.drop(5);
  assert.equal(read(c, 5), undefined);
  c.insert(5, pat(5, 2));
  assert.deepEqual(read(c, 5), pat(5, 2));
  // Re-insert without a drop replaces the bytes too.
  c.insert(5, pat(5, 3));
  assert.deepEqual(read(c, 5), pat(5, 3));

  const path = chunkFile('stale.dat', 8, 1);
  c.attachFile(path);
  // A load in flight, then the chunk is freed: the loaded (old) bytes never enter the cache.
  const p = c.loadRuns([3], 1);
  c.drop(3);
  await p;
  assert.equal(c.has(3), false);
  assert.equal(c.stats().loading, 0);
  writeSlot(path, 3, pat(3, 2));
  await c.loadRuns([3], 1);
  assert.deepEqual(read(c, 3), pat(3, 2));
  // A load in flight, the id freed and rewritten (write-through insert): the insert wins.
  const q = c.loadRuns([4], 1);
  c.drop(4);
  c.insert(4, pat(4, 9));
  await q;
  assert.deepEqual(read(c, 4), pat(4, 9));
  // close() during a load: the fd stays open until the read is done, and the bytes are right.
  const during = c.loadRuns([7], 1);
  c.close();
  await during;
  assert.deepEqual(read(c, 7), pat(7, 1));
  c.attachFile(path);
  // A coalesced waiter after the drop starts a fresh read instead of joining the old one.
  const r1 = c.loadRuns([6], 1);
  c.drop(6);
  writeSlot(path, 6, pat(6, 5));
  const r2 = c.loadRuns([6], 2);
  await Promise.all([r1, r2]);
  assert.deepEqual(read(c, 6), pat(6, 5));
  c.close();

  // The loader path: a load dropped in flight is not inserted.
  const d = new NativeChunkCache(64 * CS, CS);
  const f = d.fetch(9, 1, async (s) => {
    await new Promise((r) => setTimeout(r, 5));
    return pat(s, 1);
  });
  d.drop(9);
  await f;
  assert.equal(d.has(9), false);
});

test('a pinned entry survives eviction and drop; its frame is reused only after release', () => {
  const c = new NativeChunkCache(8 * CS, CS);
  c.insert(1, pat(1));
  const pin = c.pinned(1, 1)!;
  assert.ok(pin);
  assert.equal(pin.buf.length, CS);
  // A working set read twice each: it takes main over, and the pinned chunk's turn comes.
  for (let s = 100; s < 132; s++) {
    c.insert(s, pat(s));
    read(c, s);
  }
  assert.equal(c.has(1), false, 'evicted: never served again');
  let st = c.stats();
  assert.equal(st.pinned, 1);
  assert.equal(st.orphaned, 1);
  assert.ok(st.entries <= 7);
  assert.deepEqual(pin.buf, pat(1), 'the bytes being sent are intact');
  pin.release();
  pin.release(); // idempotent
  st = c.stats();
  assert.equal(st.pinned, 0);
  assert.equal(st.orphaned, 0);
  c.insert(200, pat(200));
  assert.deepEqual(pin.buf, pat(200), 'the released frame is the next one used');

  // Dropped while pinned: the same.
  c.insert(2, pat(2));
  const p2 = c.pinned(2, 1)!;
  const p2b = c.pinned(2, 2)!; // two sends of one chunk
  c.drop(2);
  assert.equal(c.has(2), false);
  c.insert(300, pat(300));
  assert.deepEqual(p2.buf, pat(2));
  p2.release();
  c.insert(301, pat(301));
  assert.deepEqual(p2b.buf, pat(2), 'still pinned by the second send');
  p2b.release();
  assert.equal(c.stats().pinned, 0);
  assert.equal(c.pinned(2, 1), undefined);

  // Every frame pinned: inserts are refused (nothing can be freed), never over budget.
  const d = new NativeChunkCache(2 * CS, CS);
  d.insert(1, pat(1));
  d.insert(2, pat(2));
  const a = d.pinned(1, 1)!;
  const b = d.pinned(2, 1)!;
  d.insert(3, pat(3));
  assert.equal(d.has(3), false);
  assert.deepEqual(a.buf, pat(1));
  assert.deepEqual(b.buf, pat(2));
  a.release();
  b.release();
  d.insert(3, pat(3));
  assert.deepEqual(read(d, 3), pat(3));
});

test('O_DIRECT loads read the right bytes into the arena and leave no page-cache copy', async () => {
  for (const cs of [4096, 65536]) {
    const path = chunkFile(`direct-${cs}.dat`, 40, 0, cs);
    const c = new NativeChunkCache(64 * cs, cs);
    assert.deepEqual(c.attachFile(path), { direct: true });
    await c.loadRuns([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21, 30, 45], 1);
    const st = c.stats();
    assert.equal(st.storeReads, 4); // runs 0..9, 20..21, 30, 45 (past the end: a 0-byte read)
    assert.equal(st.direct, true);
    const out = Buffer.alloc(cs);
    for (const s of [0, 5, 9, 20, 21, 30]) {
      assert.ok(c.readInto(s, out, 0, 0, cs, 1));
      assert.deepEqual(out, pat(s, 0, cs));
    }
    // Past the end of the sparse file: zeroes, as the chunk store reads it.
    assert.ok(c.readInto(45, out, 0, 0, cs, 1));
    assert.deepEqual(out, Buffer.alloc(cs));
    // Partial copies.
    const part = Buffer.alloc(100);
    assert.ok(c.readInto(21, part, 10, cs - 90, 90, 1));
    assert.deepEqual(part.subarray(10), pat(21, 0, cs).subarray(cs - 90));
    assert.throws(() => c.readInto(21, part, 0, cs - 10, 20, 1), RangeError);
    const res = residentBytes(path);
    if (res !== undefined) assert.equal(res, 0, 'O_DIRECT reads must not fill the page cache');
    c.close();
  }
});

test('without O_DIRECT (tmpfs, or forced) loads fall back to buffered reads + fadvise(DONTNEED)', async () => {
  // Forced on a real filesystem, where fincore can show the page cache stays empty.
  const path = chunkFile('buffered.dat', 32);
  const c = new NativeChunkCache(64 * CS, CS);
  assert.deepEqual(c.attachFile(path, { direct: false }), { direct: false });
  await c.loadRuns([1, 2, 3, 10], 1);
  for (const s of [1, 2, 3, 10]) assert.deepEqual(read(c, s), pat(s));
  const res = residentBytes(path);
  if (res !== undefined) {
    assert.equal(res, 0, 'fadvise(DONTNEED) after each read drops the kernel copy');
    readFileSync(path); // control: a plain read does fill it, so fincore sees the page cache
    assert.ok(residentBytes(path)! > 0);
  }
  c.close();
  // tmpfs refuses O_DIRECT with EINVAL: attachFile falls back by itself.
  if (existsSync('/dev/shm')) {
    const shm = mkdtempSync('/dev/shm/shoal-cache-test-');
    try {
      const p = chunkFile('shm.dat', 8, 0, CS, shm);
      let refused = false; // tmpfs has O_DIRECT only since Linux 6.6
      try {
        closeSync(native().openDirect(p));
      } catch (e) {
        assert.equal((e as NodeJS.ErrnoException).code, 'EINVAL');
        refused = true;
      }
      const d = new NativeChunkCache(16 * CS, CS);
      assert.deepEqual(d.attachFile(p), { direct: !refused });
      await d.loadRuns([0, 1, 7], 1);
      for (const s of [0, 1, 7]) assert.deepEqual(read(d, s), pat(s));
      d.close();
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  }
});

test('readahead, NBD_CMD_CACHE-style loads, API compatibility and the sharing factor', async () => {
  const path = chunkFile('ahead.dat', 64);
  const c = new NativeChunkCache(64 * CS, CS);
  c.attachFile(path);
  c.readahead([10, 11, 12, 13], 7);
  c.readahead([12, 13, 14], 7); // overlaps a readahead in flight: not read twice
  await c.loadRuns([10, 11, 12, 13, 14], 1); // joins the readaheads
  let st = c.stats();
  assert.equal(st.readahead, 5);
  assert.equal(st.misses, 0);
  assert.equal(st.storeReads, 2);
  for (let s = 10; s <= 14; s++) assert.deepEqual(read(c, s), pat(s));
  // fetchRuns / peek / get as the data path uses them (loadRun unused with a file attached).
  await c.fetchRuns([20, 21, 22], 1, () => Promise.reject(new Error('unused')));
  assert.deepEqual(c.peek(21), pat(21));
  assert.deepEqual(c.get(22, 1), pat(22));
  assert.equal(c.get(50, 1), undefined);
  // readChunks: a request over chunks 20 (hit), hole, 21 (hit), 40 (miss), 22 (hit), from byte 100 of the first.
  const slots = new Float64Array([20, -1, 21, 40, 22]);
  const hit = new Uint8Array(5);
  const len = 4 * CS;
  const out = Buffer.alloc(len, 0xee);
  assert.equal(c.readChunks(slots, 5, out, 0, 100, len, 1, hit), 1);
  assert.deepEqual([...hit], [1, 2, 1, 0, 1]);
  assert.deepEqual(out.subarray(0, CS - 100), pat(20).subarray(100));
  assert.ok(out.subarray(CS - 100, 2 * CS - 100).every((x) => x === 0xee), 'a hole is left to the caller');
  assert.deepEqual(out.subarray(2 * CS - 100, 3 * CS - 100), pat(21));
  assert.deepEqual(out.subarray(4 * CS - 100), pat(22).subarray(0, 100));
  await c.loadRuns([40], 1);
  assert.equal(c.readChunks(slots, 5, out, 0, 100, len, 1, hit, false), 0);
  assert.deepEqual(out.subarray(3 * CS - 100, 4 * CS - 100), pat(40));
  assert.throws(() => c.readChunks(slots, 5, out, 0, 100, len + 1, 1, hit), RangeError);
  // Sharing factor: one chunk read by three volumes stands for three chunks of logical data.
  const s = new NativeChunkCache(16 * CS, CS);
  s.insert(1, pat(1), 1);
  read(s, 1, 2);
  read(s, 1, 3);
  read(s, 1, 3);
  st = s.stats();
  assert.equal(st.readerRefs, 3);
  assert.equal(st.sharingFactor, 3);
  assert.equal(s.hits, 3);
  // The loader path batches runs through loadRun.
  const runs: [number, number][] = [];
  await s.fetchRuns([5, 6, 7, 9], 1, async (first, count) => {
    runs.push([first, count]);
    return Array.from({ length: count }, (_, k) => pat(first + k));
  });
  assert.deepEqual(runs, [
    [5, 3],
    [9, 1],
  ]);
  assert.deepEqual(s.peek(7), pat(7));
  assert.equal(s.misses, 4);
  c.close();
});
