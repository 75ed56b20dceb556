// --cache-prefault on: the cache's arena is faulted in at start by a thread of idle priority, while the
// daemon serves: reads and writes during it come back byte for byte (the fault-in never changes a page),
// the stats say when it is done, and the daemon's RSS then holds the whole arena; without the flag the
// arena stays lazy. The faulting holds while clients write (requests that do not fill the cache). The
// native arena says when its faulting thread has ended, however it ends: the daemon's steering timer
// stops on that, not on the arena being whole (which the host may never allow).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomFillSync, createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, runOk } from '../helpers/tools.js';
import { MiB } from '../helpers/volume-io.js';
import { native } from '../../server/native.js';

const CACHE = 256 * MiB;

function rss(d: Daemon): number {
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${d.proc.pid}/status`, 'utf8'))?.[1];
  return Number(kb) * 1024;
}

test('--cache-prefault on: the whole arena is faulted in while the daemon serves, every byte read back as written; off: it stays lazy', async (t) => {
  if (!needTools(t, 'nbdcopy')) return;
  const on = await startDaemon({ args: ['--cache-size', '256M', '--cache-prefault', 'on'] });
  const off = await startDaemon({ args: ['--cache-size', '256M'] });
  t.after(async () => {
    await on.dispose();
    await off.dispose();
  });
  // I/O at once, while the arena is being faulted in.
  await on.createVolume('v', 64 * MiB);
  const image = join(on.dataDir, 'image.raw');
  const data = Buffer.alloc(64 * MiB);
  randomFillSync(data);
  writeFileSync(image, data);
  await runOk('nbdcopy', ['--flush', image, on.unixUri('v')]);
  const back = join(on.dataDir, 'back.raw');
  await runOk('nbdcopy', [on.unixUri('v'), back]);
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  assert.equal(sha(readFileSync(back)), sha(data), 'read back as written');

  assert.equal(await on.waitPrefaulted(CACHE, 60_000), CACHE, 'the whole arena faulted in');
  assert.ok(rss(on) >= CACHE, `RSS ${rss(on)} holds the ${CACHE}-byte arena`);
  await runOk('nbdcopy', [on.unixUri('v'), back]);
  assert.equal(sha(readFileSync(back)), sha(data), 'and again after it');

  // Without the flag the arena stays lazy: only what the cache used is in memory.
  await off.createVolume('v', 64 * MiB);
  await runOk('nbdcopy', ['--flush', image, off.unixUri('v')]);
  assert.equal(await off.prefaultedBytes(), 0);
  assert.ok(rss(off) < rss(on) - 64 * MiB, `off: RSS ${rss(off)} against ${rss(on)} with the whole arena`);
});

test('--cache-prefault on: the faulting waits while clients write (it would slow them) and finishes once they stop', async (t) => {
  if (!needTools(t, 'fio')) return;
  const ARENA = 3 * 1024 * MiB; // several seconds of faulting here: the writes start well before its end
  const d = await startDaemon({ args: ['--cache-size', '3G', '--cache-prefault', 'on'] });
  t.after(() => d.dispose());
  await d.createVolume('v', 256 * MiB);
  const fio = runOk('fio', ['--ioengine=nbd', `--uri=${d.unixUri('v')}`, '--name=w', '--rw=randwrite', '--bs=4k', '--iodepth=8', '--size=256m', '--time_based', '--runtime=4'], { cwd: d.dataDir });
  await new Promise((r) => setTimeout(r, 1000)); // fio is writing, and the daemon has seen it
  const during = await d.prefaultedBytes();
  await new Promise((r) => setTimeout(r, 2000));
  const later = await d.prefaultedBytes();
  await fio;
  assert.ok(during < ARENA, `the arena was not all in (${during} bytes) before the writes: the test shows nothing`);
  assert.ok(later - during <= 8 * MiB, `${later - during} bytes faulted in during 2 s of writes: at most the step under way when they began`);
  assert.equal(await d.waitPrefaulted(ARENA, 120_000), ARENA, 'the whole arena faulted in once the writes stopped');
});

test('the native arena reports its faulting thread running, then ended; a hold before any start starts nothing', async () => {
  const h = new (native().NativeChunkCache)(64 * MiB, 4096);
  assert.equal(h.stats().prefaulting, false, 'nothing runs before prefault()');
  assert.equal(h.prefault(false), false, 'a hold before any start reports no thread');
  assert.equal(h.stats().prefaulting, false, 'and starts none');
  assert.equal(h.stats().prefaultedBytes, 0);
  if (!h.prefault(true)) return; // a kernel without MADV_POPULATE_WRITE: the arena stays lazy
  const arena = h.stats().arenaBytes;
  for (let i = 0; h.stats().prefaulting; i++) {
    assert.ok(i < 300, 'the faulting thread did not end within 30 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(h.stats().prefaultedBytes, arena, 'it ended with the whole arena in');
  assert.equal(h.prefault(true), true, 'a second start reports the thread started before');
  assert.equal(h.stats().prefaulting, false, 'and starts no other');
});

