// No destructive call by accident: shrinking a volume needs "shrink": true (as qemu-img resize
// --shrink), deleting one that has snapshots needs ?recursive=true (as zfs destroy -r). Without
// them the call is refused with 409, says what would be lost, and changes nothing.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools } from '../helpers/tools.js';
import { withHandle, expectApiError, expectFsckClean, MiB } from '../helpers/volume-io.js';

let d: Daemon;
before(async () => {
  d = await startDaemon();
});
after(async () => {
  await d?.dispose();
});

test('a shrink without "shrink": true is refused with the bytes it would discard, and the data stays', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  await d.createVolume('gold', 20 * MiB);
  // 3 MiB written past 1 MiB, and 4 KiB inside the first MiB.
  await withHandle(d, 'gold', `h.pwrite(b'\\x01' * 4096, 0)\nh.pwrite(b'\\x5a' * (3 * 1024 * 1024), 8 * 1024 * 1024)\nh.flush()`);
  const r = await d.api('PATCH', '/v1/volumes/gold', { size: '1K' });
  expectApiError(r, 409, 'shrink_not_allowed');
  // Past 1 KiB: 3 KiB of the first chunk and the 3 MiB.
  assert.match(r.body.error.message, /from 20 MiB to 1 KiB would discard 3 MiB \(3148800 bytes\) of data written past the new end.*"shrink": true/);
  const v = (await d.api('GET', '/v1/volumes/gold')).body;
  assert.equal(v.size, 20 * MiB);
  assert.equal(v.mappedBytes, 3 * MiB + 4096);
  const still = await withHandle(d, 'gold', `print(h.pread(3 * 1024 * 1024, 8 * 1024 * 1024) == b'\\x5a' * (3 * 1024 * 1024))`);
  assert.match(still, /True/);

  // "shrink": false is the same refusal; a shrink of an unwritten tail still needs the flag, and says nothing is written there.
  expectApiError(await d.api('PATCH', '/v1/volumes/gold', { size: '1K', shrink: false }), 409, 'shrink_not_allowed');
  const tail = await d.api('PATCH', '/v1/volumes/gold', { size: '16M' });
  expectApiError(tail, 409, 'shrink_not_allowed');
  assert.match(tail.body.error.message, /nothing is written there now/);
  expectApiError(await d.api('PATCH', '/v1/volumes/gold', { size: '1K', shrink: 'yes' }), 400, 'invalid_request');
  assert.equal((await d.api('GET', '/v1/volumes/gold')).body.size, 20 * MiB);

  // Growing needs nothing; a confirmed shrink does it.
  assert.equal((await d.api('PATCH', '/v1/volumes/gold', { size: '24M' })).body.size, 24 * MiB);
  const ok = await d.api('PATCH', '/v1/volumes/gold', { size: '4M', shrink: true });
  assert.equal(ok.status, 200, JSON.stringify(ok.body));
  assert.equal(ok.body.size, 4 * MiB);
  assert.equal(ok.body.mappedBytes, 4096);
  await expectFsckClean(d);
});

test('deleting a volume with snapshots without ?recursive=true is refused, naming them and its clones', async () => {
  await d.createVolume('base', 8 * MiB);
  for (const s of ['v1', 'v2']) assert.equal((await d.api('POST', '/v1/volumes/base/snapshots', { name: s })).status, 201);
  for (let i = 0; i < 3; i++) assert.equal((await d.api('POST', '/v1/volumes', { name: `vm${i}`, from: { volume: 'base', snapshot: 'v1' } })).status, 201);

  for (const q of ['', '?recursive=false', '?force=true']) {
    const r = await d.api('DELETE', `/v1/volumes/base${q}`);
    expectApiError(r, 409, 'volume_has_dependents');
    assert.match(r.body.error.message, /volume base has 2 snapshots \(base@v1, base@v2\) that deleting it would delete too \(the 3 clones made from it keep their data\); .*recursive=true/);
  }
  expectApiError(await d.api('DELETE', '/v1/volumes/base?recursive=maybe'), 400, 'invalid_request');
  const kept = await d.api('GET', '/v1/volumes/base/snapshots');
  assert.deepEqual(kept.body.snapshots.map((s: any) => s.name), ['v1', 'v2']);

  // Without snapshots no confirmation is needed; with it, the snapshots go and the clones stay readable.
  assert.equal((await d.api('DELETE', '/v1/volumes/vm2')).status, 204);
  assert.equal((await d.api('DELETE', '/v1/volumes/base?recursive=true')).status, 204);
  expectApiError(await d.api('GET', '/v1/volumes/base'), 404, 'volume_not_found');
  assert.equal((await d.api('GET', '/v1/volumes/vm0')).body.size, 8 * MiB);
  await expectFsckClean(d);
});
