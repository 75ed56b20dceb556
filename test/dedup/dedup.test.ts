// Inline deduplication: identical chunks stored once per domain, never mapping a write to
// different bytes, with exact figures in /v1/stats (issue: deduplication).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools } from '../helpers/tools.js';
import { withHandle, expectFsckClean, expectApiError, settledStats, MiB } from '../helpers/volume-io.js';

let d: Daemon;
before(async () => {
  d = await startDaemon();
});
after(async () => {
  await d?.dispose();
});

/** Python that writes `mib` MiB of seeded pseudo-random data at `offset` (same seed, same bytes). */
const writeSeeded = (seed: number, mib: number, offset: number) => `
import random
rnd = random.Random(${seed})
for i in range(${mib}):
    h.pwrite(rnd.randbytes(1024 * 1024), ${offset} + i * 1024 * 1024)
h.flush()
`;

test('the same 256 MiB written to two volumes at different offsets is stored once', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const base = (await d.api('GET', '/v1/stats')).body;
  await d.createVolume('dd-a', 512 * MiB);
  await d.createVolume('dd-b', 512 * MiB);
  await withHandle(d, 'dd-a', writeSeeded(7, 256, 0));
  const afterA = (await d.api('GET', '/v1/stats')).body;
  assert.equal(afterA.physicalBytes - base.physicalBytes, 256 * MiB);
  // Same bytes, 4 KiB-aligned but at another offset (not 1 MiB-aligned either).
  await withHandle(d, 'dd-b', writeSeeded(7, 256, 3 * MiB + 12 * 4096));
  const afterB = (await d.api('GET', '/v1/stats')).body;
  assert.equal(afterB.physicalBytes, afterA.physicalBytes, 'the second copy must store nothing');
  assert.equal(afterB.logicalBytes - base.logicalBytes, 512 * MiB);
  assert.equal(afterB.dedupHits - afterA.dedupHits, 65536);
  assert.ok(afterB.dedupRatio > 1.9, `dedup ratio ${afterB.dedupRatio}`);
  // Both read back right.
  const ok = await withHandle(d, 'dd-b', `
import random
rnd = random.Random(7)
h2 = nbd.NBD()
h2.connect_uri(${JSON.stringify(d.unixUri('dd-a'))})
good = True
for i in range(256):
    exp = rnd.randbytes(1024 * 1024)
    good = good and h.pread(1024 * 1024, 3 * 1024 * 1024 + 12 * 4096 + i * 1024 * 1024) == exp and h2.pread(1024 * 1024, i * 1024 * 1024) == exp
print(good)`);
  assert.match(ok, /True/);
  // Per volume: every byte of each is shared with the other.
  const va = (await d.api('GET', '/v1/volumes/dd-a')).body;
  assert.equal(va.sharedBytes, 256 * MiB);
  assert.equal(va.exclusiveBytes, 0);
  await expectFsckClean(d);

  // TRIM of the deduplicated range in one volume leaves the other intact and frees nothing.
  await withHandle(d, 'dd-a', `h.trim(128 * 1024 * 1024, 0)\nh.flush()`);
  const afterTrim = await settledStats(d);
  assert.equal(afterTrim.physicalBytes, afterB.physicalBytes);
  assert.equal(afterTrim.logicalBytes, afterB.logicalBytes - 128 * MiB);
  const still = await withHandle(d, 'dd-b', `
import random
rnd = random.Random(7)
print(all(h.pread(1024*1024, 3*1024*1024 + 12*4096 + i*1024*1024) == rnd.randbytes(1024*1024) for i in range(256)))`);
  assert.match(still, /True/);
  const va2 = (await d.api('GET', '/v1/volumes/dd-a')).body;
  assert.equal(va2.mappedBytes, 128 * MiB);
  // Trimming the other copy too frees the chunks: the last reference is gone.
  await withHandle(d, 'dd-b', `h.trim(128 * 1024 * 1024, 3 * 1024 * 1024 + 12 * 4096)\nh.flush()`);
  const afterBoth = await settledStats(d);
  assert.equal(afterBoth.physicalBytes, afterB.physicalBytes - 128 * MiB);
  await expectFsckClean(d);
  await d.api('DELETE', '/v1/volumes/dd-a');
  await d.api('DELETE', '/v1/volumes/dd-b');
  await expectFsckClean(d);
  const end = await settledStats(d);
  assert.equal(end.physicalBytes, base.physicalBytes);
});

