// Cold reads from the bucket, as a new host serves a volume it has never read: several readers at once
// share the fetched ranges (the buffers a range is read into are reused as soon as no reader needs them),
// and what the RAM cache cannot keep is served again from the packs' copies on the local disk (written and
// read O_DIRECT), without fetching it a second time. Every byte is compared with what was written.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomFillSync } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { needCeph, uniqueBucketName } from '../helpers/ceph.js';
import { needTools, runOk } from '../helpers/tools.js';
import { s3Daemon } from '../helpers/s3-daemon.js';
import { MiB } from '../helpers/volume-io.js';
import type { Daemon } from '../helpers/daemon.js';

const SIZE = 48 * MiB;
const READERS = 6;

function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

async function downloaded(d: Daemon): Promise<number> {
  const text = (await d.api('GET', '/metrics')).body as string;
  return Number(/^shoal_s3_downloaded_bytes_total (\S+)$/m.exec(text)?.[1]);
}

test('a cold volume read by several readers at once, then again past a small RAM cache: every byte as written, the second pass from the local disk', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdcopy')) return;
  const store = `s3://${uniqueBucketName('cold')}/p`;
  const a = s3Daemon(ceph, store, {});
  const b = s3Daemon(ceph, store, { args: ['--cache-size', '16M'] });
  t.after(async () => {
    await a.dispose();
    await b.dispose();
  });
  await a.start();
  await a.createVolume('img', SIZE);
  const image = join(a.dataDir, '..', `cold-${process.pid}.raw`);
  const data = Buffer.alloc(SIZE);
  randomFillSync(data);
  writeFileSync(image, data);
  t.after(() => runOk('rm', ['-f', image]));
  const want = sha(image);
  await runOk('nbdcopy', ['--flush', image, a.unixUri('img')]);
  await a.stop(); // the bucket holds it all

  await b.start();
  assert.equal(await b.waitPrefaulted(16 * 2 ** 20, 30_000), 16 * 2 ** 20, 'an S3 store faults its RAM cache in at start by default');
  const outs = Array.from({ length: READERS }, (_, i) => join(b.dataDir, `out-${i}.raw`));
  await Promise.all(outs.map((o) => runOk('nbdcopy', [b.unixUri('img'), o])));
  for (const o of outs) assert.equal(sha(o), want, `${o}: every byte as written`);
  const first = await downloaded(b);
  t.diagnostic(`first pass: ${(first / SIZE).toFixed(3)}× the volume fetched`);
  assert.ok(first >= SIZE && first < 1.25 * SIZE, `${READERS} readers at once fetched ${first} bytes for ${SIZE}: each range about once`);

  // 16 MiB of RAM cache cannot hold 48 MiB: most chunks come back from the local copies.
  await runOk('nbdcopy', [b.unixUri('img'), outs[0]]);
  assert.equal(sha(outs[0]), want, 'the second pass reads back every byte');
  const second = (await downloaded(b)) - first;
  t.diagnostic(`second pass: ${second} bytes fetched`);
  assert.ok(second < 0.05 * SIZE, `the second pass fetched ${second} bytes: the local disk served it`);
});
