// A write smaller than a chunk is a read-modify-write of the chunk, and writes sharing a chunk are
// serialised by the volume's range lock (server/volume/range-lock.ts): a free range is taken at once,
// a held one queues its waiters. Here hundreds of small writes sharing a few chunks are all in flight
// at once on one connection, some of them across a chunk boundary, and every byte of each must land;
// a lock that let two writes of one chunk through together would lose one of them. Then the same
// after a restart (the commit stored them), and fsck.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { startDaemon } from '../helpers/daemon.js';
import { needTools } from '../helpers/tools.js';
import { expectFsckClean, withHandle } from '../helpers/volume-io.js';

const SCRIPT = `
import hashlib
# 512 writes of 24 bytes side by side over chunks 0-2 (4 KiB each): 12 KiB, some crossing a boundary.
N, W = 512, 24
for i in range(N):
    h.aio_pwrite(bytes([(i * 7 + k) % 251 for k in range(W)]), 100 + i * W)
assert h.aio_in_flight() > 1
while h.aio_in_flight() > 0:
    h.poll(-1)
# And 64 writes of 8 bytes into the middle of one chunk, every other 8 bytes, sent at once twice.
for rnd in range(2):
    for i in range(64):
        h.aio_pwrite(bytes([rnd * 64 + i + 1]) * 8, 5 * 4096 + i * 16)
    while h.aio_in_flight() > 0:
        h.poll(-1)
print(hashlib.sha256(h.pread(8 * 4096, 0)).hexdigest())
`;

function expected(): string {
  const b = Buffer.alloc(8 * 4096);
  for (let i = 0; i < 512; i++) for (let k = 0; k < 24; k++) b[100 + i * 24 + k] = (i * 7 + k) % 251;
  for (let i = 0; i < 64; i++) b.fill(64 + i + 1, 5 * 4096 + i * 16, 5 * 4096 + i * 16 + 8);
  return createHash('sha256').update(b).digest('hex');
}

test('small writes sharing chunks, all in flight at once: every byte lands, and stays after a restart', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon();
  try {
    await d.createVolume('v', 1024 * 1024);
    const want = expected();
    assert.equal((await withHandle(d, 'v', SCRIPT)).trim(), want, 'the bytes read back after the concurrent writes');
    await d.restart();
    const again = await withHandle(d, 'v', 'import hashlib\nprint(hashlib.sha256(h.pread(8 * 4096, 0)).hexdigest())');
    assert.equal(again.trim(), want, 'the same bytes after a restart');
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});
