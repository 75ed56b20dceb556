// The object store goes away (the test kills its own radosgw, as a gateway or network failure would):
// cached reads go on, writes go on into the local tier, a FLUSH in flush mode fails with EIO after
// --s3-timeout without losing what was acknowledged before; once the gateway is back the backlog drains,
// and a restore on another data directory finds every byte, the ones written during the outage included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync } from 'node:fs';
import { needCeph, PrivateGateway, uniqueBucketName } from '../helpers/ceph.js';
import { needTools, nbdPython } from '../helpers/tools.js';
import type { Daemon } from '../helpers/daemon.js';
import { expectBlocks, s3Daemon, startAfterLease, writeBlocks, type Blocks } from '../helpers/s3-daemon.js';
import { MiB } from '../helpers/volume-io.js';

/** One sample of an unlabelled metric (or of the sum of a labelled one's samples matching `labels`). */
async function metric(d: Daemon, name: string, labels = ''): Promise<number> {
  const text = (await d.api('GET', '/metrics')).body as string;
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || !(line[name.length] === ' ' || line[name.length] === '{') || !line.includes(labels)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

async function until(what: string, ok: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

test('radosgw down: cached reads go on, FLUSH fails with EIO after --s3-timeout, the backlog drains when it returns, nothing is lost', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const gw = await PrivateGateway.create(ceph);
  await gw.start();
  const store = `s3://${uniqueBucketName('outage')}/p`;
  const args = ['--lease-seconds', '5', '--s3-timeout', '3s'];
  const a = s3Daemon(ceph, store, { endpoint: gw.endpoint, args, env: { SHOAL_TEST_S3_PACK_BYTES: String(256 * 1024) } });
  const b = s3Daemon(ceph, store, { args });
  t.after(async () => {
    await a.kill9();
    await a.dispose();
    await b.dispose();
    await gw.kill();
  });
  await a.start();
  await a.createVolume('vm', 16 * MiB);
  const durable: Blocks = { seed: 21, count: 64, size: 64 * 1024, stride: 128 * 1024 };
  await writeBlocks(a, 'vm', 'flush', [durable]);
  await expectBlocks(a, 'vm', [durable]); // now in the RAM cache and the local tier

  await gw.kill();
  await expectBlocks(a, 'vm', [durable]);
  // Writes are acknowledged from the local tier; the FLUSH that would make them durable cannot be.
  const during: Blocks = { seed: 22, count: 32, size: 64 * 1024, stride: 128 * 1024, shift: 64 * 1024 };
  await writeBlocks(a, 'vm', 'none', [during]);
  const flush = await nbdPython(`
import nbd, errno, time
h = nbd.NBD()
h.connect_uri(${JSON.stringify(a.unixUri('vm'))})
t = time.monotonic()
try:
    h.flush()
    print('ok')
except nbd.Error as e:
    print(errno.errorcode.get(e.errno, e.errno), round(time.monotonic() - t, 1))
`);
  assert.equal(flush.status, 0, flush.stderr);
  const [errName, seconds] = flush.stdout.trim().split(' ');
  assert.equal(errName, 'EIO', flush.stdout);
  assert.ok(Number(seconds) >= 2.5 && Number(seconds) < 15, `the FLUSH failed after ${seconds} s, --s3-timeout is 3 s`);
  await a.waitForLog(/did not confirm the flush within 3s/);
  assert.ok((await metric(a, 'shoal_s3_upload_backlog_bytes')) > 0, 'the backlog is counted');
  assert.ok((await metric(a, 'shoal_s3_upload_lag_seconds')) > 1, 'and its age');
  assert.ok((await metric(a, 'shoal_s3_requests_total', 'result="network_error"')) > 0, 'failed requests are counted by result');
  await expectBlocks(a, 'vm', [durable, during]);

  // The gateway returns: uploads resume, the backlog drains, a FLUSH succeeds.
  await gw.start();
  // Both reach 0 (background commits go on meanwhile, each briefly behind until its delta lands).
  await until('the backlog and the lag to drain', async () => (await metric(a, 'shoal_s3_upload_backlog_bytes')) === 0 && (await metric(a, 'shoal_s3_upload_lag_seconds')) === 0, 60_000);
  await writeBlocks(a, 'vm', 'flush', []);

  // Everything, the writes made during the outage too, is in the bucket: a restore elsewhere finds it.
  await a.kill9();
  rmSync(a.dataDir, { recursive: true, force: true });
  await startAfterLease(b);
  await expectBlocks(b, 'vm', [durable, during]);
});

test('radosgw down: writes fill the local tier up to --local-cache-size, then wait, and go on when it returns', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const gw = await PrivateGateway.create(ceph);
  await gw.start();
  const a = s3Daemon(ceph, `s3://${uniqueBucketName('bound')}/p`, { endpoint: gw.endpoint, args: ['--local-cache-size', '64M', '--s3-sync', 'async'] });
  t.after(async () => {
    await a.kill9();
    await a.dispose();
    await gw.kill();
  });
  await a.start();
  await a.createVolume('big', 128 * MiB);
  await gw.kill();
  // 96 MiB of distinct data: more than the tier holds while nothing can be uploaded.
  const all: Blocks = { seed: 71, count: 96, size: MiB, stride: MiB };
  const writing = writeBlocks(a, 'big', 'flush', [all]);
  let done = false;
  void writing.then(() => (done = true), () => (done = true));
  await until('staged packs to fill the tier', async () => (await metric(a, 'shoal_s3_upload_backlog_bytes')) >= 48 * MiB, 60_000);
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(done, false, 'the writes wait while the tier is full of packs that cannot be uploaded');
  assert.ok((await metric(a, 'shoal_s3_upload_backlog_bytes')) <= 72 * MiB, 'the backlog stays near the bound');
  await gw.start();
  await writing;
  await expectBlocks(a, 'big', [all]);
});
