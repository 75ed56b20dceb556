// Snapshots, writable clones, rollback and reflink share chunks and stay independent
// (issue: copy-on-write sharing). fsck runs at the end of every test.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { qemuIo, expectPattern, expectFsckClean, expectApiError, withHandle, MiB, GiB } from '../helpers/volume-io.js';

let d: Daemon;
before(async () => {
  d = await startDaemon();
});
after(async () => {
  await d?.dispose();
});

test('a snapshot keeps the contents it had; the volume moves on', async (t) => {
  if (!needTools(t, 'qemu-io', 'qemu-img', 'nbdcopy')) return;
  await d.createVolume('snapvol', 64 * MiB);
  await qemuIo(d, 'snapvol', ['write -P 0xaa 0 8M', 'write -P 0x5c 10M 3000']);
  const s = await d.api('POST', '/v1/volumes/snapvol/snapshots', { name: 'before' });
  assert.equal(s.status, 201, JSON.stringify(s.body));
  assert.equal(s.body.exportName, 'snapvol@before');
  await qemuIo(d, 'snapvol', ['write -P 0xbb 0 4M', 'write -P 0x11 10M 100']);
  // The snapshot still serves the old bytes, the volume the new ones.
  await expectPattern(d, 'snapvol@before', 0xaa, 0, 8 * MiB);
  await expectPattern(d, 'snapvol@before', 0x5c, 10 * MiB, 3000);
  await expectPattern(d, 'snapvol', 0xbb, 0, 4 * MiB);
  await expectPattern(d, 'snapvol', 0xaa, 4 * MiB, 4 * MiB);
  await expectPattern(d, 'snapvol', 0x11, 10 * MiB, 100);
  await expectPattern(d, 'snapvol', 0x5c, 10 * MiB + 100, 2900);
  // qemu-img compare: the snapshot export equals a file copied from it, and differs from the volume.
  const dir = mkdtempSync(join(tmpdir(), 'shoal-snap-'));
  try {
    const file = join(dir, 'before.img');
    await run('nbdcopy', [d.unixUri('snapvol@before'), file]).then((r) => assert.equal(r.status, 0, r.stderr));
    const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, d.uri('snapvol@before')]);
    assert.equal(same.status, 0, same.stdout + same.stderr);
    const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, d.uri('snapvol')]);
    assert.equal(diff.status, 1, 'the volume must differ from its old snapshot');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // The snapshot is listed and read-only: a write gets EPERM.
  const list = await d.api('GET', '/v1/volumes/snapvol/snapshots');
  assert.deepEqual(list.body.snapshots.map((x: any) => x.name), ['before']);
  const out = await withHandle(
    d,
    'snapvol@before',
    `print(h.is_read_only())
try:
    h.pwrite(b'x' * 512, 0)
    print('wrote')
except nbd.Error as e:
    print('errno', e.errno)`,
  );
  assert.match(out, /^True/m);
  assert.match(out, /errno EPERM/);
  await expectPattern(d, 'snapvol@before', 0xaa, 0, 512);
  await expectFsckClean(d);
});

