// A pack object damaged in the bucket (bit rot, a bad copy, a buggy tool) is never served: a daemon
// restoring from the bucket checks every fetched chunk against the pack's index (CRC-32, on the thread
// pool) and answers a read of a damaged chunk with EIO, naming the object in its log, while the rest of
// the volume reads back intact and the daemon goes on serving.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { needCeph, openTestBucket, uniqueBucketName } from '../helpers/ceph.js';
import { needTools } from '../helpers/tools.js';
import { s3Daemon, scanBlocks, writeBlocks, type Blocks } from '../helpers/s3-daemon.js';
import { MiB } from '../helpers/volume-io.js';
import { HEADER_BYTES } from '../../server/store/s3/pack-format.js';

test('a pack damaged in the bucket: its chunks read as EIO, the rest of the volume is intact, the daemon serves on', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph || !needTools(t, 'nbdsh')) return;
  const name = uniqueBucketName('rot');
  const store = `s3://${name}/p`;
  const small = { SHOAL_TEST_S3_PACK_BYTES: String(256 * 1024) }; // a few packs of 64 chunks
  const a = s3Daemon(ceph, store, { env: small });
  const b = s3Daemon(ceph, store, {});
  t.after(async () => {
    await a.dispose();
    await b.dispose();
  });
  await a.start();
  await a.createVolume('img', 1 * MiB);
  const blocks: Blocks = { seed: 77, count: 16, size: 64 * 1024, stride: 64 * 1024 }; // all of it
  await writeBlocks(a, 'img', 'flush', [blocks]);
  await a.stop(); // everything in the bucket, the lease released

  // Flip one bit in the data of one pack object (its chunk 1), rewritten in place.
  const bucket = await openTestBucket(ceph, name);
  const keys: string[] = [];
  for await (const o of bucket.list('p/packs/')) if (o.key.endsWith('.pack')) keys.push(o.key);
  assert.ok(keys.length >= 4, `1 MiB in 256 KiB packs makes several objects (${keys.length})`);
  const victim = keys[1]!;
  const obj = await bucket.get(victim);
  assert.ok(obj);
  const body = Buffer.from(obj.body);
  body[HEADER_BYTES + 4096 + 100]! ^= 0x08;
  await bucket.put(victim, body);

  // A new host reads the volume from the bucket.
  await b.start();
  const out = await scanBlocks(b, 'img', [blocks]);
  assert.ok(out.failed.length > 0, 'a read of the damaged chunk fails');
  assert.deepEqual(out.errnos, ['EIO']);
  assert.ok(out.failed.length <= 64, `only chunks of the damaged pack fail (${out.failed.length} blocks)`);
  // The log says which object is damaged, at error level (lines reach the test a little after the fact).
  const named = new RegExp(`"level":50.*nbd: read failed: s3://${name}/${victim.replace(/[/.]/g, '\\$&')} is not a valid pack: chunk \\d+ \\(at \\d+\\) does not match its checksum`);
  await b.waitForLog(named, 5000);
  // Everything else reads back as written (no damaged byte is ever served), and the daemon serves on.
  assert.deepEqual(out.wrong, [], 'every block that reads at all holds what was written');
  const again = await scanBlocks(b, 'img', [blocks]);
  assert.deepEqual(again.failed, out.failed, 'the same blocks fail again, no others');
  assert.deepEqual(again.wrong, []);
  // One line per connection for its failed reads (a guest retrying a damaged block does not flood the log).
  await new Promise((r) => setTimeout(r, 300));
  const lines = b.log.split('\n').filter((l) => l.includes('nbd: read failed')).length;
  assert.ok(lines >= 1 && lines <= 2, `${lines} log lines for ${out.failed.length + again.failed.length} failed reads on two connections`);
  assert.equal((await b.api('GET', '/healthz')).status, 200);
});