test('all-zero chunks are never stored and read back as holes', async (t) => {
  if (!needTools(t, 'nbdsh', 'nbdinfo')) return;
  const base = await settledStats(d);
  await d.createVolume('zeros', 64 * MiB);
  const out = await withHandle(d, 'zeros', `
h.pwrite(bytes(8 * 1024 * 1024), 0)
h.pwrite(b'\\x01' * 4096, 16 * 1024 * 1024)
h.flush()
print(h.pread(8 * 1024 * 1024, 0) == bytes(8 * 1024 * 1024))
ext = []
h.block_status(16 * 1024 * 1024, 0, lambda ctx, off, entries, err: ext.extend(entries))
print(ext[:2])`);
  assert.match(out, /^True/m);
  // The 8 MiB of written zeroes are a hole (flags 3 = HOLE|ZERO).
  assert.match(out, /\[16777216, 3\]|\[8388608, 3\]/);
  const s = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s.physicalBytes - base.physicalBytes, 4096);
  await d.api('DELETE', '/v1/volumes/zeros');
});

test('dedup domains keep tenants apart; clones inherit their origin\'s domain', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const base = await settledStats(d);
  const a = await d.api('POST', '/v1/volumes', { name: 'tenant-a', size: 64 * MiB, domain: 'alpha' });
  assert.equal(a.status, 201, JSON.stringify(a.body));
  assert.equal(a.body.domain, 'alpha');
  await d.createVolume('tenant-b', 64 * MiB, { domain: 'beta' });
  await withHandle(d, 'tenant-a', writeSeeded(11, 16, 0));
  await withHandle(d, 'tenant-b', writeSeeded(11, 16, 0));
  const s = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s.physicalBytes - base.physicalBytes, 32 * MiB, 'identical data in two domains is stored twice');
  const c = await d.api('POST', '/v1/volumes', { name: 'tenant-a2', from: { volume: 'tenant-a' } });
  assert.equal(c.body.domain, 'alpha');
  // A third alpha volume writing the same bytes shares alpha's chunks.
  await d.createVolume('tenant-a3', 64 * MiB, { domain: 'alpha' });
  await withHandle(d, 'tenant-a3', writeSeeded(11, 16, 0));
  const s2 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s2.physicalBytes, s.physicalBytes);
  // Reflink across domains is refused.
  expectApiError(await d.api('POST', '/v1/volumes/tenant-b/reflink', { source: 'tenant-a', sourceOffset: 0, offset: 0, length: MiB }), 409, 'domain_mismatch');
  expectApiError(await d.api('POST', '/v1/volumes', { name: 'bad-domain', size: MiB, domain: 'no/slash' }), 400, 'invalid_name');
  for (const v of ['tenant-a', 'tenant-a2', 'tenant-a3', 'tenant-b']) await d.api('DELETE', `/v1/volumes/${v}`);
  await expectFsckClean(d);
});

test('offline dedupe shares only the ranges whose bytes are equal', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  await d.createVolume('od-a', 16 * MiB, { domain: 'od' });
  await d.createVolume('od-b', 16 * MiB, { domain: 'od' });
  // Same first 4 MiB, different next 4 MiB.
  await withHandle(d, 'od-a', writeSeeded(21, 8, 0));
  await withHandle(d, 'od-b', writeSeeded(21, 4, 0) + writeSeeded(22, 4, 4 * MiB));
  const beforeB = await withHandle(d, 'od-b', `import hashlib\nprint(hashlib.sha256(h.pread(8*1024*1024, 0)).hexdigest())`);
  const r = await d.api('POST', '/v1/volumes/od-b/dedupe', { source: 'od-a', sourceOffset: 0, offset: 0, length: 8 * MiB });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(r.body.sharedBytes, 4 * MiB);
  assert.equal(r.body.differentBytes, 4 * MiB);
  const afterB = await withHandle(d, 'od-b', `import hashlib\nprint(hashlib.sha256(h.pread(8*1024*1024, 0)).hexdigest())`);
  assert.equal(afterB, beforeB, 'dedupe never changes the bytes');
  expectApiError(await d.api('POST', '/v1/volumes/od-b/dedupe', { source: 'od-a', sourceOffset: 100, offset: 0, length: 4096 }), 400, 'invalid_range');
  await d.api('DELETE', '/v1/volumes/od-a');
  await d.api('DELETE', '/v1/volumes/od-b');
  await expectFsckClean(d);
});

