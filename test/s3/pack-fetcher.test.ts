// The fetcher reads ranges of pack objects into buffers it reuses. A buffer may go back to the pool only
// when nothing reads it any more: every reader has copied its chunks out, and the range's write into the
// pack's copy on the local disk has finished. Here that write is held back (a slow disk), so a buffer
// reused too early would put the next range's bytes into the copy: every chunk served, and every chunk
// of the copies, is compared with the pack it came from. Against the real RGW bucket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { needCeph, openTestBucket, uniqueBucketName } from '../helpers/ceph.js';
import { encodePack } from '../../server/store/s3/pack-format.js';
import { packObjectKey } from '../../server/store/s3/pack-records.js';
import { PackFetcher } from '../../server/store/s3/pack-fetcher.js';
import { LocalTier } from '../../server/store/s3/local-tier.js';
import type { LocalPack } from '../../server/store/s3/local-pack.js';

const CS = 4096;
const CHUNKS = 2048; // 8 MiB packs: four fetch windows each
const PACKS = 4;

/** A local tier whose copies' writes start 30 ms late, as on a busy disk. */
class SlowTier extends LocalTier {
  readonly copies: LocalPack[] = [];
  override sparse(id: number, epoch: number, chunkSize: number, chunks: number, bytes: number): LocalPack | null {
    const fresh = !this.get(id);
    const p = super.sparse(id, epoch, chunkSize, chunks, bytes);
    if (p && fresh) {
      this.copies.push(p);
      const write = p.write.bind(p);
      p.write = (index, data) => new Promise((r) => setTimeout(r, 30)).then(() => write(index, data));
    }
    return p;
  }
}

test('fetched ranges: every chunk served and every chunk of the local copies is the pack\'s own, with the copies\' writes held back', async (t) => {
  const ceph = await needCeph(t);
  if (!ceph) return;
  const bucket = await openTestBucket(ceph, uniqueBucketName('fetch'));
  const dir = mkdtempSync(join(tmpdir(), 'shoal-fetcher-'));
  const tier = new SlowTier(dir, 1024 * 2 ** 20);
  t.after(() => {
    tier.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const chunks: Buffer[][] = [];
  for (let id = 1; id <= PACKS; id++) {
    const data = Array.from({ length: CHUNKS }, () => randomBytes(CS));
    chunks[id] = data;
    await bucket.put(packObjectKey('p/', 1, id), encodePack(data.map((d, i) => ({ id: id * CHUNKS + i, data: d }))).pack);
  }
  const fetcher = new PackFetcher(bucket, 'p/', CS, tier, CHUNKS);

  // Every pack read at once, each by a streaming reader (64-chunk requests, one after another): a later
  // window's fetch takes a buffer an earlier one gave back.
  const served: Array<{ id: number; index: number; buf: Buffer }> = [];
  const reader = async (id: number) => {
    for (let from = 0; from < CHUNKS; from += 64) {
      const indexes = Array.from({ length: 64 }, (_, k) => from + k);
      const bufs = indexes.map(() => Buffer.alloc(CS));
      indexes.forEach((index, k) => served.push({ id, index, buf: bufs[k] }));
      // As the store does: what the local copy has from there, the rest from the bucket.
      const copy = tier.get(id);
      const here = indexes.filter((i) => copy?.has(i));
      const there = indexes.filter((i) => !copy?.has(i));
      await Promise.all([copy?.read(here, here.map((i) => bufs[i - from])), fetcher.read({ id, epoch: 1, chunks: CHUNKS }, there, there.map((i) => bufs[i - from]))]);
    }
  };
  const reads = Array.from({ length: PACKS }, (_, i) => reader(i + 1));
  await Promise.all(reads);
  const wrongServed = served.filter((s) => !s.buf.equals(chunks[s.id][s.index])).length;
  assert.equal(wrongServed, 0, 'every chunk served is the pack\'s own');

  // The copies, once their held-back writes are done.
  await new Promise((r) => setTimeout(r, 200));
  for (const c of tier.copies) await c.settled();
  assert.equal(tier.copies.length, PACKS);
  let present = 0;
  let wrong = 0;
  for (const c of tier.copies) {
    const indexes = Array.from({ length: CHUNKS }, (_, i) => i).filter((i) => c.has(i));
    const bufs = indexes.map(() => Buffer.alloc(CS));
    await c.read(indexes, bufs);
    present += indexes.length;
    indexes.forEach((i, k) => (wrong += bufs[k].equals(chunks[c.id][i]) ? 0 : 1));
  }
  assert.equal(present, PACKS * CHUNKS, 'every fetched chunk is in a local copy');
  assert.equal(wrong, 0, 'every chunk of the local copies is the pack\'s own');
});
