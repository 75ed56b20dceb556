// The chunk writes of one event-loop turn (server/store/batched-writes.ts): joined into runs of
// consecutive positions, short runs written on the event loop, and many short runs (a large write
// into freed slots scattered over the file) written together on the thread pool. Every write lands
// at its position, `written` hears of each run, and a failure reaches the writes it failed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WriteBatcher } from '../../server/store/batched-writes.js';

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
