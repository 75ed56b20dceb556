// A pack file in the local tier: sealed, it is byte for byte a valid pack object (every chunk's CRC, taken
// at the seal, matches its bytes); left open by a crash, the next process finds every chunk a sync()
// covered (their slots are in the ids area), seals it, and the result decodes; syncs around a seal leave
// no ids past its trailer; a pack told to drops what a sync made clean from the page cache (fincore sees
// it go); a sparse copy of a fetched pack never enters it (O_DIRECT).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, randomFillSync } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalPack } from '../../server/store/s3/local-pack.js';
import { decodePack } from '../../server/store/s3/pack-format.js';
import { ChunkCache } from '../../server/cache/chunk-cache.js';
import type { ChunkStore, ChunkTargets } from '../../server/store/chunk-store.js';
import { native } from '../../server/native.js';

const CS = 4096;
const CAPACITY = 64;

function withDir(fn: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'shoal-local-pack-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

/** Appends `n` random chunks with slots from `first` (in runs of 1 to 4), each run's bytes awaited. */
async function appendChunks(p: LocalPack, first: number, n: number): Promise<Buffer[]> {
  const out: Buffer[] = [];
  const writes: Promise<void>[] = [];
  for (let done = 0; done < n; ) {
    const k = Math.min(n - done, 1 + (done % 4));
    const data = randomBytes(k * CS);
    for (let i = 0; i < k; i++) out.push(data.subarray(i * CS, (i + 1) * CS));
    writes.push(p.append(first + done, data, k).written);
    done += k;
  }
  await Promise.all(writes);
  return out;
}

function expectPack(path: string, slots: number[], chunks: Buffer[]): void {
  const file = readFileSync(path);
  const entries = decodePack(file, path); // header, trailer, index and every CRC
  assert.deepEqual(
    entries.map((e) => e.id),
    slots,
  );
  entries.forEach((e, i) => assert.ok(file.subarray(e.offset, e.offset + e.length).equals(chunks[i]), `chunk ${i}`));
}

test('a sealed pack is a valid pack object: every chunk in place, every CRC matching', withDir(async (dir) => {
  const path = join(dir, '1-7.pack');
  const p = LocalPack.create(7, 1, path, CS, CAPACITY);
  const chunks = await appendChunks(p, 1000, 40);
  const bytes = await p.seal(true);
  assert.equal(readFileSync(path).length, bytes, 'the ids area is cut off');
  expectPack(
    path,
    chunks.map((_, i) => 1000 + i),
    chunks,
  );
  p.close();
}));

test('an open pack left by a crash: every chunk a sync covered comes back, sealed into a valid pack', withDir(async (dir) => {
  const path = join(dir, '1-8.pack');
  const p = LocalPack.create(8, 1, path, CS, CAPACITY);
  const synced = await appendChunks(p, 500, 21);
  await p.sync();
  // Appended after the last sync: a commit could not have named these yet.
  await appendChunks(p, 521, 5);
  p.close(); // the process dies: no seal, no further sync

  const r = LocalPack.recover(8, 1, path, CS, CAPACITY);
  assert.equal(r.state, 'open');
  assert.ok(r.count >= 21, `the ${21} synced chunks are found (found ${r.count})`);
  assert.deepEqual(
    r.slots.slice(0, 21),
    synced.map((_, i) => 500 + i),
  );
  // The recovered pack takes more chunks and seals like any other.
  const more = await appendChunks(r, 2000, 3);
  const n = r.count;
  const slots = [...r.slots];
  await r.seal(true);
  const file = readFileSync(path);
  const entries = decodePack(file, path);
  assert.equal(entries.length, n);
  assert.deepEqual(
    entries.map((e) => e.id),
    slots,
  );
  for (let i = 0; i < 21; i++) assert.ok(file.subarray(entries[i].offset, entries[i].offset + CS).equals(synced[i]), `synced chunk ${i}`);
  for (let i = 0; i < 3; i++) assert.ok(file.subarray(entries[n - 3 + i].offset, entries[n - 3 + i].offset + CS).equals(more[i]), `chunk ${i} appended after the recovery`);
  r.close();
}));

test('syncs called around a seal: the file still ends at its trailer and decodes', withDir(async (dir) => {
  for (let round = 0; round < 20; round++) {
    const path = join(dir, `1-${round}.pack`);
    const p = LocalPack.create(round, 1, path, CS, CAPACITY);
    const chunks = await appendChunks(p, 10 * round, 9);
    const syncs = [p.sync(), p.sync(true)];
    const sealed = p.seal(true);
    syncs.push(p.sync());
    await Promise.all(syncs);
    const bytes = await sealed;
    assert.equal(readFileSync(path).length, bytes, `round ${round}: the file ends at the trailer`);
    expectPack(
      path,
      chunks.map((_, i) => 10 * round + i),
      chunks,
    );
    p.close();
  }
}));

/** Bytes of the file in the page cache (util-linux fincore). */
function residentBytes(path: string): number {
  const out = execFileSync('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES', path], { encoding: 'utf8' });
  return Number(out.trim());
}

