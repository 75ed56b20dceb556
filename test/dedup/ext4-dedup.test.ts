// Deduplication seen through a real kernel client (issue: deduplication, item 8): two ext4 filesystems,
// each made separately with mkfs.ext4 on its own volume (nbdfuse + losetup), receive the same files in
// different orders. Their file data lands on 4 KiB filesystem blocks, so at the default 4 KiB chunk size
// the second copy shares its chunks with the first; /v1/stats accounts for exactly what was written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { startDaemon } from '../helpers/daemon.js';
import { runOk } from '../helpers/tools.js';
import { expectFsckClean, settledStats, MiB } from '../helpers/volume-io.js';
import { attachKernelDevice, mountDevice, needKernelDevice, expectFsckExt4, type KernelDevice } from '../helpers/kernel-device.js';

const BLOCK = 4096;
const roundUp = (n: number) => Math.ceil(n / BLOCK) * BLOCK;

/** Relative paths of regular files under dir (sorted). */
function listFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) out.push(relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

function manifest(dir: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const f of listFiles(dir)) if (!f.startsWith('lost+found')) m.set(f, createHash('sha256').update(readFileSync(join(dir, f))).digest('hex'));
  return m;
}

test('two ext4 filesystems made separately with the same files share their file chunks', { timeout: 90_000 }, async (t) => {
  if (!needKernelDevice(t, 'tar')) return;
  const d = await startDaemon();
  const tmp = mkdtempSync(join(tmpdir(), 'shoal-ext4-dedup-'));
  const src = join(tmp, 'src');
  const devs: KernelDevice[] = [];
  const umounts: (() => Promise<void>)[] = [];
  try {
    // The source tree: 64 MiB of incompressible files of assorted (not block-aligned) sizes in
    // nested directories, plus a few MiB of real text files (documentation) when the system has them.
    let randomBytesWritten = 0;
    for (let i = 0; i < 40; i++) {
      const dir = join(src, `dir${i % 5}`, `sub${i % 3}`);
      mkdirSync(dir, { recursive: true });
      const size = i < 39 ? 1 * MiB + ((i * 77_777) % (1 * MiB)) + (i % 7) * 333 : 0;
      writeFileSync(join(dir, `f${i}.bin`), randomBytes(size));
      randomBytesWritten += size;
    }
    const rest = 64 * MiB - randomBytesWritten;
    writeFileSync(join(src, 'big.bin'), randomBytes(rest));
    randomBytesWritten += rest;
    let docs = 0;
    if (existsSync('/usr/share/doc')) {
      mkdirSync(join(src, 'doc'));
      for (const name of readdirSync('/usr/share/doc').sort()) {
        if (docs > 4 * MiB) break;
        const to = join(src, 'doc', name);
        try {
          cpSync(join('/usr/share/doc', name), to, { recursive: true, dereference: true, errorOnExist: false });
        } catch {
          continue; // dangling links and the like: not needed
        }
        if (statSync(to).isDirectory()) docs += listFiles(to).reduce((n, f) => n + statSync(join(to, f)).size, 0);
      }
    }
    const files = listFiles(src);
    const fileBlocks = files.reduce((a, f) => a + roundUp(statSync(join(src, f)).size), 0);
    const randomBlocks = files.filter((f) => !f.startsWith('doc/')).reduce((a, f) => a + roundUp(statSync(join(src, f)).size), 0);
    const want = manifest(src);

    for (const [i, vol] of ['ext-a', 'ext-b'].entries()) {
      // 1 GiB (thin: costs only what is written). Below 512 MiB mke2fs picks its "small" profile,
      // with 1 KiB blocks: file data would then not sit on 4 KiB boundaries.
      await d.createVolume(vol, 1024 * MiB);
      const kdev = await attachKernelDevice(d.unixUri(vol));
      devs.push(kdev);
      // Separate mkfs: different UUIDs, hash seeds, journal contents.
      await runOk('mkfs.ext4', ['-q', '-F', kdev.dev], { timeoutMs: 60_000 });
      const mnt = join(tmp, `mnt-${vol}`);
      mkdirSync(mnt);
      const umount = await mountDevice(kdev.dev, mnt);
      umounts.push(umount);
      // Same files, written in opposite orders: they land on different filesystem blocks.
      const order = i === 0 ? files : [...files].reverse();
      writeFileSync(join(tmp, `list-${vol}`), order.join('\n') + '\n');
      await runOk('sh', ['-c', `tar -C "$1" -cf - --no-recursion -T "$2" | tar -C "$3" -xf -`, 'sh', src, join(tmp, `list-${vol}`), mnt], { timeoutMs: 60_000 });
      assert.deepEqual(manifest(mnt), want, `${vol} holds the files`);
      await umount();
      umounts.pop();
      await expectFsckExt4(kdev.dev, vol, 30_000);
      await kdev.detach();
      devs.pop();
    }

    const stats = await settledStats(d);
    const a = (await d.api('GET', '/v1/volumes/ext-a')).body;
    const b = (await d.api('GET', '/v1/volumes/ext-b')).body;
    const report = `file data ${fileBlocks} B (random ${randomBlocks}, docs ${fileBlocks - randomBlocks}, ${files.length} files); stats ${JSON.stringify({ logical: stats.logicalBytes, physical: stats.physicalBytes, chunks: stats.chunks, dedupHits: stats.dedupHits })}; a ${JSON.stringify({ mapped: a.mappedBytes, shared: a.sharedBytes, exclusive: a.exclusiveBytes })}; b ${JSON.stringify({ mapped: b.mappedBytes, shared: b.sharedBytes, exclusive: b.exclusiveBytes })}`;
    t.diagnostic(report);

    // The figures add up: logical = Σ mapped, physical = chunks × chunk size, mapped = shared + exclusive.
    assert.equal(stats.logicalBytes, a.mappedBytes + b.mappedBytes, report);
    assert.equal(stats.physicalBytes, stats.chunks * stats.chunkSize, report);
    assert.equal(a.mappedBytes, a.sharedBytes + a.exclusiveBytes, report);
    assert.equal(b.mappedBytes, b.sharedBytes + b.exclusiveBytes, report);
    // Each filesystem maps at least its file data (random data has no zero blocks to become holes).
    assert.ok(a.mappedBytes >= roundUp(64 * MiB) && b.mappedBytes >= roundUp(64 * MiB), report);
    // The second copy of the files is shared, not stored again: at least 90 % of the file data
    // (the rest of each volume is its own filesystem metadata and journal).
    assert.ok(b.sharedBytes >= 0.9 * fileBlocks, `ext-b shares ${b.sharedBytes} of ${fileBlocks} file bytes; ${report}`);
    assert.ok(stats.dedupHits * stats.chunkSize >= 0.9 * fileBlocks, report);
    // Stored once: physical ≤ logical − (most of) one copy of the files, and ≥ one copy of the random data.
    assert.ok(stats.physicalBytes <= stats.logicalBytes - 0.9 * fileBlocks, report);
    assert.ok(stats.physicalBytes >= 64 * MiB, report);
    assert.ok(stats.dedupRatio > 1.5, report);
    await expectFsckClean(d);
  } finally {
    for (const u of umounts.reverse()) await u().catch(() => {});
    for (const k of devs.reverse()) await k.detach().catch(() => {});
    await d.dispose();
    rmSync(tmp, { recursive: true, force: true });
  }
});
