// The durable free list (server/meta/slot-allocator.ts): freed slots are written as a group per
// commit and moved onto a paged stack, and reused once their free is durable. A freed slot must never
// be lost (the chunk file would grow forever) nor handed out twice (two chunks in one slot), across
// kill -9 and restarts, and a store whose free list has a record per slot (before the pages) is
// rewritten as pages by the next daemon and reads the same to an offline check before that.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { open } from 'lmdb';
import { startDaemon, MAIN, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { expectFsckClean, withHandle, MiB } from '../helpers/volume-io.js';
import { META_VERSION } from '../../server/meta/superblock.js';

const chunkFileBytes = (d: Daemon) => statSync(join(d.dataDir, 'chunks.dat')).size;

/**
 * The free-slots database of a stopped daemon's metadata: its keys, every slot it lists, and the
 * superblock's version; `rewriteLegacy` turns it back into a store of before (version 1, a record per slot).
 */
async function freeList(dir: string, rewriteLegacy = false): Promise<{ keys: unknown[]; slots: number[]; version: number }> {
  const env = open({ path: join(dir, 'meta.lmdb'), maxDbs: 16 } as any);
  const db = env.openDB({ name: 'free-slots', encoding: 'msgpack' });
  const main = env.openDB({ name: 'main', encoding: 'msgpack' });
  const sb = main.get('superblock') as { version: number };
  const keys: unknown[] = [];
  const slots: number[] = [];
  for (const { key, value } of db.getRange({})) {
    keys.push(key);
    if (typeof key === 'number') slots.push(key);
    else slots.push(...(value as number[]));
  }
  if (rewriteLegacy)
    env.transactionSync(() => {
      for (const k of keys) db.removeSync(k as any);
      for (const s of slots) db.putSync(s, 1);
      main.putSync('superblock', { ...sb, version: 1 });
    });
  await env.close();
  return { keys, slots, version: sb.version };
}

async function writeRandom(d: Daemon, vol: string, bytes: number): Promise<void> {
  await withHandle(d, vol, `import os\nfor off in range(0, ${bytes}, 1024 * 1024):\n    h.pwrite(os.urandom(1024 * 1024), off)\nh.flush()`);
}

test('freed slots are reused after kill -9 and restarts, never twice, and a free list of a record per slot is rewritten as pages', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_GC_SLICE_MS: '0' } });
  try {
    await d.createVolume('a', 32 * MiB);
    await d.createVolume('b', 32 * MiB);
    await writeRandom(d, 'a', 16 * MiB);
    await writeRandom(d, 'b', 8 * MiB);
    const full = chunkFileBytes(d);
    // Overwriting frees every old chunk of `a`, a slot at a time, while new ones are placed.
    await writeRandom(d, 'a', 16 * MiB);
    await d.kill9();
    await d.start();
    await expectFsckClean(d);
    // Deleting `a` frees its 4096 chunks; its space is reused by `c` after a restart.
    assert.equal((await d.api('DELETE', '/v1/volumes/a')).status, 204);
    for (let i = 0; i < 100; i++) {
      if ((await d.api('GET', '/v1/stats')).body.reclaim.pendingNodes === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await d.stop();
    const pages = await freeList(d.dataDir);
    assert.ok(pages.slots.length >= 4096, `a's chunks are on the free list: ${pages.slots.length}`);
    assert.equal(new Set(pages.slots).size, pages.slots.length, 'no slot listed twice');
    assert.ok(pages.keys.length < pages.slots.length / 100, `the free list is pages and groups, not a record per slot: ${pages.keys.length} records`);
    assert.equal(pages.version, META_VERSION, 'a store with pages says so (a daemon of before refuses it)');

    // Back to a record per slot, as a store of before the pages has it: an offline check reads it as
    // it is and changes nothing; the daemon rewrites it as pages and reuses every slot.
    await freeList(d.dataDir, true);
    const offline = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
    assert.equal(offline.status, 0, offline.stdout + offline.stderr);
    const unchanged = await freeList(d.dataDir);
    assert.equal(unchanged.keys.length, pages.slots.length, 'the offline check left the records as they were');
    assert.equal(unchanged.version, 1, 'and the version');
    await d.start();
    const before = chunkFileBytes(d);
    await d.createVolume('c', 32 * MiB);
    await writeRandom(d, 'c', 16 * MiB);
    await d.kill9();
    await d.start();
    await expectFsckClean(d);
    assert.equal(chunkFileBytes(d), before, 'the 16 MiB went into freed slots: the chunk file did not grow');
    assert.ok(before <= full + 16 * MiB, `the overwrite reused freed slots too (${before} bytes after ${full})`);
    await d.stop();
    const after = await freeList(d.dataDir);
    assert.ok(after.keys.every((k) => Array.isArray(k)), 'rewritten as pages');
    assert.equal(after.version, META_VERSION, 'upgraded');
    assert.equal(new Set(after.slots).size, after.slots.length, 'no slot listed twice');
    await d.start();
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});
