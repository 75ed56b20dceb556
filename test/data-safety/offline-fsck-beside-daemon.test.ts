// One process at a time opens a data directory's metadata (server/data-dir-lock.ts). lmdb-js breaks a
// writing process when another opens and closes the same environment beside it: an offline
// `shoal fsck DATA_DIR` run beside a committing daemon once left map nodes and refcounts missing from
// the daemon's own metadata (a fresh-clone CI run saw it as a one-off count mismatch first). Here:
//   - `shoal fsck DATA_DIR` beside a daemon that commits every few milliseconds (a client writing and
//     flushing, reclaim of a deleted volume) checks through that daemon's API, says so, and is clean,
//     again and again, two at a time; the daemon's metadata is clean at the end;
//   - a second daemon on the same directory refuses to start with a sentence naming the first;
//   - a daemon does not start while an offline check holds the directory;
//   - after kill -9 the kernel drops the lock: the offline check opens the directory itself, clean.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Daemon, MAIN, startDaemon } from '../helpers/daemon.js';
import { needTools, PY, run, runOk } from '../helpers/tools.js';
import { MiB } from '../helpers/volume-io.js';
import { DataDirLock } from '../../server/data-dir-lock.js';

test('shoal fsck DATA_DIR beside a committing daemon checks through its API; one process at a time holds the directory', { timeout: 180_000 }, async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdkit', 'nbdsh')) return;
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_GC_SLICE_MS: '0' } });
  try {
    const holder = JSON.parse(readFileSync(join(d.dataDir, 'shoal.lock'), 'utf8'));
    assert.deepEqual(holder, { pid: d.proc.pid, holder: 'daemon', api: d.apiUrl }, 'the lock file names the daemon and its API');
    for (const [name, size] of [['keep', 64], ['big', 512]] as const) {
      await d.createVolume(name, size * MiB);
      await runOk('nbdcopy', ['--flush', '--', '[', 'nbdkit', 'random', `${size}M`, `seed=${size}`, ']', d.unixUri(name)]);
    }
    await d.api('POST', '/v1/volumes/keep/snapshots', { name: 's' });
    // Overwrites of 'keep' (copy-on-write from its snapshot, chunks freed), each flushed: a commit
    // every few ms for as long as the checks run.
    const writer = spawn(PY, ['-c', `
import nbd, os, random, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
r = random.Random(7)
while True:
    h.pwrite(os.urandom(4096), r.randrange(16384) * 4096)
    h.flush()
`, d.unixUri('keep')], { stdio: 'ignore' });
    try {
      assert.equal((await d.api('DELETE', '/v1/volumes/big')).status, 204);
      for (let i = 0; i < 4; i++) {
        for (const r of await Promise.all([0, 1].map(() => run(process.execPath, [MAIN, 'fsck', d.dataDir])))) {
          assert.equal(r.status, 0, `shoal fsck ${d.dataDir} beside the committing daemon failed:\n${r.stdout}\n${r.stderr}`);
          assert.match(r.stderr, new RegExp(`is served by the daemon with pid ${d.proc.pid}: checking it through its API at ${d.apiUrl}`));
          assert.match(r.stdout, /no problems found/);
        }
      }
      assert.equal(d.proc.exitCode, null, 'the daemon is still serving');

      // A second daemon on the same directory: one sentence, and the first goes on.
      const second = await run(process.execPath, [MAIN, 'serve', '--data-dir', d.dataDir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0'], { timeoutMs: 20_000 });
      assert.equal(second.status, 1, second.stdout + second.stderr);
      assert.match(second.stderr, new RegExp(`shoal: the data directory ${d.dataDir} is in use by a Shoal daemon \\(pid ${d.proc.pid}\\)\\n`));
      assert.equal(writer.exitCode, null, 'the writer was writing all along');
    } finally {
      writer.kill('SIGKILL');
    }
    const online = await d.api('POST', '/v1/fsck');
    assert.equal(online.body.ok, true, JSON.stringify(online.body.errors?.slice(0, 10)));

    // kill -9: the kernel drops the daemon's lock; the offline check then opens the directory itself.
    await d.kill9();
    const offline = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
    assert.equal(offline.status, 0, offline.stdout + offline.stderr);
    assert.doesNotMatch(offline.stderr, /through its API/);
    assert.match(offline.stdout, /no problems found/);

    // While an offline check holds the directory (this test process stands in for it), no daemon starts.
    const lock = DataDirLock.acquire(d.dataDir, 'fsck');
    try {
      const blocked = new Daemon({ dataDir: d.dataDir });
      await assert.rejects(blocked.start(), new RegExp(`the data directory ${d.dataDir} is in use by shoal fsck \\(pid ${process.pid}\\)`));
    } finally {
      lock.release();
    }
    await d.start();
    assert.equal((await d.api('GET', '/v1/volumes/keep')).status, 200, 'it starts once the check let go');
  } finally {
    await d.dispose();
  }
});