test('clones are writable and independent both ways, to any depth', async (t) => {
  if (!needTools(t, 'qemu-io')) return;
  await d.createVolume('origin', 32 * MiB);
  await qemuIo(d, 'origin', ['write -P 0x01 0 16M']);
  assert.equal((await d.api('POST', '/v1/volumes/origin/snapshots', { name: 'gold' })).status, 201);
  // Clone of the snapshot, and clone of the live volume.
  const c1 = await d.api('POST', '/v1/volumes', { name: 'c-snap', from: { volume: 'origin', snapshot: 'gold' } });
  assert.equal(c1.status, 201, JSON.stringify(c1.body));
  assert.equal(c1.body.size, 32 * MiB);
  assert.deepEqual(c1.body.origin, { volume: 'origin', snapshot: 'gold' });
  await qemuIo(d, 'origin', ['write -P 0x02 0 1M']);
  const c2 = await d.api('POST', '/v1/volumes', { name: 'c-live', from: { volume: 'origin' } });
  assert.equal(c2.status, 201, JSON.stringify(c2.body));
  await expectPattern(d, 'c-snap', 0x01, 0, 16 * MiB);
  await expectPattern(d, 'c-live', 0x02, 0, MiB);
  await expectPattern(d, 'c-live', 0x01, MiB, 15 * MiB);
  // Writes to a clone are not seen by the origin, and writes to the origin not by the clone.
  await qemuIo(d, 'c-snap', ['write -P 0x03 4M 5000']);
  await qemuIo(d, 'origin', ['write -P 0x04 8M 4096']);
  await expectPattern(d, 'origin', 0x01, 4 * MiB, 5000);
  await expectPattern(d, 'c-snap', 0x03, 4 * MiB, 5000);
  await expectPattern(d, 'c-snap', 0x01, 8 * MiB, 4096);
  await expectPattern(d, 'c-live', 0x01, 8 * MiB, 4096);
  await expectPattern(d, 'origin', 0x04, 8 * MiB, 4096);
  // A clone shares every chunk it has not written.
  const info = await d.api('GET', '/v1/volumes/c-live');
  assert.equal(info.body.exclusiveBytes, 0);
  assert.ok(info.body.sharedBytes > 0);

  // Clones of clones, 12 deep, each with a private write at its own offset.
  let prev = 'c-snap';
  for (let i = 1; i <= 12; i++) {
    const name = `deep${i}`;
    const r = await d.api('POST', '/v1/volumes', { name, from: { volume: prev } });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    await qemuIo(d, name, [`write -P ${0x20 + i} ${16 * MiB + i * 65536} 4096`]);
    prev = name;
  }
  // The deepest clone sees every ancestor's write; an ancestor sees none of its descendants'.
  for (let i = 1; i <= 12; i++) await expectPattern(d, 'deep12', 0x20 + i, 16 * MiB + i * 65536, 4096);
  await expectPattern(d, 'deep3', 0, 16 * MiB + 4 * 65536, 4096);
  await expectPattern(d, 'deep12', 0x03, 4 * MiB, 5000);
  await expectFsckClean(d);
});

test('rollback returns a volume to its snapshot', async (t) => {
  if (!needTools(t, 'qemu-io')) return;
  await d.createVolume('rb', 16 * MiB);
  await qemuIo(d, 'rb', ['write -P 0x61 0 2M']);
  await d.api('POST', '/v1/volumes/rb/snapshots', { name: 's' });
  await qemuIo(d, 'rb', ['write -P 0x62 0 1M', 'write -P 0x63 4M 1M']);
  const r = await d.api('POST', '/v1/volumes/rb/rollback', { snapshot: 's' });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  await expectPattern(d, 'rb', 0x61, 0, 2 * MiB);
  await expectPattern(d, 'rb', 0, 4 * MiB, MiB);
  // The snapshot is still there and the volume is writable again, independently.
  await qemuIo(d, 'rb', ['write -P 0x64 0 4096']);
  await expectPattern(d, 'rb@s', 0x61, 0, 4096);
  await expectFsckClean(d);
});

