// The chunk writes of one event-loop turn (server/store/batched-writes.ts): joined into runs of
// consecutive positions, short runs written on the event loop, and many short runs (a large write
// into freed slots scattered over the file) written together on the thread pool. Every write lands
// at its position, `written` hears of each run, and a failure reaches the writes it failed. With an
// O_DIRECT descriptor, long runs inside the file go past the page cache (Linux AIO), and a disk that
// refuses them (EINVAL) gets them through the page cache instead. With `stage`, short writes inside the
// file that the caller marks early are copied and answered at once, read back from memory, and written
// by drain() (a sync's first step).
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WriteBatcher } from '../../server/store/batched-writes.js';
import { native } from '../../server/native.js';

const CS = 4096;

function setup(): { path: string; fd: number; done(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-batcher-'));
  const path = join(dir, 'chunks');
  const fd = openSync(path, 'w+');
  return { path, fd, done: () => rmSync(dir, { recursive: true, force: true }) };
}

for (const [what, positions] of [
  ['a few short runs (on the event loop)', [7, 3, 4, 5, 20, 100, 101]],
  ['200 scattered one-chunk writes and two long runs (the short ones on the thread pool together)', [...Array.from({ length: 200 }, (_, i) => 1000 - i * 4), ...Array.from({ length: 40 }, (_, i) => 2000 + i), ...Array.from({ length: 33 }, (_, i) => 3000 + i)]],
] as const) {
  test(`one turn's writes land where they were asked to: ${what}`, async () => {
    const f = setup();
    try {
      const runs: Array<[number, number]> = [];
      const b = new WriteBatcher({ fd: () => f.fd, chunkSize: CS, base: CS, written: (pos, bytes) => runs.push([pos, bytes]), failure: (e) => e });
      const data = positions.map(() => randomBytes(CS));
      await Promise.all(positions.map((p, i) => b.write(p, data[i])));
      const file = readFileSync(f.path);
      positions.forEach((p, i) => assert.ok(file.subarray(CS + p * CS, CS + (p + 1) * CS).equals(data[i]), `chunk at ${p}`));
      // Each run told once, covering every chunk once.
      assert.equal(runs.reduce((n, [, bytes]) => n + bytes, 0), positions.length * CS);
      assert.equal(new Set(runs.map(([pos]) => pos)).size, runs.length);
    } finally {
      closeSync(f.fd);
      f.done();
    }
  });
}

test('a failed write batch rejects every write in it with the error the owner makes of it', async () => {
  const f = setup();
  closeSync(f.fd);
  try {
    const b = new WriteBatcher({ fd: () => f.fd, chunkSize: CS, base: 0, failure: (e, at) => new Error(`chunk ${at}: ${e.code}`) });
    const positions = Array.from({ length: 100 }, (_, i) => i * 3);
    const results = await Promise.allSettled(positions.map((p) => b.write(p, Buffer.alloc(CS))));
    for (const [i, r] of results.entries()) {
      assert.equal(r.status, 'rejected');
      assert.equal((r as PromiseRejectedResult).reason.message, `chunk ${positions[i]}: EBADF`);
    }
  } finally {
    f.done();
  }
});

/** The file opened O_DIRECT for writing, or null (skipped) where the filesystem refuses it. */
function directFd(t: TestContext, path: string): number | null {
  try {
    return native().openDirect(path, true);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EINVAL') throw e;
    t.skip(`${tmpdir()} does not take O_DIRECT`);
    return null;
  }
}

/** Runs `fn` over a scratch file and the file opened O_DIRECT (skipped where the filesystem refuses it), closing both after. */
async function withDirect(t: TestContext, fn: (f: { path: string; fd: number }, dfd: number) => Promise<void>): Promise<void> {
  const f = setup();
  const dfd = directFd(t, f.path);
  if (dfd === null) return f.done();
  try {
    await fn(f, dfd);
  } finally {
    closeSync(dfd);
    closeSync(f.fd);
    f.done();
  }
}

const scattered = (n: number, from: number) => Array.from({ length: n }, (_, i) => from - i * 4);
const run = (n: number, from: number) => Array.from({ length: n }, (_, i) => from + i);

for (const [what, positions, base, directRuns, upTo] of [
  // A few short runs stay on the event loop, through the page cache; the 64-chunk run goes direct.
  ['a long run past the page cache, short ones through it', [7, 3, 4, 5, ...run(64, 500)], 4096, 1, Infinity],
  // 200 one-chunk runs (a large write into scattered freed slots) and two long runs: the long ones direct.
  ['many short runs through the page cache, the long ones past it', [...scattered(200, 1000), ...run(40, 2000), ...run(33, 3000)], 4096, 2, Infinity],
  // Runs ending past the file's size (here 2500 chunks in) are written through the page cache.
  ['only runs inside the file past the page cache', [...scattered(200, 1000), ...run(40, 2000), ...run(33, 3000)], 4096, 1, 4096 + 2500 * CS],
  // Positions the disk cannot take directly: EINVAL, then the page cache.
  ['runs the disk refuses (EINVAL) written through the page cache instead', [...scattered(100, 1000), ...run(64, 3000)], 100, 0, Infinity],
] as const) {
  test(`one turn's writes land where they were asked to: ${what}`, async (t) => {
    await withDirect(t, async (f, dfd) => {
      const runs: Array<[number, number, boolean]> = [];
      const b = new WriteBatcher({ fd: () => f.fd, directFd: () => dfd, directUpTo: () => upTo, chunkSize: CS, base, written: (pos, bytes, direct) => runs.push([pos, bytes, direct]), failure: (e) => e });
      const data = positions.map(() => randomBytes(CS));
      await Promise.all(positions.map((p, i) => b.write(p, data[i])));
      const file = readFileSync(f.path);
      positions.forEach((p, i) => assert.ok(file.subarray(base + p * CS, base + (p + 1) * CS).equals(data[i]), `chunk at ${p}`));
      assert.equal(runs.reduce((n, [, bytes]) => n + bytes, 0), positions.length * CS);
      assert.equal(new Set(runs.map(([pos]) => pos)).size, runs.length);
      assert.equal(runs.filter(([, , direct]) => direct).length, directRuns, `direct runs: ${JSON.stringify(runs.map(([pos, bytes, d]) => [pos, bytes / CS, d]))}`);
      // Once refused, the next turn does not try again.
      if (base % 512 !== 0) {
        runs.length = 0;
        await Promise.all(run(64, 5000).map((p) => b.write(p, Buffer.alloc(CS, 1))));
        assert.deepEqual(runs, [[base + 5000 * CS, 64 * CS, false]]);
      }
      await b.whenIdle();
    });
  });
}

test('a direct run longer than a job is cut between its writes, and every part lands', async (t) => {
  await withDirect(t, async (f, dfd) => {
    const runs: Array<[number, number, boolean]> = [];
    const b = new WriteBatcher({ fd: () => f.fd, directFd: () => dfd, chunkSize: CS, base: 0, written: (pos, bytes, direct) => runs.push([pos, bytes, direct]), failure: (e) => e });
    // 40 writes of 256 KiB back to back: one run of 10 MiB, as a fill's turn makes (jobs are 8 MiB at most).
    const per = 64;
    const data = Array.from({ length: 40 }, () => randomBytes(per * CS));
    await Promise.all(data.map((d, i) => b.write(i * per, d)));
    runs.sort((x, y) => x[0] - y[0]);
    assert.deepEqual(runs, [
      [0, 8 * 1024 * 1024, true],
      [8 * 1024 * 1024, 2 * 1024 * 1024, true],
    ]);
    const file = readFileSync(f.path);
    data.forEach((d, i) => assert.ok(file.subarray(i * per * CS, (i + 1) * per * CS).equals(d), `write ${i}`));
    await b.whenIdle();
  });
});

test('a failed direct write rejects the writes of its run with the error the owner makes of it', async (t) => {
  const f = setup();
  const dfd = directFd(t, f.path);
  if (dfd === null) return f.done();
  closeSync(dfd);
  try {
    const b = new WriteBatcher({ fd: () => f.fd, directFd: () => dfd, chunkSize: CS, base: 0, failure: (e, at) => new Error(`chunk ${at}: ${e.code}`) });
    const positions = [...run(64, 0), ...run(64, 100)];
    const results = await Promise.allSettled(positions.map((p) => b.write(p, Buffer.alloc(CS))));
    for (const [i, r] of results.entries()) {
      assert.equal(r.status, 'rejected');
      assert.equal((r as PromiseRejectedResult).reason.message, `chunk ${positions[i] < 100 ? 0 : 100}: EBADF`);
    }
    await b.whenIdle();
  } finally {
    closeSync(f.fd);
    f.done();
  }
});

/** A batcher that stages short writes inside the file, over `f`, with every run it writes noted in `runs`. */
function stagingBatcher(f: { fd: number }, dfd: number, runs: Array<[number, number, boolean]>, failure = (e: NodeJS.ErrnoException, at: number) => new Error(`chunk ${at}: ${e.code}`)): WriteBatcher {
  return new WriteBatcher({ fd: () => f.fd, directFd: () => dfd, directUpTo: () => 2 ** 40, chunkSize: CS, base: 0, stage: true, written: (pos, bytes, direct) => runs.push([pos, bytes, direct]), failure });
}

test('early writes are staged: answered before they are written, read back from memory, and written past the page cache by drain()', async (t) => {
  await withDirect(t, async (f, dfd) => {
    const runs: Array<[number, number, boolean]> = [];
    const b = stagingBatcher(f, dfd, runs);
    const positions = [...scattered(10, 300), 7, 8];
    const data = positions.map(() => randomBytes(CS));
    const kept = data.map((d) => Buffer.from(d));
    await Promise.all(positions.map((p, i) => b.write(p, data[i], true)));
    for (const d of data) d.fill(0); // the caller's buffers are reused (the payload pool): a copy was staged
    assert.deepEqual(runs, [], 'nothing written yet');
    assert.equal(readFileSync(f.path).length, 0);
    assert.ok(b.holding);
    positions.forEach((p, i) => assert.ok(b.heldChunk(p)?.equals(kept[i]), `chunk ${p} read back from memory`));
    assert.equal(b.heldChunk(9), undefined);
    await b.drain();
    const file = readFileSync(f.path);
    positions.forEach((p, i) => assert.ok(file.subarray(p * CS, (p + 1) * CS).equals(kept[i]), `chunk ${p} on disk`));
    assert.ok(runs.length > 0 && runs.every(([, , direct]) => direct), `written direct: ${JSON.stringify(runs)}`);
    assert.equal(runs.reduce((n, [, bytes]) => n + bytes, 0), positions.length * CS);
    assert.equal(b.holding, false);
    assert.equal(b.heldChunk(300), undefined);
  });
});

test('a write not marked early is not staged: written when it resolves', async (t) => {
  await withDirect(t, async (f, dfd) => {
    const runs: Array<[number, number, boolean]> = [];
    const b = stagingBatcher(f, dfd, runs);
    const d = randomBytes(CS);
    await b.write(30, d);
    assert.equal(b.holding, false);
    assert.ok(readFileSync(f.path).subarray(30 * CS, 31 * CS).equals(d));
    assert.deepEqual(runs, [[30 * CS, CS, false]]);
  });
});

test('staged writes are sent once a slab of them has gathered, without waiting for a sync', async (t) => {
  await withDirect(t, async (f, dfd) => {
    const runs: Array<[number, number, boolean]> = [];
    const b = stagingBatcher(f, dfd, runs);
    const positions = scattered(300, 5000); // 300 × 4 KiB: one slab (1 MiB) full, 44 writes over
    await Promise.all(positions.map((p) => b.write(p, randomBytes(CS), true)));
    await b.whenIdle(); // sends the rest too, then waits for both
    assert.equal(runs.reduce((n, [, bytes]) => n + bytes, 0), 300 * CS);
    assert.equal(b.holding, false);
  });
});

test('while staged writes are being written, short writes of the turn go to the thread pool, not the event loop', async (t) => {
  await withDirect(t, async (f, dfd) => {
    let turnEnded = false;
    const writtenAfterTurn: boolean[] = [];
    const b = new WriteBatcher({
      fd: () => f.fd,
      directFd: () => dfd,
      directUpTo: () => 2 ** 40,
      chunkSize: CS,
      base: 0,
      stage: true,
      written: (pos, _bytes, direct) => {
        if (!direct) writtenAfterTurn.push(turnEnded);
      },
      failure: (e) => e,
    });
    // A slab's worth of early writes: sent now, still being written when the turn ends.
    await Promise.all(scattered(256, 5000).map((p) => b.write(p, randomBytes(CS), true)));
    // Two plain writes in one turn: on the event loop, ext4's inode lock could hold it behind the direct ones.
    const plain = [b.write(9000, randomBytes(CS)), b.write(9100, randomBytes(CS))];
    setImmediate(() => (turnEnded = true)); // runs right after the batcher's turn
    await Promise.all(plain);
    assert.deepEqual(writtenAfterTurn, [true, true], 'written after the turn, not in it');
    await b.drain();
  });
});

test('a staged write that fails fails the drain and every drain after it, and its bytes stay readable', async (t) => {
  const f = setup();
  const probe = directFd(t, f.path);
  if (probe === null) return f.done();
  closeSync(probe);
  const readOnly = openSync(f.path, 'r'); // writes to it fail with EBADF
  try {
    const b = stagingBatcher(f, readOnly, []);
    const d = randomBytes(CS);
    await b.write(40, d, true);
    await assert.rejects(b.drain(), /chunk 40: EBADF/);
    await assert.rejects(b.drain(), /chunk 40: EBADF/, 'a second sync must not succeed over the lost write');
    assert.ok(b.heldChunk(40)?.equals(d), 'reads still find the bytes');
  } finally {
    closeSync(readOnly);
    closeSync(f.fd);
    f.done();
  }
});

test('a place staged and not yet written, written again, ends with the later bytes', async (t) => {
  await withDirect(t, async (f, dfd) => {
    const b = stagingBatcher(f, dfd, []);
    const older = randomBytes(CS);
    const newer = randomBytes(CS);
    await b.write(12, older, true);
    assert.ok(b.heldChunk(12)?.equals(older), 'staged');
    await b.write(12, newer, true); // waits for the staged one to be written first
    await b.drain();
    assert.ok(readFileSync(f.path).subarray(12 * CS, 13 * CS).equals(newer));
    assert.equal(b.heldChunk(12), undefined);
  });
});
