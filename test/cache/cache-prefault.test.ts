// --cache-prefault on: the cache's arena is faulted in at start by a thread of idle priority, while the
// daemon serves: reads and writes during it come back byte for byte (the fault-in never changes a page),
// the stats say when it is done, and the daemon's RSS then holds the whole arena; without the flag the
// arena stays lazy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomFillSync, createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, runOk } from '../helpers/tools.js';
import { MiB } from '../helpers/volume-io.js';

const CACHE = 256 * MiB;

function rss(d: Daemon): number {
  const kb = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${d.proc.pid}/status`, 'utf8'))?.[1];
  return Number(kb) * 1024;
}

async function prefaulted(d: Daemon): Promise<number> {
  return ((await d.api('GET', '/v1/stats')).body as { cache: { prefaultedBytes: number } }).cache.prefaultedBytes;
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

  const deadline = Date.now() + 60_000;
  while ((await prefaulted(on)) < CACHE && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.equal(await prefaulted(on), CACHE, 'the whole arena faulted in');
  assert.ok(rss(on) >= CACHE, `RSS ${rss(on)} holds the ${CACHE}-byte arena`);
  await runOk('nbdcopy', [on.unixUri('v'), back]);
  assert.equal(sha(readFileSync(back)), sha(data), 'and again after it');

  // Without the flag the arena stays lazy: only what the cache used is in memory.
  await off.createVolume('v', 64 * MiB);
  await runOk('nbdcopy', ['--flush', image, off.unixUri('v')]);
  assert.equal(await prefaulted(off), 0);
  assert.ok(rss(off) < rss(on) - 64 * MiB, `off: RSS ${rss(off)} against ${rss(on)} with the whole arena`);
});
