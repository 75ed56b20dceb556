// A commit's delta in the bucket (server/meta/replica-format.ts) is what a restore on another host
// replays into LMDB: every op must come back in its order, with its database, key and value exactly
// (a wrong value is a wrong chunk record), deltas written by an older Shoal (shoal-delta/1) must still
// be read, and a damaged delta must be refused rather than half applied.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pack, unpack } from 'msgpackr';
import { decodeDelta, encodeDelta, type Delta } from '../../server/meta/replica-format.js';
import { isShoalError } from '../../server/errors.js';

const record = { seq: 7, epoch: 3, prev: { seq: 6, epoch: 3 } };
const dbs = { chunks: { encoding: 'binary' }, main: { encoding: 'msgpack' }, 'node-refs': { encoding: 'msgpack' }, fingerprints: { encoding: 'msgpack', keyEncoding: 'binary' } };

function sample(): Delta {
  const ops: Delta['ops'] = [];
  for (let slot = 0; slot < 1000; slot++) ops.push({ db: 'chunks', key: 2 ** 40 + slot, value: Buffer.from(`record of chunk ${slot}`.repeat((slot % 5) + 1)) });
  ops.push({ db: 'chunks', key: 2 ** 40 + 3, value: undefined }); // deleted after its put: order matters
  ops.push({ db: 'main', key: 'replica', value: record });
  ops.push({ db: 'main', key: 'volumes', value: { a: [1, 2, 3], b: 'x' } });
  ops.push({ db: 'node-refs', key: 17, value: 4 });
  ops.push({ db: 'node-refs', key: 18, value: undefined });
  ops.push({ db: 'fingerprints', key: Buffer.alloc(32, 0xab), value: 2 ** 33 + 1 });
  ops.push({ db: 'chunks', key: 0, value: Buffer.alloc(0) }); // empty bytes are bytes, not a delete
  ops.push({ db: 'chunks', key: 1.5, value: new Uint8Array([1, 2, 3]) });
  return { record, dbs, ops };
}

function same(a: Delta, b: Delta): void {
  assert.deepEqual(b.record, a.record);
  assert.deepEqual(b.dbs, a.dbs);
  assert.equal(b.ops.length, a.ops.length);
  for (let i = 0; i < a.ops.length; i++) {
    const x = a.ops[i];
    const y = b.ops[i];
    assert.equal(y.db, x.db, `op ${i}: database`);
    assert.deepEqual(y.key, x.key, `op ${i}: key`);
    if (x.value instanceof Uint8Array) assert.deepEqual(Buffer.from(y.value as Uint8Array), Buffer.from(x.value), `op ${i}: bytes`);
    else assert.deepEqual(y.value, x.value, `op ${i}: value`);
  }
}

test('every op comes back in its order, with its database, key and value', () => {
  const d = sample();
  same(d, decodeDelta(encodeDelta(d), 'test://delta'));
  const empty: Delta = { record, dbs: {}, ops: [] };
  same(empty, decodeDelta(encodeDelta(empty), 'test://empty'));
});

test('a delta written as shoal-delta/1 (an array per op) is still read', () => {
  const d = sample();
  const names = Object.keys(d.dbs);
  const v1 = pack({
    format: 'shoal-delta/1',
    record,
    dbs: names.map((n) => [n, d.dbs[n]]),
    ops: d.ops.map((o) => (o.value === undefined ? [names.indexOf(o.db), o.key] : [names.indexOf(o.db), o.key, o.value])),
  });
  same(d, decodeDelta(v1, 'test://v1'));
});

const MAGIC = Buffer.from('shoal-delta/2\n');

/** A shoal-delta/2 body taken apart: its header (msgpack) and the values' bytes after it. */
function parts(body: Buffer): { header: Record<string, unknown>; bin: Buffer } {
  assert.ok(body.subarray(0, MAGIC.length).equals(MAGIC), 'a delta starts with its format');
  const n = body.readUInt32LE(MAGIC.length);
  return { header: unpack(body.subarray(MAGIC.length + 4, MAGIC.length + 4 + n)) as Record<string, unknown>, bin: body.subarray(MAGIC.length + 4 + n) };
}

function body(header: Record<string, unknown>, bin: Buffer): Buffer {
  const h = pack(header);
  const n = Buffer.alloc(4);
  n.writeUInt32LE(h.length);
  return Buffer.concat([MAGIC, n, h, bin]);
}

test('a damaged delta is refused as corrupt metadata', () => {
  const { header, bin } = parts(encodeDelta(sample()));
  same(sample(), decodeDelta(body(header, bin), 'test://rebuilt')); // the pieces below are the real ones
  const damaged: Array<[string, Buffer]> = [
    ['an unknown format', pack({ ...header, format: 'shoal-delta/9' })],
    ['cut inside its header', body(header, bin).subarray(0, MAGIC.length + 10)],
    ['a column cut short', body({ ...header, len: (header.len as Buffer).subarray(0, 40) }, bin)],
    ['bytes missing', body(header, bin.subarray(1))],
    ['bytes left over', body(header, Buffer.concat([bin, Buffer.from([0])]))],
    ['a key missing', body({ ...header, keys: (header.keys as unknown[]).slice(1) }, bin)],
    ['a value missing', body({ ...header, values: (header.values as unknown[]).slice(1) }, bin)],
    ['a database it does not name', body({ ...header, dbs: (header.dbs as unknown[]).slice(0, 1) }, bin)],
    ['no record', body({ ...header, record: undefined }, bin)],
    ['not msgpack', Buffer.from([0xc1])],
  ];
  for (const [what, raw] of damaged) {
    assert.throws(() => decodeDelta(raw, 'test://bad'), (e: unknown) => isShoalError(e) && e.code === 'corrupt_metadata' && /test:\/\/bad/.test(e.message), what);
  }
});