test('reflink shares aligned chunks, copies unaligned edges, and works from snapshots', async (t) => {
  if (!needTools(t, 'qemu-io')) return;
  await d.createVolume('rsrc', 64 * MiB);
  await d.createVolume('rdst', 64 * MiB);
  // Distinct bytes per 4 KiB so dedup cannot share them by itself.
  await withHandle(d, 'rsrc', `import os\nh.pwrite(os.urandom(16 * 1024 * 1024), 0)\nh.flush()`);
  const before = (await d.api('GET', '/v1/stats')).body;
  const r = await d.api('POST', '/v1/volumes/rdst/reflink', { source: 'rsrc', sourceOffset: 0, offset: 8 * MiB, length: 16 * MiB });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.sharedBytes, 16 * MiB);
  assert.equal(r.body.copiedBytes, 0);
  const afterStats = (await d.api('GET', '/v1/stats')).body;
  assert.equal(afterStats.physicalBytes, before.physicalBytes, 'an aligned reflink stores nothing new');
  assert.equal(afterStats.logicalBytes, before.logicalBytes + 16 * MiB);
  const cmp = await withHandle(d, 'rdst', `h2 = nbd.NBD()\nh2.connect_uri(${JSON.stringify(d.unixUri('rsrc'))})\nprint(h.pread(16*1024*1024, 8*1024*1024) == h2.pread(16*1024*1024, 0))`);
  assert.match(cmp, /True/);
  // Unaligned: the edges are copied, the middle shared; bytes identical.
  const u = await d.api('POST', '/v1/volumes/rdst/reflink', { source: 'rsrc', sourceOffset: 1000, offset: 40 * MiB + 1000, length: 5 * MiB });
  assert.equal(u.status, 200, JSON.stringify(u.body));
  assert.ok(u.body.copiedBytes > 0 && u.body.sharedBytes > 0, JSON.stringify(u.body));
  assert.equal(u.body.copiedBytes + u.body.sharedBytes, 5 * MiB);
  const cmp2 = await withHandle(d, 'rdst', `h2 = nbd.NBD()\nh2.connect_uri(${JSON.stringify(d.unixUri('rsrc'))})\nprint(h.pread(5*1024*1024, 40*1024*1024 + 1000) == h2.pread(5*1024*1024, 1000))`);
  assert.match(cmp2, /True/);
  // From a snapshot, after the source changed: the snapshot's bytes arrive.
  await d.api('POST', '/v1/volumes/rsrc/snapshots', { name: 'r1' });
  await qemuIo(d, 'rsrc', ['write -P 0x77 0 1M']);
  const s = await d.api('POST', '/v1/volumes/rdst/reflink', { source: 'rsrc@r1', sourceOffset: 0, offset: 0, length: MiB });
  assert.equal(s.status, 200, JSON.stringify(s.body));
  const cmp3 = await withHandle(d, 'rdst', `h2 = nbd.NBD()\nh2.connect_uri(${JSON.stringify(d.unixUri('rsrc@r1'))})\nprint(h.pread(1024*1024, 0) == h2.pread(1024*1024, 0))`);
  assert.match(cmp3, /True/);
  // Writing to the destination copies the shared chunk once and leaves the source alone.
  await qemuIo(d, 'rdst', ['write -P 0x78 8M 4096']);
  const cmp4 = await withHandle(d, 'rsrc', `print(h.pread(4096, 0) != b'\\x78' * 4096)`);
  assert.match(cmp4, /True/);
  // Whole-volume reflink.
  await d.createVolume('rwhole', 64 * MiB);
  const w = await d.api('POST', '/v1/volumes/rwhole/reflink', { source: 'rsrc', sourceOffset: 0, offset: 0, length: 64 * MiB });
  assert.equal(w.status, 200, JSON.stringify(w.body));
  const cmp5 = await withHandle(d, 'rwhole', `h2 = nbd.NBD()\nh2.connect_uri(${JSON.stringify(d.unixUri('rsrc'))})\nprint(h.pread(32*1024*1024, 0) == h2.pread(32*1024*1024, 0))`);
  assert.match(cmp5, /True/);
  await expectFsckClean(d);
});

test('bad sharing requests get a clear 4xx and change nothing', async (t) => {
  if (!needTools(t, 'qemu-io', 'nbdsh')) return;
  await d.createVolume('errs', 16 * MiB);
  await qemuIo(d, 'errs', ['write -P 0x42 0 1M']);
  await d.api('POST', '/v1/volumes/errs/snapshots', { name: 'one' });
  const snapshotsBefore = (await d.api('GET', '/v1/volumes/errs/snapshots')).body;
  const volumesBefore = (await d.api('GET', '/v1/volumes')).body.volumes.map((v: any) => v.name);

  expectApiError(await d.api('POST', '/v1/volumes', { name: 'nope', from: { volume: 'errs', snapshot: 'missing' } }), 404, 'snapshot_not_found');
  expectApiError(await d.api('POST', '/v1/volumes', { name: 'nope', from: { volume: 'missing' } }), 404, 'volume_not_found');
  expectApiError(await d.api('POST', '/v1/volumes/errs/snapshots', { name: 'one' }), 409, 'snapshot_exists');
  expectApiError(await d.api('POST', '/v1/volumes/errs/reflink', { source: 'errs@one', sourceOffset: 0, offset: 15 * MiB, length: 2 * MiB }), 400, 'invalid_range');
  expectApiError(await d.api('POST', '/v1/volumes/errs/reflink', { source: 'errs@one', sourceOffset: 16 * MiB, offset: 0, length: 4096 }), 400, 'invalid_range');
  expectApiError(await d.api('POST', '/v1/volumes/errs/rollback', { snapshot: 'missing' }), 404, 'snapshot_not_found');
  expectApiError(await d.api('DELETE', '/v1/volumes/errs/snapshots/missing'), 404, 'snapshot_not_found');

  // A rollback while a client is connected and writing is refused, and the data is untouched.
  const script = `
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(${JSON.stringify(d.unixUri('errs'))})
print('connected', flush=True)
for i in range(40):
    h.pwrite(b'\\x99' * 4096, 2*1024*1024 + i * 4096)
    time.sleep(0.05)
h.flush()
h.shutdown()
`;
  const { spawn } = await import('node:child_process');
  const child = spawn('/usr/bin/python3', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve) => child.stdout!.once('data', () => resolve()));
  expectApiError(await d.api('POST', '/v1/volumes/errs/rollback', { snapshot: 'one' }), 409, 'volume_busy');
  expectApiError(await d.api('DELETE', '/v1/volumes/errs'), 409, 'volume_busy');
  await new Promise((r) => child.once('exit', r));
  await expectPattern(d, 'errs', 0x99, 2 * MiB, 40 * 4096);
  await expectPattern(d, 'errs', 0x42, 0, MiB);
  assert.deepEqual((await d.api('GET', '/v1/volumes/errs/snapshots')).body, snapshotsBefore);
  assert.deepEqual((await d.api('GET', '/v1/volumes')).body.volumes.map((v: any) => v.name), volumesBefore);
  await expectFsckClean(d);
});

