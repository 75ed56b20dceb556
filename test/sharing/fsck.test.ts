// `shoal fsck DATA_DIR` proves refcounts exact, and finds each kind of damage: a wrong count, a
// reference to a missing chunk, a leaked chunk, a missing map node. A damaged data directory
// stops the daemon at start with a sentence, not a crash (invariant 7).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, renameSync, truncateSync, unlinkSync } from 'node:fs';
import { open } from 'lmdb';
import { join } from 'node:path';
import { startDaemon, MAIN, Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { withHandle, MiB } from '../helpers/volume-io.js';

async function fsck(dir: string) {
  return run(process.execPath, [MAIN, 'fsck', dir]);
}

/** Opens the stopped daemon's metadata directly, as a disk error or a bug would change it. */
async function tamper(dir: string, fn: (dbs: { chunks: any; nodes: any; main: any }) => void): Promise<void> {
  const env = open({ path: join(dir, 'meta.lmdb'), maxDbs: 16 } as any);
  const chunks = env.openDB({ name: 'chunks', encoding: 'binary' });
  const nodes = env.openDB({ name: 'nodes', encoding: 'binary' });
  const main = env.openDB({ name: 'main', encoding: 'msgpack' });
  env.transactionSync(() => fn({ chunks, nodes, main }));
  await env.close();
}

test('fsck finds wrong counts, missing chunks, leaks and missing nodes, and exits non-zero', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon();
  try {
    await d.createVolume('v', 64 * MiB);
    await withHandle(d, 'v', `import os\nh.pwrite(os.urandom(4 * 1024 * 1024), 0)\nh.flush()`);
    await d.api('POST', '/v1/volumes/v/snapshots', { name: 's' });
    await d.stop();
    const clean = await fsck(d.dataDir);
    assert.equal(clean.status, 0, clean.stdout + clean.stderr);

    // The chunk store checks itself: a chunk file cut short, then gone, are reported.
    const chunkFile = join(d.dataDir, 'chunks.dat');
    copyFileSync(chunkFile, chunkFile + '.saved');
    truncateSync(chunkFile, 4096);
    const short = await fsck(d.dataDir);
    assert.equal(short.status, 1);
    assert.match(short.stdout + short.stderr, /the chunk file is 4096 bytes, too short for chunk \d+/);
    unlinkSync(chunkFile);
    const gone = await fsck(d.dataDir);
    assert.equal(gone.status, 1);
    assert.match(gone.stdout + gone.stderr, /the chunk file .*chunks\.dat is missing/);
    assert.equal(existsSync(chunkFile), false, 'an offline fsck creates nothing');
    renameSync(chunkFile + '.saved', chunkFile);
    assert.equal((await fsck(d.dataDir)).status, 0, 'clean again with the file back');



    // A wrong refcount on one chunk, a chunk record deleted, a leaked record added.
    let slots: number[] = [];
    await tamper(d.dataDir, ({ chunks }) => {
      slots = [...chunks.getKeys({ limit: 3 })] as number[];
      const rec = Buffer.from(chunks.getBinary(slots[0]));
      rec.writeUInt32LE(rec.readUInt32LE(0) + 5, 0);
      chunks.putSync(slots[0], rec);
      chunks.removeSync(slots[1]);
      const leak = Buffer.alloc(40);
      leak.writeUInt32LE(1, 0);
      chunks.putSync(999_999, leak);
    });
    const bad = await fsck(d.dataDir);
    assert.equal(bad.status, 1, 'fsck must fail on damage');
    const out = bad.stdout + bad.stderr;
    assert.match(out, new RegExp(`chunk ${slots[0]}: refcount is \\d+, but 1 map entr`));
    assert.match(out, new RegExp(`chunk ${slots[1]} is referenced by 1 map entry but is missing`));
    assert.match(out, /chunk 999999 is leaked/);

    // A map node deleted under a volume.
    await tamper(d.dataDir, ({ nodes }) => {
      const first = [...nodes.getKeys({ limit: 1 })][0];
      nodes.removeSync(first);
    });
    const worse = await fsck(d.dataDir);
    assert.equal(worse.status, 1);
    assert.match(worse.stdout + worse.stderr, /map node \d+ is referenced but missing/);

    // Not a data directory at all.
    const none = await fsck(join(d.dataDir, 'nope'));
    assert.notEqual(none.status, 0);
    assert.match(none.stdout + none.stderr, /not a Shoal data directory/);
  } finally {
    await d.dispose();
  }
});

test('a damaged data directory stops the daemon with a sentence', async () => {
  const d = await startDaemon();
  await d.stop();
  await tamper(d.dataDir, ({ main }) => main.putSync('superblock', { version: 99, garbage: true }));
  const again = new Daemon({ dataDir: d.dataDir });
  await assert.rejects(again.start(), (e: Error) => /superblock is damaged or of an unknown version/.test(e.message) && !/at Object\.|TypeError/.test(e.message.split('\n')[1] ?? ''));
  // Records without a superblock: refuse to start over on top of them.
  const d2 = await startDaemon();
  await d2.createVolume('keep', MiB);
  await d2.stop();
  await tamper(d2.dataDir, ({ main }) => main.removeSync('superblock'));
  const again2 = new Daemon({ dataDir: d2.dataDir });
  await assert.rejects(again2.start(), /has records but no superblock/);
  await d.dispose();
  await d2.dispose();
});
