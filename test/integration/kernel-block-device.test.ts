// A real kernel block device: nbdfuse exposes the export as a file, losetup makes it /dev/loopN, and
// ext4 runs on it (mkfs, mount, files, fsck). The filesystem and its files survive a daemon restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../helpers/daemon.js';
import { runOk } from '../helpers/tools.js';
import { attachKernelDevice, mountDevice, needKernelDevice, expectFsckExt4, fileManifest, type KernelDevice } from '../helpers/kernel-device.js';

const MiB = 2 ** 20;



test('ext4 on /dev/loopN over nbdfuse: mkfs, files, fsck, restart, files identical', { timeout: 150_000 }, async (t) => {
  if (!needKernelDevice(t, 'blockdev')) return;
  const d = await startDaemon();
  const tmp = mkdtempSync(join(tmpdir(), 'shoal-kdev-'));
  const mnt = join(tmp, 'mnt');
  mkdirSync(mnt);
  let kdev: KernelDevice | undefined;
  let umount: (() => Promise<void>) | undefined;
  try {
    await d.createVolume('ext', 256 * MiB);
    kdev = await attachKernelDevice(d.unixUri('ext'));
    assert.match(kdev.dev, /^\/dev\/loop\d+$/);
    const size = Number((await runOk('blockdev', ['--getsize64', kdev.dev])).trim());
    assert.equal(size, 256 * MiB, 'the loop device has the volume size');

    await runOk('mkfs.ext4', ['-q', '-F', kdev.dev], { timeoutMs: 60_000 });
    umount = await mountDevice(kdev.dev, mnt);
    // A few MB of random files, some duplicated (dedup), a directory tree, a sparse file, a symlink.
    const shared = randomBytes(256 * 1024);
    for (let i = 0; i < 4; i++) {
      const dir = join(mnt, `d${i}`, 'sub', `s${i}`);
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'random.bin'), randomBytes(512 * 1024 + i * 4099));
      writeFileSync(join(dir, 'copy.bin'), shared);
      writeFileSync(join(mnt, `d${i}`, 'small.txt'), `file ${i}\n`.repeat(i * 100 + 1));
    }
    writeFileSync(join(mnt, 'big.bin'), randomBytes(3 * MiB + 123));
    const sparse = Buffer.alloc(8 * MiB);
    randomBytes(4096).copy(sparse, 5 * MiB);
    writeFileSync(join(mnt, 'sparse.bin'), sparse);
    symlinkSync('d0/sub/s0/random.bin', join(mnt, 'link'));
    const before = fileManifest(mnt);
    assert.ok(before.size >= 20, `manifest has ${before.size} entries`);

    await umount();
    umount = undefined;
    await expectFsckExt4(kdev.dev);
    await kdev.detach();
    kdev = undefined;

    // The volume holds real filesystem data now.
    const stats = (await d.api('GET', '/v1/stats')).body;
    assert.ok(stats.physicalBytes >= 5 * MiB, `physicalBytes ${stats.physicalBytes} after writing ~6 MiB of random files`);

    await d.restart();

    kdev = await attachKernelDevice(d.unixUri('ext'));
    await expectFsckExt4(kdev.dev);
    umount = await mountDevice(kdev.dev, mnt);
    const after = fileManifest(mnt);
    assert.deepEqual([...after.entries()].sort(), [...before.entries()].sort(), 'every file reads back identical after restart');
    // Write a little more on the remounted filesystem, then check it once more.
    writeFileSync(join(mnt, 'after-restart.bin'), randomBytes(300 * 1024));
    await umount();
    umount = undefined;
    await expectFsckExt4(kdev.dev);
    await kdev.detach();
    kdev = undefined;

    const f = await d.api('POST', '/v1/fsck');
    assert.equal(f.body.ok, true, JSON.stringify(f.body.errors));
  } finally {
    if (umount) await umount().catch(() => {});
    if (kdev) await kdev.detach().catch(() => {});
    await d.dispose();
    rmSync(tmp, { recursive: true, force: true });
  }
});
