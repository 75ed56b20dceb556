// The sharing figures' background walk (server/volume/sharing-figures.ts) gives the event loop back to
// clients: while requests arrive it rests fifteen times as long as each slice took, twice while idle.
// Here the same walk of a 200,000-chunk map runs once with a request count that stands still and once
// with one that moves every millisecond. The walk's own tally of its slices and rests shows the pacing
// (a timed ratio of the two walks' wall times flaked on loaded CI machines, whose slices stretch); the
// wall time shows the rests were really taken. Both walks give the same figures.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetaStore } from '../../server/meta/meta-store.js';
import { setEntry } from '../../server/meta/map-tree.js';
import { levelsFor } from '../../server/meta/map-node.js';
import type { RootRecord } from '../../server/meta/volume-records.js';
import { SharingFigures } from '../../server/volume/sharing-figures.js';
import type { VolumeState } from '../../server/volume/volume-state.js';

const CHUNKS = 200_000;

test('the background walk rests longer while clients are served, with the same figures', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-sharing-pacing-'));
  const meta = MetaStore.open(dir, { chunkSize: 4096 });
  try {
    const fp = Buffer.alloc(32);
    const record: RootRecord = { root: 0, levels: levelsFor(CHUNKS), size: CHUNKS * 4096, mapped: 0, createdAt: '' };
    for (let ci = 0; ci < CHUNKS; ci++) {
      const slot = ci + 2;
      meta.chunks.add(slot, 0, fp, 0);
      setEntry(meta, record, ci, slot);
    }
    meta.chunks.inc(7); // one chunk shared: the walk reads the refcounts
    await meta.commit(); // read back from LMDB, as in a daemon
    const vol = { name: 'v', deleted: false, record } as unknown as VolumeState;

    const walk = async (requests: () => number) => {
      const figures = new SharingFigures(meta, () => [vol], 3_600_000, requests);
      const t0 = performance.now();
      figures.start();
      try {
        while (figures.get('v') === null) await new Promise((r) => setTimeout(r, 5));
      } finally {
        figures.stop();
      }
      return { ms: performance.now() - t0, figure: figures.get('v')!, pacing: figures.pacing };
    };

    const idle = await walk(() => 0);
    let n = 0;
    const ticker = setInterval(() => n++, 1);
    let busy;
    try {
      busy = await walk(() => n);
    } finally {
      clearInterval(ticker);
    }
    assert.deepEqual([idle.figure.exclusive, idle.figure.shared], [(CHUNKS - 1) * 4096, 4096]);
    assert.deepEqual([busy.figure.exclusive, busy.figure.shared], [idle.figure.exclusive, idle.figure.shared]);
    const show = (w: typeof idle) => JSON.stringify({ ...w.pacing, wallMs: Math.round(w.ms) });
    // Idle: every rest an idle one, twice its slice.
    const ip = idle.pacing;
    assert.ok(ip.idleRests >= 3 && ip.busyRests === 0, `idle walk: ${show(idle)}`);
    assert.ok(ip.restMs >= 1.9 * ip.sliceMs && ip.restMs <= 2.6 * ip.sliceMs, `idle walk rests ~2x its slices: ${show(idle)}`);
    // Busy: the first rest is idle (requests are only taken during rests), every later one busy, 15
    // times its slice (at most 200 ms each, so a slice stretched past 13 ms by a loaded machine rests
    // less: 5x still tells it from an idle pacing's 2x).
    const bp = busy.pacing;
    assert.ok(bp.idleRests <= 1 && bp.busyRests >= 3, `busy walk: ${show(busy)}`);
    assert.ok(bp.restMs >= 5 * bp.sliceMs, `busy walk rests 15x its slices: ${show(busy)}`);
    // The rests were taken: each walk lasted at least its rests (timers fire up to 1 ms early).
    for (const w of [idle, busy]) assert.ok(w.ms >= w.pacing.restMs - (w.pacing.idleRests + w.pacing.busyRests), `rests taken: ${show(w)}`);
  } finally {
    await meta.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
