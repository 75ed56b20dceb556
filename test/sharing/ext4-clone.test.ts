// A writable clone of a real filesystem (issue: copy-on-write sharing): ext4 in a volume, through
// nbdfuse + losetup; snapshot it, clone the snapshot, and the clone is a clean ext4 with the same files.
// Changing the clone leaves the origin's files as they were, and the clone costs only what it changed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { appendFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../helpers/daemon.js';
import { runOk } from '../helpers/tools.js';
import { expectFsckClean, settledStats, MiB } from '../helpers/volume-io.js';
import { attachKernelDevice, mountDevice, needKernelDevice, expectFsckExt4, fileManifest, type KernelDevice } from '../helpers/kernel-device.js';



const sorted = (m: Map<string, string>) => [...m.entries()].sort();


test('ext4: snapshot, clone, fsck and mount the clone, change it; the origin is unchanged', { timeout: 90_000 }, async (t) => {
  if (!needKernelDevice(t)) return;
  const d = await startDaemon();
  const tmp = mkdtempSync(join(tmpdir(), 'shoal-ext4-clone-'));
  const mnt = join(tmp, 'mnt');
  mkdirSync(mnt);
  let kdev: KernelDevice | undefined;
  let umount: (() => Promise<void>) | undefined;
  const attach = async (exportName: string, readOnly = false) => {
    kdev = await attachKernelDevice(d.unixUri(exportName), { readOnly });
    return kdev.dev;
  };
  const detach = async () => {
    await kdev?.detach();
    kdev = undefined;
  };
  const mount = async (dev: string, opts: string[] = []) => {
    umount = await mountDevice(dev, mnt, opts);
  };
  const unmount = async () => {
    await umount?.();
    umount = undefined;
  };
  try {
    // 1. The origin: a filesystem with files (random data, text, a tree, a symlink, a sparse file).
    await d.createVolume('gold', 1024 * MiB);
    let dev = await attach('gold');
    await runOk('mkfs.ext4', ['-q', '-F', dev], { timeoutMs: 60_000 });
    await mount(dev);
    for (let i = 0; i < 6; i++) {
      const dir = join(mnt, `etc${i}`, 'sub');
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(dir, 'data.bin'), randomBytes(MiB + i * 5_003));
      writeFileSync(join(mnt, `etc${i}`, 'conf.txt'), `setting${i}=yes\n`.repeat(50 + i));
    }
    writeFileSync(join(mnt, 'image.bin'), randomBytes(8 * MiB + 123));
    const sparse = Buffer.alloc(4 * MiB);
    randomBytes(8192).copy(sparse, 3 * MiB);
    writeFileSync(join(mnt, 'sparse.bin'), sparse);
    symlinkSync('etc0/sub/data.bin', join(mnt, 'link'));
    const origin = fileManifest(mnt);
    await unmount();
    await expectFsckExt4(dev, 'the origin', 30_000);
    await detach();

    // 2. Snapshot and clone: no data copied.
    const before = await settledStats(d);
    const s = await d.api('POST', '/v1/volumes/gold/snapshots', { name: 'base' });
    assert.equal(s.status, 201, JSON.stringify(s.body));
    const c = await d.api('POST', '/v1/volumes', { name: 'vm1', from: { volume: 'gold', snapshot: 'base' } });
    assert.equal(c.status, 201, JSON.stringify(c.body));
    const cloned = await settledStats(d);
    assert.equal(cloned.physicalBytes, before.physicalBytes, 'a clone stores nothing');
    const goldInfo = (await d.api('GET', '/v1/volumes/gold')).body;
    const vm1Info = (await d.api('GET', '/v1/volumes/vm1')).body;
    assert.equal(vm1Info.mappedBytes, goldInfo.mappedBytes);
    assert.equal(vm1Info.exclusiveBytes, 0, 'every chunk of the fresh clone is shared');
    assert.deepEqual(vm1Info.origin, { volume: 'gold', snapshot: 'base' });

    // 3. The clone is a clean ext4 with the same files.
    dev = await attach('vm1');
    await expectFsckExt4(dev, 'the clone', 30_000);
    await mount(dev);
    assert.deepEqual(sorted(fileManifest(mnt)), sorted(origin), 'the clone holds the origin files');

    // 4. Change the clone: append, overwrite in place, delete, create, rename.
    appendFileSync(join(mnt, 'etc1', 'conf.txt'), 'changed=1\n');
    const fd = openSync(join(mnt, 'image.bin'), 'r+');
    writeSync(fd, randomBytes(64 * 1024), 0, 64 * 1024, 2 * MiB);
    closeSync(fd);
    unlinkSync(join(mnt, 'etc2', 'sub', 'data.bin'));
    writeFileSync(join(mnt, 'new.bin'), randomBytes(2 * MiB));
    mkdirSync(join(mnt, 'etc3', 'sub', 'deeper'));
    writeFileSync(join(mnt, 'etc3', 'sub', 'deeper', 'moved.txt'), readFileSync(join(mnt, 'etc3', 'conf.txt')));
    unlinkSync(join(mnt, 'etc3', 'conf.txt'));
    const changed = fileManifest(mnt);
    assert.notDeepEqual(sorted(changed), sorted(origin));
    await unmount();
    await expectFsckExt4(dev, 'the changed clone', 30_000);
    await detach();

    // 5. The origin volume, and its snapshot, still hold the original files.
    for (const name of ['gold', 'gold@base']) {
      dev = await attach(name, true);
      await expectFsckExt4(dev, name, 30_000);
      await mount(dev, ['ro', 'noload']);
      assert.deepEqual(sorted(fileManifest(mnt)), sorted(origin), `${name} is unchanged by writes to the clone`);
      await unmount();
      await detach();
    }

    // 6. The clone kept its changes (read again through a new device).
    dev = await attach('vm1');
    await mount(dev);
    assert.deepEqual(sorted(fileManifest(mnt)), sorted(changed), 'the clone kept its changes');
    await unmount();
    await detach();

    // 7. Metadata is consistent; the clone's changes cost about what was written, not a copy of the origin.
    const after = await settledStats(d);
    const grew = after.physicalBytes - before.physicalBytes;
    const vm1After = (await d.api('GET', '/v1/volumes/vm1')).body;
    t.diagnostic(`origin mapped ${goldInfo.mappedBytes} B; clone changes stored ${grew} B; clone exclusive ${vm1After.exclusiveBytes} B`);
    assert.ok(grew >= 2 * MiB, `the new 2 MiB file is stored (grew ${grew})`);
    assert.ok(grew < goldInfo.mappedBytes / 2, `the clone stored ${grew} B, the origin maps ${goldInfo.mappedBytes} B`);
    assert.ok(vm1After.sharedBytes > 0.5 * goldInfo.mappedBytes, 'most of the clone is still shared');
    await expectFsckClean(d);
  } finally {
    if (umount) await umount().catch(() => {});
    if (kdev) await kdev.detach().catch(() => {});
    await d.dispose();
    rmSync(tmp, { recursive: true, force: true });
  }
});