test('a forced fingerprint collision never maps a write to different bytes', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  // Test-only hook: fingerprints are the first 4 bytes of the chunk, so these collide.
  const weak = await startDaemon({ env: { SHOAL_TEST_WEAK_FINGERPRINT: '1', NODE_ENV: 'test' } });
  try {
    await weak.createVolume('col', 16 * MiB);
    const out = await withHandle(weak, 'col', `
a = b'SAME' + b'\\x01' * 4092
b = b'SAME' + b'\\x02' * 4092
h.pwrite(a, 0)
h.pwrite(b, 4096)
h.pwrite(a, 8192)
h.flush()
print(h.pread(4096, 0) == a, h.pread(4096, 4096) == b, h.pread(4096, 8192) == a)`);
    assert.match(out, /True True True/);
    const s = (await weak.api('GET', '/v1/stats')).body;
    // a and b differ: two chunks stored; the second a is a true duplicate: shared.
    assert.equal(s.physicalBytes, 2 * 4096);
    assert.equal(s.dedupHits, 1);
    await expectFsckClean(weak);
  } finally {
    await weak.dispose();
  }
});

test('chunks stored before a restart are found again (the index is on disk, its filter rebuilt)', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  await d.createVolume('rs-a', 64 * MiB);
  await withHandle(d, 'rs-a', writeSeeded(31, 32, 0));
  await d.restart();
  const before = (await d.api('GET', '/v1/stats')).body;
  // Once right after the start (the filter may still be building) and once later.
  await d.createVolume('rs-b', 64 * MiB);
  await withHandle(d, 'rs-b', writeSeeded(31, 32, 0));
  await new Promise((r) => setTimeout(r, 500));
  await d.createVolume('rs-c', 64 * MiB);
  await withHandle(d, 'rs-c', writeSeeded(31, 32, 0));
  const after = (await d.api('GET', '/v1/stats')).body;
  assert.equal(after.physicalBytes, before.physicalBytes, 'nothing new is stored for data stored before the restart');
  assert.equal(after.dedupHits - before.dedupHits, 2 * 32 * 256);
  for (const v of ['rs-a', 'rs-b', 'rs-c']) await d.api('DELETE', `/v1/volumes/${v}`);
  await expectFsckClean(d);
});

test('dedup keeps finding stored chunks while its in-memory filter grows past its first size', async (t) => {
  if (!needTools(t, 'nbdcopy')) return;
  const { mkdtempSync, writeFileSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { randomBytes } = await import('node:crypto');
  const { run } = await import('../helpers/tools.js');
  const dir = mkdtempSync(join(tmpdir(), 'shoal-grow-'));
  try {
    // 96k unique chunks: past the filter's initial 64k, so it is rebuilt while writes go on.
    const file = join(dir, 'img');
    writeFileSync(file, randomBytes(384 * MiB));
    await d.createVolume('grow-a', 384 * MiB);
    await d.createVolume('grow-b', 384 * MiB);
    const base = await settledStats(d);
    let r = await run('nbdcopy', ['--flush', file, d.unixUri('grow-a')]);
    assert.equal(r.status, 0, r.stderr);
    r = await run('nbdcopy', ['--flush', file, d.unixUri('grow-b')]);
    assert.equal(r.status, 0, r.stderr);
    const s = await settledStats(d);
    assert.equal(s.physicalBytes - base.physicalBytes, 384 * MiB, 'the second copy must store nothing');
    assert.equal(s.dedupHits - base.dedupHits, (384 * MiB) / 4096);
    await d.api('DELETE', '/v1/volumes/grow-a');
    await d.api('DELETE', '/v1/volumes/grow-b');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
