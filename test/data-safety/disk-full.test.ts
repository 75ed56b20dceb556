// A full disk fails writes, not the daemon. With the data directory on a 128 MiB tmpfs (64 MiB of it the
// flush journal), a volume written and flushed first must read back intact after another volume's write
// runs out of space; that write must fail with ENOSPC; the daemon must stay up and keep serving reads and the API
// (a failed metadata commit once ended it: lmdb-js rejected a promise nobody held); the log must
// name the cause; and after it stops, the offline fsck must find the metadata consistent.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN, startDaemon } from '../helpers/daemon.js';
import { needRoot, needTools, run, runOk } from '../helpers/tools.js';

const MiB = 2 ** 20;

/**
 * Runs `fn` with a scratch directory `tmp` and a tmpfs of `size` mounted at `mnt` inside it, unmounted
 * and removed after. Mounting needs root: skipped without it, failed under CI.
 */
async function onTmpfs(t: TestContext, prefix: string, size: string, fn: (tmp: string, mnt: string) => Promise<void>): Promise<void> {
  if (!needRoot(t, 'mounting a tmpfs')) return;
  const tmp = mkdtempSync(join(tmpdir(), prefix));
  const mnt = join(tmp, 'mnt');
  await runOk('mkdir', [mnt]);
  await runOk('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mnt]);
  try {
    await fn(tmp, mnt);
  } finally {
    await run('umount', [mnt]);
    rmSync(tmp, { recursive: true, force: true });
  }
}

test('a full disk fails the write with ENOSPC; the daemon, earlier data and the metadata survive', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdcopy', 'mount', 'umount')) return;
  await onTmpfs(t, 'shoal-full-', '128m', async (tmp, mnt) => {
    const dataDir = join(mnt, 'd');
    const d = await startDaemon({ dataDir, args: ['--cache-size', '16M'] });
    try {
      await d.createVolume('a', 64 * MiB);
      await d.createVolume('b', 256 * MiB);
      const first = randomBytes(16 * MiB);
      const firstFile = join(tmp, 'first.img');
      writeFileSync(firstFile, first);
      await runOk('nbdcopy', ['--flush', firstFile, d.unixUri('a')], { timeoutMs: 60_000 });

      const bigFile = join(tmp, 'big.img');
      writeFileSync(bigFile, randomBytes(128 * MiB));
      const r = await run('nbdcopy', ['--flush', bigFile, d.unixUri('b')], { timeoutMs: 60_000 });
      assert.notEqual(r.status, 0, 'writing 128 MiB into the ~48 MiB left must fail');
      assert.match(r.stderr, /No space left on device/, `the write fails with ENOSPC: ${r.stderr}`);

      await d.waitForLog(/metadata commit failed/, 20_000);
      // The cause as the disk gave it: ENOSPC, or EIO when LMDB's sync after a short write fails.
      assert.match(d.log, /metadata commit failed: .*(no space left on device|input\/output error)/i, 'the log names the cause');
      assert.equal(d.proc.exitCode, null, `the daemon must stay up; log:\n${d.log.slice(-2000)}`);
      assert.equal(d.proc.signalCode, null);
      const list = await d.api('GET', '/v1/volumes');
      assert.equal(list.status, 200);
      const back = join(tmp, 'back.img');
      await runOk('nbdcopy', [d.unixUri('a'), back], { timeoutMs: 60_000 });
      assert.ok(readFileSync(back).subarray(0, first.length).equals(first), 'the volume flushed before the disk filled reads back intact');
      // A write now fails cleanly too (the metadata store stopped taking changes), without hanging.
      const w = await run('nbdcopy', ['--flush', firstFile, d.unixUri('a')], { timeoutMs: 60_000 });
      assert.notEqual(w.status, 0);
    } finally {
      await d.stop();
    }
    const fsck = await run(process.execPath, [MAIN, 'fsck', dataDir], { timeoutMs: 60_000 });
    assert.equal(fsck.status, 0, `offline fsck after the full disk: ${fsck.stdout}${fsck.stderr}`);
    assert.match(fsck.stdout + fsck.stderr, /no problems found/);
  });
});

test('a data directory without room for the flush journal: the daemon refuses to start with a sentence', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'mount', 'umount')) return;
  await onTmpfs(t, 'shoal-small-', '32m', async (_tmp, mnt) => {
    const r = await run(process.execPath, [MAIN, 'serve', '--data-dir', join(mnt, 'd'), '--api', '127.0.0.1:0', '--nbd', '127.0.0.1:0'], { timeoutMs: 30_000 });
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr.trim(), /^shoal: cannot make the flush journal .*flush-journal \(64 MiB\): ENOSPC: no space left on device/);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line, no stack:\n${r.stderr}`);
  });
});
