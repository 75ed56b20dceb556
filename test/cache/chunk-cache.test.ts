// The shared chunk cache on the native arena: hard byte budget, chunk bytes off the V8 heap, scan
// resistance, coalesced misses, never stale, pins that outlive eviction, and its one miss path
// through the chunk store: O_DIRECT reads of the local store straight into frames (and the
// buffered + fadvise fallback) that leave no page-cache copy, or bytes a store copies in.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ChunkCache } from '../../server/cache/chunk-cache.js';
import { LocalChunkStore } from '../../server/store/local-chunk-store.js';
import type { ChunkStore, ChunkTargets, StoreStats } from '../../server/store/chunk-store.js';
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

/** A store directory whose chunk file has `slots` chunks, slot N holding pat(N, version). Page cache dropped after. */
async function chunkFile(name: string, slots: number, version = 0, cs = CS, base = dir): Promise<string> {
  const d = join(base, name);
  mkdirSync(d, { recursive: true });
  const path = join(d, 'chunks.dat');
  const fd = openSync(path, 'w');
  for (let s = 0; s < slots; s++) writeSync(fd, pat(s, version, cs), 0, cs, s * cs);
  fsyncSync(fd);
  await native().fadviseDontNeed(fd, 0, 0);
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

/** The local store over a chunk file made by chunkFile (its directory). */
async function storeOf(path: string, cs = CS): Promise<LocalChunkStore> {
  const s = await LocalChunkStore.open(dirname(path), cs);
  stores.push(s);
  return s;
}
const stores: LocalChunkStore[] = [];
after(async () => {
  for (const s of stores) await s.close();
});

/** A store with no bytes: for tests that only insert. */
const noStore: ChunkStore = {
  chunkSize: CS,
  reusesSlots: true,
  readChunks: () => Promise.reject(new Error('this test reads nothing from a store')),
  write: () => Promise.reject(new Error('unused')),
  sync: async () => {},
  check: async () => [],
  stats: (): StoreStats => ({ kind: 'local', reads: 0, readBytes: 0, direct: false }),
  close: async () => {},
};

/** A hit's bytes (counted as a hit for `reader`), or undefined on a miss. */
function read(c: ChunkCache, slot: number, reader = 1, count = true): Buffer | undefined {
  const b = Buffer.alloc(c.chunkSize);
  return c.readChunks(new Float64Array([slot]), 1, b, 0, 0, c.chunkSize, reader, new Uint8Array(1), count) === 0 ? b : undefined;
}

test('the byte budget is hard: 10× capacity inserted, never more than capacity held', () => {
  const cap = 64 * CS + 1000; // not a multiple: floor(capacity / chunkSize) frames
  const c = new ChunkCache(cap, CS, noStore);
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
  const none = new ChunkCache(CS - 1, CS, noStore);
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
  const c = new ChunkCache(cap, CS, noStore);
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
  const path = await chunkFile('scan', W + scanLen);
  const c = new ChunkCache(frames * CS, CS, await storeOf(path));
  let hits = 0;
  let reads = 0;
  const readW = async (s: number) => {
    reads++;
    let b = read(c, s);
    if (b) hits++;
    else {
      await c.load([s], 1);
      b = read(c, s, 1, false); // the same access: counted as a miss already
      assert.ok(b);
    }
    assert.equal(b.readUInt32LE(0), s);
  };
  // Warm up: the working set is read twice (the second read promotes it out of probation).
  for (let pass = 0; pass < 2; pass++) for (let s = 0; s < W; s++) await readW(s);
  // The scan: `dd` of 5× the cache in 8-chunk requests, while the working set keeps being read.
  hits = reads = 0;
  let w = 0;
  for (let s = W; s < W + scanLen; s += 8) {
    const run = Array.from({ length: 8 }, (_, k) => s + k);
    await c.load(run, 2);
    for (const r of run) {
      const b = read(c, r, 2, false);
      assert.ok(b === undefined || b.readUInt32LE(0) === r);
    }
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
});

/** A store that fetches bytes asynchronously and copies them into the targets' views (as a remote one does). */
class FetchingStore implements ChunkStore {
  readonly chunkSize = CS;
  readonly reusesSlots = true;
  calls: number[][] = [];
  version = new Map<number, number>();
  /** Slots whose reads fail, as a damaged pack's do: the whole read they are part of. */
  damaged = new Set<number>();
  constructor(private readonly delayMs = 10) {}
  async readChunks(slots: ArrayLike<number>, targets: ChunkTargets): Promise<void> {
    const mine = Array.from({ length: targets.count }, (_, i) => slots[i]);
    this.calls.push(mine);
    await new Promise((r) => setTimeout(r, this.delayMs));
    const bad = mine.find((x) => this.damaged.has(x));
    if (bad !== undefined) throw new Error(`chunk ${bad} does not match its checksum`);
    for (let i = 0; i < mine.length; i++) pat(mine[i], this.version.get(mine[i]) ?? 0).copy(targets.view(i));
  }
  write = () => Promise.reject(new Error('unused'));
  sync = async () => {};
  check = async () => [];
  stats = (): StoreStats => ({ kind: 'local', reads: this.calls.length, readBytes: 0, direct: false });
  close = async () => {};
}

test('concurrent misses on one chunk cause one store read (coalesced), through a file or a fetching store', async () => {
  const path = await chunkFile('coalesce', 16);
  for (const store of [await storeOf(path), new FetchingStore()]) {
    const c = new ChunkCache(64 * CS, CS, store);
    const got = await Promise.all(
      Array.from({ length: 100 }, async (_, i) => {
        const b = Buffer.alloc(CS);
        await c.copyChunk(7, i, b);
        return b;
      }),
    );
    for (const b of got) assert.deepEqual(b, pat(7));
    let st = c.stats();
    assert.equal(st.storeReads, 1);
    assert.equal(st.misses, 1);
    assert.equal(st.coalesced, 99);
    assert.equal(st.readerRefs, 64); // distinct readers, capped at 64 per entry
    // Batches overlapping a load in flight wait for it instead of reading again.
    await Promise.all([c.load([8, 9, 10, 11], 1), c.load([9, 10], 2), c.load([10, 11, 12], 3)]);
    st = c.stats();
    assert.equal(st.storeReads, 3); // 7, 8..11, 12
    assert.equal(st.storeReadBytes, 6 * CS);
    for (let s = 8; s <= 12; s++) assert.deepEqual(read(c, s), pat(s));
  }
});

test('a readahead run that fails for a damaged chunk fails no read of the other chunks waiting on it', async () => {
  const store = new FetchingStore(30);
  store.damaged.add(12);
  const c = new ChunkCache(64 * CS, CS, store);
  c.readahead([10, 11, 12, 13], 1); // in flight: later loads of these wait for it
  const b = Buffer.alloc(CS);
  await c.copyChunk(11, 2, b); // waits for the readahead, which fails for chunk 12, then loads 11 alone
  assert.deepEqual(b, pat(11));
  assert.deepEqual(store.calls, [[10, 11, 12, 13], [11]]);
  // The damaged chunk itself still fails, and is never cached.
  c.readahead([12, 13], 1);
  await assert.rejects(c.load([12, 13], 2), /chunk 12 does not match its checksum/);
  assert.equal(c.has(12), false);
  assert.deepEqual(read(c, 11), pat(11));
});

test('never stale: a dropped and reused id serves only its new bytes, even with a load in flight', async () => {
  const c0 = new ChunkCache(64 * CS, CS, noStore);
  c0.insert(5, pat(5, 1));
  c0.drop(5);
  assert.equal(read(c0, 5), undefined);
  c0.insert(5, pat(5, 2));
  assert.deepEqual(read(c0, 5), pat(5, 2));
  // Re-insert without a drop replaces the bytes too.
  c0.insert(5, pat(5, 3));
  assert.deepEqual(read(c0, 5), pat(5, 3));

  const path = await chunkFile('stale', 8, 1);
  const store = await storeOf(path);
  const c = new ChunkCache(64 * CS, CS, store);
  // A load in flight, then the chunk is freed: the loaded (old) bytes never enter the cache.
  const p = c.load([3], 1);
  c.drop(3);
  await p;
  assert.equal(c.has(3), false);
  assert.equal(c.stats().loading, 0);
  writeSlot(path, 3, pat(3, 2));
  await c.load([3], 1);
  assert.deepEqual(read(c, 3), pat(3, 2));
  // A load in flight, the id freed and rewritten (write-through insert): the insert wins.
  const q = c.load([4], 1);
  c.drop(4);
  c.insert(4, pat(4, 9));
  await q;
  assert.deepEqual(read(c, 4), pat(4, 9));
  // A coalesced waiter after the drop starts a fresh read instead of joining the old one.
  const r1 = c.load([6], 1);
  c.drop(6);
  writeSlot(path, 6, pat(6, 5));
  const r2 = c.load([6], 2);
  await Promise.all([r1, r2]);
  assert.deepEqual(read(c, 6), pat(6, 5));
  // The same through a store that copies fetched bytes in: a fetch dropped in flight is not admitted.
  const fs = new FetchingStore();
  const d = new ChunkCache(64 * CS, CS, fs);
  const f = d.load([9], 1);
  d.drop(9);
  fs.version.set(9, 1);
  await f;
  assert.equal(d.has(9), false);
  await d.load([9], 1);
  assert.deepEqual(read(d, 9), pat(9, 1));
  // A failed store read frees its frames and reaches the caller; nothing is admitted.
  const failing = new ChunkCache(4 * CS, CS, { ...noStore, readChunks: () => Promise.reject(new Error('disk on fire')) });
  await assert.rejects(failing.load([1, 2], 1), /disk on fire/);
  assert.equal(failing.stats().loading, 0);
  assert.equal(failing.has(1), false);
});

test('the store closes its file only after the reads in flight are done', async () => {
  const path = await chunkFile('close', 8, 1);
  const store = await LocalChunkStore.open(dirname(path), CS);
  const c = new ChunkCache(64 * CS, CS, store);
  const during = c.load([7], 1);
  await store.close();
  await during;
  assert.deepEqual(read(c, 7), pat(7, 1));
  await assert.rejects(c.load([6], 1), /closed/);
});

test('a pinned entry survives eviction and drop; its frame is reused only after release', () => {
  const c = new ChunkCache(8 * CS, CS, noStore);
  c.insert(1, pat(1));
  const pin = c.pinned(1, 1)!;
  assert.ok(pin);
  const buf = pin.data as Buffer;
  assert.equal(buf.length, CS);
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
  assert.deepEqual(buf, pat(1), 'the bytes being sent are intact');
  pin.release();
  pin.release(); // idempotent
  st = c.stats();
  assert.equal(st.pinned, 0);
  assert.equal(st.orphaned, 0);
  c.insert(200, pat(200));
  assert.deepEqual(buf, pat(200), 'the released frame is the next one used');

  // Dropped while pinned: the same.
  c.insert(2, pat(2));
  const p2 = c.pinned(2, 1)!;
  const p2b = c.pinned(2, 2)!; // two sends of one chunk
  c.drop(2);
  assert.equal(c.has(2), false);
  c.insert(300, pat(300));
  assert.deepEqual(p2.data, pat(2));
  p2.release();
  c.insert(301, pat(301));
  assert.deepEqual(p2b.data, pat(2), 'still pinned by the second send');
  p2b.release();
  assert.equal(c.stats().pinned, 0);
  assert.equal(c.pinned(2, 1), undefined);

  // Every frame pinned: inserts are refused (nothing can be freed), never over budget.
  const d = new ChunkCache(2 * CS, CS, noStore);
  d.insert(1, pat(1));
  d.insert(2, pat(2));
  const a = d.pinned(1, 1)!;
  const b = d.pinned(2, 1)!;
  d.insert(3, pat(3));
  assert.equal(d.has(3), false);
  assert.deepEqual(a.data, pat(1));
  assert.deepEqual(b.data, pat(2));
  a.release();
  b.release();
  d.insert(3, pat(3));
  assert.deepEqual(read(d, 3), pat(3));
});

test('every frame busy: a read still gets its bytes from the store, uncached', async () => {
  const path = await chunkFile('busy', 8);
  const c = new ChunkCache(2 * CS, CS, await storeOf(path));
  await c.load([1, 2], 1);
  const a = c.pinned(1, 1)!;
  const b = c.pinned(2, 1)!;
  await c.load([5], 1); // no frame can be had
  assert.equal(c.has(5), false);
  const out = Buffer.alloc(CS);
  await c.copyChunk(5, 1, out);
  assert.deepEqual(out, pat(5));
  a.release();
  b.release();
});

test('O_DIRECT reads go straight into the frames and leave no page-cache copy', async () => {
  for (const cs of [4096, 65536]) {
    const path = await chunkFile(`direct-${cs}`, 40, 0, cs);
    const store = await storeOf(path, cs);
    assert.equal(store.stats().direct, true);
    const c = new ChunkCache(64 * cs, cs, store);
    await c.load([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 20, 21, 30, 45], 1);
    assert.equal(c.stats().storeReads, 1);
    assert.equal(store.stats().reads, 4); // preadv runs 0..9, 20..21, 30, 45 (past the end: a 0-byte read)
    for (const s of [0, 5, 9, 20, 21, 30]) assert.deepEqual(read(c, s), pat(s, 0, cs));
    // Past the end of the sparse file: zeroes, as the chunk store reads it.
    assert.deepEqual(read(c, 45), Buffer.alloc(cs));
    // Partial copies.
    const part = Buffer.alloc(100);
    const hit = new Uint8Array(1);
    assert.equal(c.readChunks(new Float64Array([21]), 1, part, 10, cs - 90, 90, 1, hit), 0);
    assert.deepEqual(part.subarray(10), pat(21, 0, cs).subarray(cs - 90));
    assert.throws(() => c.readChunks(new Float64Array([21]), 1, part, 0, cs - 10, 200, 1, hit), RangeError);
    const res = residentBytes(path);
    if (res !== undefined) assert.equal(res, 0, 'O_DIRECT reads must not fill the page cache');
  }
});

test('without O_DIRECT (tmpfs) the store reads buffered and drops the pages', async () => {
  if (!existsSync('/dev/shm')) return;
  const shm = mkdtempSync('/dev/shm/shoal-cache-test-');
  try {
    const p = await chunkFile('shm', 8, 0, CS, shm);
    let refused = false; // tmpfs has O_DIRECT only since Linux 6.6
    try {
      closeSync(native().openDirect(p));
    } catch (e) {
      assert.equal((e as NodeJS.ErrnoException).code, 'EINVAL');
      refused = true;
    }
    const store = await LocalChunkStore.open(dirname(p), CS);
    assert.equal(store.stats().direct, !refused);
    const d = new ChunkCache(16 * CS, CS, store);
    await d.load([0, 1, 7], 1);
    for (const s of [0, 1, 7]) assert.deepEqual(read(d, s), pat(s));
    await store.close();
  } finally {
    rmSync(shm, { recursive: true, force: true });
  }
  // The buffered path on a real filesystem (uncached reads): the bytes are right.
  const path = await chunkFile('buffered', 32);
  const c = new ChunkCache(64 * CS, CS, await storeOf(path));
  const bufs = [Buffer.alloc(CS), Buffer.alloc(CS), Buffer.alloc(CS)];
  await c.readUncached([1, 2, 40], bufs);
  assert.deepEqual(bufs[0], pat(1));
  assert.deepEqual(bufs[1], pat(2));
  assert.deepEqual(bufs[2], Buffer.alloc(CS), 'past the end: zeroes');
  readFileSync(path);
});

test('readahead, gathered copies and the sharing factor', async () => {
  const path = await chunkFile('ahead', 64);
  const c = new ChunkCache(64 * CS, CS, await storeOf(path));
  c.readahead([10, 11, 12, 13], 7);
  c.readahead([12, 13, 14], 7); // overlaps a readahead in flight: not read twice
  await c.load([10, 11, 12, 13, 14], 1); // joins the readaheads
  let st = c.stats();
  assert.equal(st.readahead, 5);
  assert.equal(st.misses, 0);
  assert.equal(st.storeReads, 2);
  for (let s = 10; s <= 14; s++) assert.deepEqual(read(c, s), pat(s));
  await c.load([20, 21, 22], 1);
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
  await c.load([40], 1);
  assert.equal(c.readChunks(slots, 5, out, 0, 100, len, 1, hit, false), 0);
  assert.deepEqual(out.subarray(3 * CS - 100, 4 * CS - 100), pat(40));
  assert.throws(() => c.readChunks(slots, 5, out, 0, 100, len + 1, 1, hit), RangeError);
  // Sharing factor: one chunk read by three volumes stands for three chunks of logical data.
  const s = new ChunkCache(16 * CS, CS, noStore);
  s.insert(1, pat(1), 1);
  read(s, 1, 2);
  read(s, 1, 3);
  read(s, 1, 3);
  st = s.stats();
  assert.equal(st.readerRefs, 3);
  assert.equal(st.sharingFactor, 3);
  assert.equal(st.hits, 3);
});
