// The metadata commit makes the chunks it names durable first, with the chunk store's sync()
// (invariant 2: a power cut after a commit must not lose its chunks). The local store skips the
// fdatasync when nothing was written since the last one, so it must count every write, whether it
// went through the page cache or past it (O_DIRECT, server/store/batched-writes.ts): a run written
// direct leaves no dirty page, yet still sits in the disk's volatile cache until the sync flushes it; and
// a short write inside the file is held in memory (staged) until the sync writes it, before its fdatasync.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CHUNK_FILE, LocalChunkStore } from '../../server/store/local-chunk-store.js';

const CS = 4096;

test('a sync follows every write, through the page cache or past it, and only then', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-chunk-sync-'));
  const store = await LocalChunkStore.open(dir, CS);
  try {
    const syncs = () => store.stats().syncs;
    await store.sync();
    assert.equal(syncs(), 0, 'nothing written: no fdatasync');

    // A lone small write: through the page cache.
    const small = randomBytes(CS);
    await store.write(3, small);
    assert.equal(store.stats().directWrites, 0);
    await store.sync();
    assert.equal(syncs(), 1, 'a buffered write is synced');
    await store.sync();
    assert.equal(syncs(), 1, 'and not twice');

    // A run of 64 chunks past the file's end: through the page cache (a direct write extending the
    // file would hold the inode's lock until the disk has it).
    await store.write(100, randomBytes(64 * CS));
    assert.equal(store.stats().directWrites, 0, 'a run that extends the file is buffered');
    await store.sync();
    assert.equal(syncs(), 2);

    // The same run again, inside the file now: past the page cache where the filesystem takes O_DIRECT.
    const big = randomBytes(64 * CS);
    await store.write(100, big);
    const direct = store.stats().direct;
    assert.equal(store.stats().directWrites, direct ? 1 : 0, `direct writes where reads are direct: ${JSON.stringify(store.stats())}`);
    await store.sync();
    assert.equal(syncs(), 3, 'a run written past the page cache is synced too');
    await store.sync();
    assert.equal(syncs(), 3);

    // Small writes inside the file that the caller marks early: staged in memory where the file takes
    // O_DIRECT (answered before they are written), read back from there, and written by the next sync
    // before its fdatasync.
    const staged = [randomBytes(CS), randomBytes(CS)];
    await store.write(110, staged[0], true);
    await store.write(120, staged[1], true);
    assert.equal(store.stats().stagedWrites, direct ? 2 : 0);
    if (direct) assert.ok(readFileSync(join(dir, CHUNK_FILE)).subarray(110 * CS, 111 * CS).equals(big.subarray(10 * CS, 11 * CS)), 'not written yet');
    const back = [Buffer.alloc(CS), Buffer.alloc(CS)];
    await store.readChunks([120, 110], { count: 2, view: (i) => back[i] });
    assert.ok(back[0].equals(staged[1]) && back[1].equals(staged[0]), 'a read finds the staged bytes');
    await store.sync();
    assert.equal(syncs(), 4, 'staged writes are synced');

    const file = readFileSync(join(dir, CHUNK_FILE));
    assert.ok(file.subarray(3 * CS, 4 * CS).equals(small));
    assert.ok(file.subarray(100 * CS, 110 * CS).equals(big.subarray(0, 10 * CS)));
    assert.ok(file.subarray(110 * CS, 111 * CS).equals(staged[0]), 'the sync wrote the staged chunks first');
    assert.ok(file.subarray(120 * CS, 121 * CS).equals(staged[1]));
    assert.ok(file.subarray(121 * CS, 164 * CS).equals(big.subarray(21 * CS)));
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
