// Packs on the real radosgw: chunks gathered into ~target-sized packs, each uploaded once under the
// writer's epoch, read back chunk by chunk with ranged GETs; a fenced writer's next upload fails.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { needCeph, openTestBucket, uniqueBucketName } from '../helpers/ceph.js';
import { PrefixLease } from '../../server/store/s3/lease.js';
import { PackWriter, type UploadedPack } from '../../server/store/s3/pack-writer.js';
import { decodePack, parseIndex, parseTrailer, verifyChunk, TRAILER_BYTES } from '../../server/store/s3/pack-format.js';
import { ShoalError } from '../../server/errors.js';

const MiB = 2 ** 20;

test('chunks go out in packs of about the target size and come back by ranged reads', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const bucket = await openTestBucket(ceph, uniqueBucketName('packs'));
  const lease = await PrefixLease.acquire({ bucket, prefix: 'host-a/', seconds: 30 });
  t.after(() => lease.release());
  const writer = new PackWriter({ lease, targetBytes: 2 * MiB, maxBytes: 3 * MiB });

  const chunks = new Map<number, Buffer>();
  const packs: UploadedPack[] = [];
  for (let id = 1000; id < 1000 + 1300; id++) {
    const data = id % 97 === 0 ? randomBytes(256 * 1024) : randomBytes(4096); // mostly 4 KiB, now and then a large one
    chunks.set(id, Buffer.from(data));
    if (!writer.fits(data.length)) packs.push((await writer.upload())!);
    writer.add(id, data);
    data.fill(0); // the caller may reuse its buffer: the writer kept its own copy
    if (writer.full) packs.push((await writer.upload())!);
  }
  const last = await writer.upload();
  if (last) packs.push(last);
  assert.equal(await writer.upload(), null, 'nothing left pending');
  assert.equal(writer.pendingChunks, 0);

  assert.ok(packs.length >= 3, `${packs.length} packs`);
  const listed: string[] = [];
  for await (const o of bucket.list('host-a/packs/')) listed.push(o.key);
  assert.deepEqual(listed, packs.map((p) => p.key), 'one object per pack, named by epoch and sequence');
  assert.match(packs[0]!.key, /^host-a\/packs\/00000001\/0000000000\.pack$/);
  for (const p of packs.slice(0, -1)) assert.ok(p.size >= 2 * MiB - 256 * 1024 && p.size <= 3 * MiB, `pack ${p.key}: ${p.size} bytes`);

  // Every chunk, by a ranged read of exactly its bytes, checked against its entry.
  let n = 0;
  for (const p of packs) {
    for (const e of p.entries) {
      if (n++ % 50 !== 0 && e.length === 4096) continue; // a sample of the small ones, every large one
      const got = await bucket.get(p.key, { offset: e.offset, length: e.length });
      verifyChunk(got!.body, e, bucket.url(p.key));
      assert.ok(got!.body.equals(chunks.get(e.id)!), `chunk ${e.id} reads back as written`);
    }
  }
  // A reader that knows only the key: trailer, then index, from the object's tail.
  const p0 = packs[0]!;
  const size = (await bucket.head(p0.key))!.size;
  const tail = await bucket.get(p0.key, { offset: size - TRAILER_BYTES, length: TRAILER_BYTES });
  const trailer = parseTrailer(tail!.body, size, p0.key);
  const index = await bucket.get(p0.key, { offset: trailer.indexOffset, length: size - TRAILER_BYTES - trailer.indexOffset });
  assert.deepEqual(parseIndex(index!.body, trailer, p0.key), p0.entries);
  assert.deepEqual(decodePack((await bucket.get(p0.key))!.body, p0.key), p0.entries, 'the whole object decodes and checks out');
});

test('a chunk that would overflow the pack is refused until the pack is uploaded', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const bucket = await openTestBucket(ceph, uniqueBucketName('packfull'));
  const lease = await PrefixLease.acquire({ bucket, prefix: '', seconds: 30 });
  t.after(() => lease.release());
  const writer = new PackWriter({ lease, targetBytes: MiB, maxBytes: MiB });
  writer.add(1, randomBytes(MiB - 200));
  assert.equal(writer.fits(4096), false);
  assert.throws(() => writer.add(2, randomBytes(4096)), (e) => e instanceof ShoalError && e.code === 'invalid_request' && /does not fit/.test(e.message));
  assert.equal(writer.pendingChunks, 1, 'the refused chunk was not added');
  const p = await writer.upload();
  assert.equal(p!.entries.length, 1);
  assert.equal(p!.key, 'packs/00000001/0000000000.pack');
  assert.throws(() => new PackWriter({ lease, targetBytes: 2 * MiB, maxBytes: MiB }), (e) => e instanceof ShoalError && e.code === 'invalid_request');
});

test("a fenced writer's next upload fails, and leaves nothing in the bucket", async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const bucket = await openTestBucket(ceph, uniqueBucketName('packfence'));
  const lease = await PrefixLease.acquire({ bucket, prefix: 'p/', seconds: 3 });
  t.after(() => lease.stop());
  const writer = new PackWriter({ lease });
  writer.add(1, randomBytes(4096));
  await writer.upload();
  // Another daemon takes the lease over behind this one's back; its renewal then finds out.
  const cur = (await bucket.get('p/lease'))!;
  await bucket.put('p/lease', Buffer.from(JSON.stringify({ ...JSON.parse(cur.body.toString()), epoch: 2, holder: { id: 'b', host: 'host-b', pid: 2 } })), { ifMatch: cur.etag });
  await assert.rejects(lease.renew(), (e) => e instanceof ShoalError && e.code === 'store_fenced');
  writer.add(2, randomBytes(4096));
  await assert.rejects(writer.upload(), (e) => e instanceof ShoalError && e.code === 'store_fenced' && e.nbdErrno === 'ESHUTDOWN');
  const keys: string[] = [];
  for await (const o of bucket.list('p/packs/')) keys.push(o.key);
  assert.deepEqual(keys, ['p/packs/00000001/0000000000.pack'], 'only the pack uploaded before the takeover');
});