/** Polls until the file's resident bytes are at most `max` (the drop runs on the thread pool); the last figure. */
async function residentAtMost(path: string, max: number): Promise<number> {
  let res = residentBytes(path);
  for (let i = 0; i < 100 && res > max; i++) {
    await new Promise((r) => setTimeout(r, 20));
    res = residentBytes(path);
  }
  return res;
}

test('a pack told to drop synced pages leaves the page cache at each sync and the seal, and still seals into a valid pack', withDir(async (dir) => {
  const big = 1024; // 4 MiB of chunks: well above what a few stray pages could account for
  const keep = LocalPack.create(1, 1, join(dir, 'keep.pack'), CS, big);
  const drop = LocalPack.create(2, 1, join(dir, 'drop.pack'), CS, big);
  drop.dropWhenSynced();
  const kept = await appendChunks(keep, 0, 512);
  const dropped = await appendChunks(drop, 0, 512);
  await Promise.all([keep.sync(), drop.sync()]);
  assert.ok((await residentAtMost(join(dir, 'drop.pack'), 64 * 1024)) <= 64 * 1024, 'the synced chunks left the page cache');
  assert.ok(residentBytes(join(dir, 'keep.pack')) >= 512 * CS, 'a pack not told to keeps its pages');
  const more = await appendChunks(drop, 512, 100);
  await drop.seal(true);
  assert.ok((await residentAtMost(join(dir, 'drop.pack'), 16 * 1024)) <= 16 * 1024, 'the seal dropped the rest');
  expectPack(
    join(dir, 'drop.pack'),
    [...dropped, ...more].map((_, i) => i),
    [...dropped, ...more],
  );
  await keep.seal(true);
  expectPack(
    join(dir, 'keep.pack'),
    kept.map((_, i) => i),
    kept,
  );
  keep.close();
  drop.close();
}));

test('a sparse copy is written O_DIRECT (chunk i at i × chunkSize) and never enters the page cache; it reads back through buffers and straight into cache frames', withDir(async (dir) => {
  const path = join(dir, 'sparse.pack');
  const copy = LocalPack.sparse(3, 1, path, CS, 2048);
  const data = native().alignedBuffer(1024 * CS); // what the fetcher reads ranges into
  randomFillSync(data);
  await copy.write(100, data);
  copy.markPresent(100, 1024);
  assert.equal(residentBytes(path), 0, 'written past the page cache');
  // The cache's own load path: its frames are filled by the copy's O_DIRECT reads.
  const store = { readChunks: (slots: ArrayLike<number>, targets: ChunkTargets) => copy.read(Array.from(slots), Array.from(slots, (_, i) => targets.view(i)), { targets, at: Array.from(slots, (_, i) => i) }) };
  const cache = new ChunkCache(64 * CS, CS, store as unknown as ChunkStore);
  const slots = Float64Array.from([1123, 100, 600]);
  await cache.load(slots, -1);
  const out = Buffer.alloc(3 * CS);
  assert.equal(cache.readChunks(slots, 3, out, 0, 0, out.length, -1, new Uint8Array(3)), 0, 'all three cached');
  assert.ok(out.equals(Buffer.concat([data.subarray(1023 * CS), data.subarray(0, CS), data.subarray(500 * CS, 501 * CS)])), 'frames hold the chunks');
  assert.equal(residentBytes(path), 0, 'the frames were filled past the page cache');
  const file = readFileSync(path);
  assert.ok(file.subarray(100 * CS, 1124 * CS).equals(data), 'chunk i at i × chunkSize');
  const bufs = Array.from({ length: 3 }, () => Buffer.alloc(CS));
  await copy.read([100, 101, 1123], bufs);
  assert.ok(bufs[0].equals(data.subarray(0, CS)) && bufs[1].equals(data.subarray(CS, 2 * CS)) && bufs[2].equals(data.subarray(1023 * CS)), 'read into buffers');
  copy.close();
}));

test('where O_DIRECT is refused (tmpfs), a sparse copy is written through the page cache and reads back the same', async () => {
  const dir = mkdtempSync('/dev/shm/shoal-local-pack-');
  try {
    const copy = LocalPack.sparse(4, 1, join(dir, 'sparse.pack'), CS, 64);
    const data = randomBytes(8 * CS); // not page-aligned: fine without O_DIRECT
    await copy.write(10, data);
    copy.markPresent(10, 8);
    const bufs = [Buffer.alloc(CS), Buffer.alloc(CS)];
    await copy.read([10, 17], bufs);
    assert.ok(bufs[0].equals(data.subarray(0, CS)) && bufs[1].equals(data.subarray(7 * CS)));
    copy.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
