// A real kernel block device: nbdfuse exposes the export as a file, losetup makes it /dev/loopN, and
// ext4 runs on it (mkfs, mount, files, fsck). The filesystem and its files survive a daemon restart.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, symlinkSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { startDaemon } from '../helpers/daemon.js';
import { needTools, run, runOk } from '../helpers/tools.js';
import { attachKernelDevice, mountDevice, kernelDeviceUnavailable, KERNEL_DEVICE_TOOLS, FILESYSTEM_TOOLS, type KernelDevice } from '../helpers/kernel-device.js';

const MiB = 2 ** 20;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** sha256 of every file (and target of every symlink) under dir, keyed by relative path. */
function manifest(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const ent of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, ent.name);
      const rel = relative(dir, p);
      if (rel === 'lost+found') continue;
      if (ent.isDirectory()) {
        out.set(rel + '/', 'dir');
        walk(p);
      } else if (ent.isSymbolicLink()) out.set(rel, 'link:' + readlinkSync(p));
      else out.set(rel, sha(readFileSync(p)) + ':' + statSync(p).size);
    }
  };
  walk(dir);
  return out;
}

async function fsck(dev: string) {
  const r = await run('fsck.ext4', ['-f', '-n', dev], { timeoutMs: 60_000 });
  assert.equal(r.status, 0, `fsck.ext4 -f -n ${dev} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
}

test('ext4 on /dev/loopN over nbdfuse: mkfs, files, fsck, restart, files identical', { timeout: 150_000 }, async (t) => {
  if (!needTools(t, ...KERNEL_DEVICE_TOOLS, ...FILESYSTEM_TOOLS, 'blockdev')) return;
  const why = kernelDeviceUnavailable();
  if (why) {
    if (process.env.CI === 'true') throw new Error(`kernel block device unavailable: ${why}`);
    t.skip(why);
    return;
  }
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
    const before = manifest(mnt);
    assert.ok(before.size >= 20, `manifest has ${before.size} entries`);

    await umount();
    umount = undefined;
    await fsck(kdev.dev);
    await kdev.detach();
    kdev = undefined;

    // The volume holds real filesystem data now.
    const stats = (await d.api('GET', '/v1/stats')).body;
    assert.ok(stats.physicalBytes >= 5 * MiB, `physicalBytes ${stats.physicalBytes} after writing ~6 MiB of random files`);

    await d.restart();

    kdev = await attachKernelDevice(d.unixUri('ext'));
    await fsck(kdev.dev);
    umount = await mountDevice(kdev.dev, mnt);
    const after = manifest(mnt);
    assert.deepEqual([...after.entries()].sort(), [...before.entries()].sort(), 'every file reads back identical after restart');
    // Write a little more on the remounted filesystem, then check it once more.
    writeFileSync(join(mnt, 'after-restart.bin'), randomBytes(300 * 1024));
    await umount();
    umount = undefined;
    await fsck(kdev.dev);
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
