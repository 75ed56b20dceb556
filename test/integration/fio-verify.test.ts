// fio's nbd engine (libnbd: structured replies, multi-conn) writes with checksummed blocks and reads them
// back: 4 KiB random writes at queue depth 16, then random sizes from 512 B to 64 KiB at odd lengths over
// two connections. After a graceful restart and after a kill -9, fio --verify_only reads everything back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';

const MiB = 2 ** 20;

interface FioJob {
  jobname: string;
  error: number;
  job_runtime: number;
  read: { io_bytes: number };
  write: { io_bytes: number; total_ios: number };
}

function jobs(uri: string) {
  // verify_state_save=0: no *-verify.state files left in the working directory.
  const common = ['--ioengine=nbd', `--uri=${uri}`, '--verify_state_save=0', '--rw=randwrite', '--iodepth=16', '--verify=crc32c', '--verify_fatal=1', '--randrepeat=1'];
  return {
    // 4 KiB random writes over 64 MiB; end_fsync: an NBD FLUSH at the end, so kill -9 later keeps it all.
    aligned: [...common, '--name=aligned', '--bs=4k', '--size=64m', '--offset=0', '--end_fsync=1'],
    // Random sizes 512 B..64 KiB, not rounded to the minimum (sub-chunk and chunk-straddling writes),
    // two jobs = two connections, 16 MiB each, side by side.
    mixed: [...common, '--name=mixed', '--bsrange=512-64k', '--bs_unaligned', '--size=16m', '--numjobs=2', '--offset=64m', '--offset_increment=16m', '--group_reporting'],
  };
}

async function fio(args: string[]): Promise<FioJob> {
  const r = await run('fio', [...args, '--output-format=json'], { timeoutMs: 60_000, cwd: tmpdir() });
  // The nbd engine prints "fio: connected to NBD server" before the JSON.
  const i = r.stdout.indexOf('{');
  assert.equal(r.status, 0, `fio ${args.join(' ')} exited ${r.status}:\n${r.stderr.slice(0, 3000)}\n${r.stdout.slice(0, i > 0 ? i : 2000)}`);
  assert.doesNotMatch(r.stderr, /verify:|bad magic|crc32c/i, r.stderr.slice(0, 3000));
  const out = JSON.parse(r.stdout.slice(i));
  assert.equal(out.jobs.length, 1, 'one job (group reporting)');
  const job: FioJob = out.jobs[0];
  assert.equal(job.error, 0, `fio job error ${job.error}`);
  return job;
}

async function verifyAll(d: Daemon, label: string, log: (s: string) => void) {
  const j = jobs(d.unixUri('fio'));
  const a = await fio([...j.aligned, '--verify_only']);
  log(`${label}: aligned verify ${a.job_runtime} ms`);
  assert.equal(a.read.io_bytes, 64 * MiB, `${label}: aligned job verified every block`);
  const m = await fio([...j.mixed, '--verify_only']);
  log(`${label}: mixed verify ${m.job_runtime} ms`);
  assert.ok(m.read.io_bytes > 24 * MiB, `${label}: mixed job verified ${m.read.io_bytes} bytes`);
}

test('fio randwrite with crc32c verify, then verify-only after restart and after kill -9', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'fio')) return;
  const d = await startDaemon();
  try {
    await d.createVolume('fio', 96 * MiB);
    const j = jobs(d.unixUri('fio'));
    const a = await fio(j.aligned);
    assert.equal(a.write.io_bytes, 64 * MiB, 'aligned job wrote 64 MiB');
    assert.equal(a.read.io_bytes, 64 * MiB, 'aligned job read and verified 64 MiB');
    t.diagnostic(`aligned write+verify ${a.job_runtime} ms`);
    // The mixed job over TCP, to cover both transports.
    const m = await fio(jobs(d.uri('fio')).mixed);
    assert.ok(m.write.io_bytes > 24 * MiB && m.write.total_ios > 500, `mixed job wrote ${m.write.io_bytes} bytes in ${m.write.total_ios} requests`);
    assert.equal(m.read.io_bytes, m.write.io_bytes, 'mixed job verified all it wrote');
    t.diagnostic(`mixed write+verify ${m.job_runtime} ms`);

    await d.restart();
    await verifyAll(d, 'after graceful restart', (s) => t.diagnostic(s));

    // Everything was on disk by the graceful stop; a kill -9 must not lose or damage any of it.
    await d.kill9();
    await d.start();
    await verifyAll(d, 'after kill -9', (s) => t.diagnostic(s));

    const fsck = await d.api('POST', '/v1/fsck');
    assert.equal(fsck.body.ok, true, JSON.stringify(fsck.body.errors));
  } finally {
    await d.dispose();
  }
});
