// kill -9 during snapshot, clone, rollback, delete, reflink, and writes to clones: after a
// restart each operation is whole or absent, `shoal fsck DATA_DIR` is clean, and acknowledged
// (flushed) writes read back (issue: copy-on-write sharing, crash safety).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { startDaemon, MAIN, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { withHandle, expectFsckClean, MiB } from '../helpers/volume-io.js';

const SHA = (_name: string) => `import hashlib
m = hashlib.sha256()
for off in range(0, h.get_size(), 4 * 1024 * 1024):
    m.update(h.pread(min(4 * 1024 * 1024, h.get_size() - off), off))
print(m.hexdigest())`;

async function sha(d: Daemon, name: string): Promise<string> {
  return (await withHandle(d, name, SHA(name))).trim();
}

async function offlineFsck(d: Daemon): Promise<void> {
  const r = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
  assert.equal(r.status, 0, `shoal fsck ${d.dataDir} failed:\n${r.stdout}\n${r.stderr}`);
}

/** Fires a REST call without waiting, then kills the daemon after `delayMs`. */
async function killDuring(d: Daemon, method: string, path: string, body: unknown, delayMs: number): Promise<void> {
  const pending = d.api(method, path, body).catch(() => null);
  await new Promise((r) => setTimeout(r, delayMs));
  await d.kill9();
  await pending;
  await d.start();
  await offlineFsckWhileRunning(d);
}

// LMDB readers may open the environment while the daemon runs: the offline check sees the last commit.
async function offlineFsckWhileRunning(d: Daemon): Promise<void> {
  await offlineFsck(d);
}

test('kill -9 during sharing operations leaves each whole or absent, and fsck clean', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon();
  try {
    await d.createVolume('base', 64 * MiB);
    await withHandle(d, 'base', `import random\nr = random.Random(5)\nh.pwrite(r.randbytes(32 * 1024 * 1024), 0)\nh.flush()`);
    const baseSha = await sha(d, 'base');
    for (let round = 0; round < 3; round++) {
      const delay = [0, 6, 25][round];
      // Snapshot.
      await killDuring(d, 'POST', '/v1/volumes/base/snapshots', { name: `s${round}` }, delay);
      const snaps = (await d.api('GET', '/v1/volumes/base/snapshots')).body.snapshots.map((s: any) => s.name);
      if (snaps.includes(`s${round}`)) assert.equal(await sha(d, `base@s${round}`), baseSha, 'a snapshot that exists is whole');
      else await d.api('POST', '/v1/volumes/base/snapshots', { name: `s${round}` });
      // Clone.
      await killDuring(d, 'POST', '/v1/volumes', { name: `c${round}`, from: { volume: 'base', snapshot: `s${round}` } }, delay);
      const vols = (await d.api('GET', '/v1/volumes')).body.volumes.map((v: any) => v.name);
      if (vols.includes(`c${round}`)) assert.equal(await sha(d, `c${round}`), baseSha, 'a clone that exists is whole');
      else assert.equal((await d.api('POST', '/v1/volumes', { name: `c${round}`, from: { volume: 'base', snapshot: `s${round}` } })).status, 201);
      // Writes to the clone (flushed ones must survive), killed mid-stream.
      const writer = spawn('/usr/bin/python3', ['-c', `
import nbd, sys
h = nbd.NBD()
h.connect_uri(${JSON.stringify(d.unixUri(`c${round}`))})
for i in range(100000):
    h.pwrite(bytes([(i % 250) + 1]) * 4096, (i % 2048) * 4096)
    if i % 64 == 63:
        h.flush()
        print(i, flush=True)
`], { stdio: ['ignore', 'pipe', 'ignore'] });
      let lastFlushed = -1;
      writer.stdout!.on('data', (b: Buffer) => {
        const lines = b.toString().trim().split('\n');
        lastFlushed = Number(lines[lines.length - 1]);
      });
      await new Promise((r) => setTimeout(r, 400 + delay * 10));
      const flushedAtKill = lastFlushed;
      await d.kill9();
      writer.kill('SIGKILL');
      await d.start();
      await offlineFsck(d);
      if (flushedAtKill >= 0) {
        // Every offset written up to the last flush holds that write or a later one.
        const check = await withHandle(d, `c${round}`, `
bad = 0
last = ${flushedAtKill}
for off in range(2048):
    # the last write to this offset at or before 'last'
    i = off + ((last - off) // 2048) * 2048 if last >= off else -1
    if i < 0:
        continue
    b = h.pread(4096, off * 4096)
    v = b[0]
    ok = b == bytes([v]) * 4096 and v != 0
    # it must be write i or a later write to the same offset
    cand = [(j % 250) + 1 for j in range(i, i + 2048 * 40, 2048)]
    if not ok or v not in cand:
        bad += 1
print('bad', bad)`);
        assert.match(check, /bad 0/, `flushed writes lost after kill -9 (round ${round})`);
      }
      assert.equal(await sha(d, `base@s${round}`), baseSha, 'writes to a clone never reach its origin snapshot');
      // Reflink from the snapshot into the clone.
      await killDuring(d, 'POST', `/v1/volumes/c${round}/reflink`, { source: `base@s${round}`, sourceOffset: 1000, offset: 1000, length: 20 * MiB }, delay);
      // Rollback of base to its snapshot after a change.
      await withHandle(d, 'base', `h.pwrite(b'\\xee' * 65536, 0)\nh.flush()`);
      await killDuring(d, 'POST', '/v1/volumes/base/rollback', { snapshot: `s${round}` }, delay);
      const after = await withHandle(d, 'base', `print(h.pread(65536, 0) == b'\\xee' * 65536)`);
      if (/True/.test(after)) await d.api('POST', '/v1/volumes/base/rollback', { snapshot: `s${round}` });
      assert.equal(await sha(d, 'base'), baseSha, 'a rollback is whole or absent');
      // Delete the clone.
      await killDuring(d, 'DELETE', `/v1/volumes/c${round}`, undefined, delay);
      await expectFsckClean(d);
    }
    // Everything created is deleted: physical bytes return to the base volume's.
    for (const v of (await d.api('GET', '/v1/volumes')).body.volumes.map((x: any) => x.name)) if (v !== 'base') await d.api('DELETE', `/v1/volumes/${v}?force=true`);
    for (const s of (await d.api('GET', '/v1/volumes/base/snapshots')).body.snapshots) await d.api('DELETE', `/v1/volumes/base/snapshots/${s.name}`);
    await expectFsckClean(d);
    const st = (await d.api('GET', '/v1/stats')).body;
    assert.equal(st.physicalBytes, 32 * MiB);
    await d.stop();
    await offlineFsck(d);
  } finally {
    await d.dispose();
  }
});
