// The flush journal writes its records with O_DIRECT where it can (server/volume/flush-journal.ts,
// DIRECT_RECORD_BYTES), and through the page cache where it cannot: on a filesystem that refuses
// O_DIRECT (tmpfs before Linux 6.6), and on a disk whose sectors are larger than the records' 512-byte
// alignment, where the first direct write fails with EINVAL. Either way, what a FUA write or a FLUSH
// acknowledged comes back after kill -9.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, constants, mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../helpers/daemon.js';
import { needRoot, needTools, run, runOk } from '../helpers/tools.js';
import { expectFsckClean, expectPattern, withHandle, MiB } from '../helpers/volume-io.js';

const NO_COMMITS = { NODE_ENV: 'test', SHOAL_TEST_COMMIT_INTERVAL_MS: '600000' };

/** Whether files in `dir` can be opened with O_DIRECT. */
function takesODirect(dir: string): boolean {
  const f = join(dir, 'o-direct-probe');
  writeFileSync(f, '');
  try {
    closeSync(openSync(f, constants.O_RDWR | constants.O_DIRECT));
    return true;
  } catch {
    return false;
  } finally {
    rmSync(f, { force: true });
  }
}

/**
 * On a daemon whose data directory is `dataDir`: FUA writes and FLUSHed writes, journaled only (no
 * commit after the first FLUSH), a kill -9, and the bytes back after the restart from the journal.
 * Returns the journal's figures from before the kill.
 */
async function fuaWritesSurviveKill(dataDir: string): Promise<{ records: number; direct: boolean; replayed: number }> {
  const d = await startDaemon({ dataDir, env: NO_COMMITS });
  try {
    await d.createVolume('v', 8 * MiB);
    await withHandle(
      d,
      'v',
      [
        `h.flush()`, // the volume syncs from here on: what follows goes to the journal only
        `for i in range(16):\n    h.pwrite(bytes([0x40 + i]) * 4096, i * 65536, nbd.CMD_FLAG_FUA)`,
        `h.pwrite(b'\\x77' * 100000, 3 * 1024 * 1024)`,
        `h.flush()`,
      ].join('\n'),
    );
    const before = (await d.api('GET', '/v1/stats')).body.flushJournal;
    assert.ok(before.records >= 17, `each FUA write and the FLUSH wrote a record: ${JSON.stringify(before)}`);
    assert.equal(before.commits, 0, `nothing committed: ${JSON.stringify(before)}`);
    await d.kill9();
    await d.start();
    const after = (await d.api('GET', '/v1/stats')).body.flushJournal;
    assert.equal(after.replayed, 17, `the 16 FUA writes and the FLUSHed write replayed: ${JSON.stringify(after)}`);
    for (let i = 0; i < 16; i++) await expectPattern(d, 'v', 0x40 + i, i * 65536, 4096);
    await expectPattern(d, 'v', 0x00, 4096, 65536 - 4096);
    await expectPattern(d, 'v', 0x77, 3 * MiB, 100000);
    await expectFsckClean(d);
    return { ...before, replayed: after.replayed };
  } finally {
    await d.dispose();
  }
}

test('records are written O_DIRECT where the filesystem allows it, and FUA writes come back after kill -9', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'qemu-io')) return;
  const dir = mkdtempSync(join(tmpdir(), 'shoal-journal-direct-'));
  try {
    const fig = await fuaWritesSurviveKill(dir);
    assert.equal(fig.direct, takesODirect(dir), `direct where ${dir} takes O_DIRECT: ${JSON.stringify(fig)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('on a disk of 4 KiB sectors the first direct record fails with EINVAL, is written again through the page cache, and nothing is lost', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'qemu-io', 'losetup', 'mkfs.ext4', 'mount', 'umount') || !needRoot(t, 'a loop device of 4 KiB sectors')) return;
  const tmp = mkdtempSync(join(tmpdir(), 'shoal-journal-4kn-'));
  const img = join(tmp, 'disk.img');
  const mnt = join(tmp, 'mnt');
  let dev = '';
  try {
    await runOk('truncate', ['-s', '512M', img]);
    dev = (await runOk('losetup', ['--find', '--show', '--sector-size', '4096', img])).trim();
    assert.match(dev, /^\/dev\/loop\d+$/);
    assert.equal((await runOk('blockdev', ['--getss', dev])).trim(), '4096', 'a disk of 4 KiB logical sectors');
    await runOk('mkfs.ext4', ['-q', '-F', dev]);
    mkdirSync(mnt);
    await runOk('mount', [dev, mnt]);
    try {
      assert.ok(takesODirect(mnt), 'ext4 opens files O_DIRECT: the fallback is the write that fails');
      const fig = await fuaWritesSurviveKill(mnt);
      assert.equal(fig.direct, false, `the 4,608-byte records could not be written direct: ${JSON.stringify(fig)}`);
    } finally {
      await run('umount', ['-l', mnt]);
    }
  } finally {
    if (dev) await run('losetup', ['-d', dev]);
    rmSync(tmp, { recursive: true, force: true });
  }
});
