// One writer per prefix, with two real daemons on the test Ceph: a second daemon refuses with one sentence
// naming the holder; once the holder stops renewing (frozen with SIGSTOP, as a hung or partitioned host)
// and its lease lapses, another takes over; the former holder, thawed, finds itself fenced: its writes and
// flushes fail (ESHUTDOWN), its reads go on, it says so in its log, and nothing it writes reaches the bucket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needCeph, uniqueBucketName } from '../helpers/ceph.js';
import { MAIN } from '../helpers/daemon.js';
import { needTools, nbdPython, run } from '../helpers/tools.js';
import { expectBlocks, s3Daemon, startAfterLease, writeBlocks, type Blocks } from '../helpers/s3-daemon.js';
import { MiB } from '../helpers/volume-io.js';

test('a second daemon on the prefix refuses naming the holder; after the lease lapses another takes over and the former holder is fenced', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const bucket = uniqueBucketName('writer');
  const store = `s3://${bucket}/pool`;
  const a = s3Daemon(ceph, store, { args: ['--lease-seconds', '3'] });
  const c = s3Daemon(ceph, store, { args: ['--lease-seconds', '3'] });
  const other = mkdtempSync(join(tmpdir(), 'shoal-s3-second-'));
  t.after(async () => {
    if (a.proc?.pid) process.kill(a.proc.pid, 'SIGCONT');
    await a.kill9();
    await a.dispose();
    await c.dispose();
    rmSync(other, { recursive: true, force: true });
  });
  await a.start();
  await a.createVolume('vm1', 8 * MiB);
  const before: Blocks = { seed: 11, count: 30, size: 64 * 1024, stride: 256 * 1024 };
  await writeBlocks(a, 'vm1', 'flush', [before]);

  // A second daemon, while the first holds the lease: one sentence, naming it, and exit 1.
  const second = await run(
    process.execPath,
    [MAIN, 'serve', '--data-dir', other, '--store', store, '--s3-endpoint', ceph.endpoint, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--nbd-socket', join(other, 'nbd.sock')],
    { env: { ...process.env, AWS_ACCESS_KEY_ID: ceph.accessKeyId, AWS_SECRET_ACCESS_KEY: ceph.secretAccessKey, AWS_REGION: ceph.region }, timeoutMs: 30_000 },
  );
  assert.equal(second.status, 1, second.stderr);
  assert.match(
    second.stderr,
    new RegExp(`^shoal: s3://${bucket}/pool/ is in use by Shoal on \\S+ \\(pid ${a.proc.pid}, holder [0-9a-f-]{36}\\), epoch 1, whose lease runs until \\S+Z unless renewed; stop that daemon, or wait for its lease to lapse \\(3 s after its last renewal\\)\\n$`),
  );

  // The holder hangs (SIGSTOP): it stops renewing, its lease lapses, and a new daemon takes over.
  process.kill(a.proc.pid, 'SIGSTOP');
  const frozenAt = Date.now();
  await startAfterLease(c);
  // Its last renewal was at most a third of the lease before the freeze: the prefix stayed its own ≥ 2 s.
  assert.ok(Date.now() - frozenAt >= 2000, `taken over ${Date.now() - frozenAt} ms after the freeze, before the lease lapsed`);
  assert.match(c.log, /taking over s3:\/\/\S+ from a lapsed lease/);
  assert.match(c.log, /holding s3:\/\/\S+ \(epoch 2, lease 3 s\)/);
  await expectBlocks(c, 'vm1', [before]);

  // The former holder comes back: its next renewal fails, it is fenced and says so.
  process.kill(a.proc.pid, 'SIGCONT');
  await a.waitForLog(/fenced: s3:\/\/\S+ was taken over by Shoal on \S+ \(pid \d+/, 15_000);
  assert.match(a.log, new RegExp(`pid ${c.proc.pid}`), 'the log names the daemon that took over');
  await a.waitForLog(/this daemon no longer writes/);

  // Its clients: writes and flushes fail with ESHUTDOWN, reads go on.
  const out = await nbdPython(`
import nbd, errno
h = nbd.NBD()
h.connect_uri(${JSON.stringify(a.unixUri('vm1'))})
for name, op in [('write', lambda: h.pwrite(b'x' * 4096, 0)), ('fua', lambda: h.pwrite(b'y' * 4096, 8192, nbd.CMD_FLAG_FUA)), ('flush', lambda: h.flush())]:
    try:
        op()
        print(name, 'ok')
    except nbd.Error as e:
        print(name, errno.errorcode.get(e.errno, e.errno))
print('read', len(h.pread(65536, 0)))
`);
  assert.equal(out.status, 0, out.stderr);
  assert.equal(out.stdout, 'write ESHUTDOWN\nfua ESHUTDOWN\nflush ESHUTDOWN\nread 65536\n');
  const made = await a.api('POST', '/v1/volumes', { name: 'late', size: MiB });
  assert.equal(made.status, 503, JSON.stringify(made.body));
  assert.equal(made.body.error.code, 'store_fenced');

  // The new holder serves what was durable, and writes on.
  const later: Blocks = { seed: 12, count: 10, size: 4096, stride: 512 * 1024, shift: 4096 };
  await writeBlocks(c, 'vm1', 'flush', [later]);
  await expectBlocks(c, 'vm1', [before, later]);
  assert.deepEqual((await c.api('GET', '/v1/volumes')).body.volumes.map((v: { name: string }) => v.name), ['vm1']);
});