test('space is exact: deleting in any order frees chunks exactly when the last reference goes', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const base = (await d.api('GET', '/v1/stats')).body;
  await d.createVolume('acct', 256 * MiB);
  await withHandle(d, 'acct', `import os\nh.pwrite(os.urandom(8 * 1024 * 1024), 0)\nh.flush()`);
  const s1 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s1.physicalBytes - base.physicalBytes, 8 * MiB);
  await d.api('POST', '/v1/volumes/acct/snapshots', { name: 'a' });
  await d.api('POST', '/v1/volumes', { name: 'acct-c1', from: { volume: 'acct', snapshot: 'a' } });
  await d.api('POST', '/v1/volumes', { name: 'acct-c2', from: { volume: 'acct-c1' } });
  const s2 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s2.physicalBytes, s1.physicalBytes, 'snapshots and clones store nothing');
  assert.equal(s2.logicalBytes - base.logicalBytes, 4 * 8 * MiB);
  // A write to a shared chunk copies it once; every other sharer is unchanged.
  await withHandle(d, 'acct-c1', `h.pwrite(b'\\x55' * 4096, 0)\nh.flush()`);
  const s3 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s3.physicalBytes - s2.physicalBytes, 4096);
  await expectFsckClean(d);
  // Delete the origin (and its snapshot) first while its clones live on: nothing is freed.
  assert.equal((await d.api('DELETE', '/v1/volumes/acct?recursive=true')).status, 204);
  await expectFsckClean(d);
  const s4 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s4.physicalBytes, s3.physicalBytes);
  const back = await withHandle(d, 'acct-c2', `print(len(h.pread(8*1024*1024, 0)))`);
  assert.match(back, /8388608/);
  // Then the middle clone, then the last: everything returns.
  assert.equal((await d.api('DELETE', '/v1/volumes/acct-c1')).status, 204);
  await expectFsckClean(d);
  const s5 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s5.physicalBytes, s3.physicalBytes - 4096, 'only c1\'s private chunk is freed');
  assert.equal((await d.api('DELETE', '/v1/volumes/acct-c2')).status, 204);
  await expectFsckClean(d);
  const s6 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s6.physicalBytes, base.physicalBytes);
  assert.equal(s6.logicalBytes, base.logicalBytes);
});

test('a 1 TiB volume snapshots and clones in constant time', async () => {
  await d.createVolume('huge', 1024 * GiB);
  await withHandle(d, 'huge', `for i in range(64):\n    h.pwrite(bytes([i+1]) * 4096, i * 16 * 1024 * 1024 * 1024)\nh.flush()`);
  const t0 = performance.now();
  const s = await d.api('POST', '/v1/volumes/huge/snapshots', { name: 'x' });
  const c = await d.api('POST', '/v1/volumes', { name: 'huge-clone', from: { volume: 'huge', snapshot: 'x' } });
  const ms = performance.now() - t0;
  assert.equal(s.status, 201);
  assert.equal(c.status, 201);
  assert.ok(ms < 2000, `snapshot + clone of a 1 TiB volume took ${ms} ms`);
  const out = await withHandle(d, 'huge-clone', `print(h.pread(4096, 63 * 16 * 1024 * 1024 * 1024) == bytes([64]) * 4096)`);
  assert.match(out, /True/);
  await d.api('DELETE', '/v1/volumes/huge-clone');
  assert.equal((await d.api('DELETE', '/v1/volumes/huge?recursive=true')).status, 204);
  await expectFsckClean(d);
});
