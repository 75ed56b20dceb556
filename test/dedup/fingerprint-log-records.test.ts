// A commit's dedup-log record holds exactly that commit's entries. After a burst of new chunks grew
// the buffer that gathers entries between commits, the records of later commits (a FLUSH after one
// 4 KiB write) were views of a fresh buffer of the burst's size: ~3 MiB allocated per FLUSH and
// pinned until indexed, which had V8 run a full GC every ~10 FLUSHes.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetaStore } from '../../server/meta/meta-store.js';
import { DedupLog } from '../../server/dedup/dedup-log.js';
import { KEY_BYTES } from '../../server/dedup/fingerprinter.js';

const ENTRY = KEY_BYTES + 6;
const dir = mkdtempSync(join(tmpdir(), 'shoal-fplog-'));
after(() => rmSync(dir, { recursive: true, force: true }));

test('after a burst, each small commit logs a record of its own size, not the burst buffer', async () => {
  const meta = MetaStore.open(dir, { chunkSize: 4096 });
  const log = new DedupLog(meta.openDb({ name: 'fingerprint-log', encoding: 'binary' }), meta.superblock, meta.pipeline);
  let slot = 1;
  const append = (n: number) => {
    const which = Uint32Array.from({ length: n }, (_, i) => i);
    const slots = Float64Array.from({ length: n }, () => slot++);
    log.append(randomBytes(n * KEY_BYTES), which, slots, n);
  };
  append(32768); // a commit's worth of a sequential write: ~1.4 MB of entries
  const burst = log.take();
  assert.equal(burst?.record?.blob.length, 32768 * ENTRY);
  for (let i = 0; i < 20; i++) {
    append(1);
    const blob = log.take()?.record?.blob;
    assert.equal(blob?.length, ENTRY);
    // Buffer.from() of a small buffer comes from Node's 8 KiB pool; a view of a burst-sized buffer would be MiBs.
    assert.ok(blob.buffer.byteLength <= 8192, `commit ${i}: a ${ENTRY}-byte record holds on to ${blob.buffer.byteLength} bytes`);
  }
  assert.equal(log.size, 32768 + 20, 'every entry is still in the in-memory table');
  await meta.close();
});
