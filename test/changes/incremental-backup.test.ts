// Changed-block tracking used the way backup tools use it (issue 15): a full copy of snapshot s1,
// then writes, snapshot s2, and only the ranges the dirty bitmap qemu:dirty-bitmap:s1 reports on
// VOLUME@s2 copied onto the full copy: the result equals s2 byte for byte. The bitmap is read with
// nbdinfo --map, qemu-img map (x-dirty-bitmap) and libnbd's block_status, and listed over REST and
// by `shoal changes`; all must agree, and report exactly the chunks written with new bytes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, copyFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN, startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, nbdPython, runOk } from '../helpers/tools.js';
import { expectFsckClean, MiB } from '../helpers/volume-io.js';

const CHUNK = 4096;
const SIZE = 64 * MiB;

let d: Daemon;
let dir: string;
before(async () => {
  d = await startDaemon();
  dir = mkdtempSync(join(tmpdir(), 'shoal-backup-'));
});
after(async () => {
  await d?.dispose();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

interface Range {
  offset: number;
  length: number;
}

/** Runs libnbd Python; throws with its output on failure. */
async function python(script: string, env: Record<string, string> = {}): Promise<string> {
  const r = await nbdPython(script, { env, timeoutMs: 120_000 });
  if (r.status !== 0) throw new Error(`python failed:\n${r.stderr}\n${r.stdout}`);
  return r.stdout;
}

/** Copies `ranges` of the export onto `file` in place (what a backup tool does with dirty extents). */
async function applyRanges(uri: string, file: string, ranges: Range[]): Promise<void> {
  const rangesFile = join(dir, 'ranges.json');
  writeFileSync(rangesFile, JSON.stringify(ranges));
  await python(
    `
import nbd, json, os
h = nbd.NBD()
h.connect_uri(os.environ['URI'])
with open(os.environ['FILE'], 'r+b') as f:
    for r in json.load(open(os.environ['RANGES'])):
        off, left = r['offset'], r['length']
        while left > 0:
            n = min(left, 32 << 20)
            f.seek(off)
            f.write(h.pread(n, off))
            off += n
            left -= n
h.shutdown()
`,
    { URI: uri, FILE: file, RANGES: rangesFile },
  );
}

/** The whole export as bytes, copied by nbdcopy. */
async function exportBytes(name: string): Promise<Buffer> {
  const file = join(dir, `${name.replace('@', '_')}.img`);
  await runOk('nbdcopy', [d.unixUri(name), file]);
  const b = readFileSync(file);
  rmSync(file);
  return b;
}

/** Dirty extents of the bitmap on an export, as nbdinfo --map --json reports them. */
async function nbdinfoDirty(exportName: string, context: string): Promise<Range[]> {
  const out = await runOk('nbdinfo', ['--json', `--map=${context}`, d.unixUri(exportName)]);
  const map = JSON.parse(out) as Array<{ offset: number; length: number; type: number }>;
  return map.filter((e) => e.type === 1).map(({ offset, length }) => ({ offset, length }));
}

/** Dirty extents as qemu-img map sees them through x-dirty-bitmap (qemu maps dirty to "data": false). */
async function qemuImgDirty(exportName: string, context: string): Promise<Range[]> {
  const opts = `driver=nbd,export=${exportName},server.type=unix,server.path=${d.nbdSocket},x-dirty-bitmap=${context}`;
  const out = await runOk('qemu-img', ['map', '--output=json', '--image-opts', opts]);
  const map = JSON.parse(out) as Array<{ start: number; length: number; data: boolean }>;
  return merge(map.filter((e) => !e.data).map((e) => ({ offset: e.start, length: e.length })));
}

/** Every page of GET /changes, with a small page size so paging is exercised. */
async function restChanges(volume: string, query: string): Promise<Range[]> {
  const out: Range[] = [];
  let offset: number | undefined = 0;
  let pages = 0;
  while (offset !== undefined) {
    const r = await d.api('GET', `/v1/volumes/${volume}/changes?${query}&offset=${offset}&limit=2`);
    assert.equal(r.status, 200, JSON.stringify(r.body));
    assert.ok(r.body.extents.length <= 2);
    out.push(...r.body.extents);
    offset = r.body.next;
    pages++;
  }
  assert.ok(pages > 1, 'the listing took more than one page');
  return out;
}

/** Sorted, touching ranges merged. */
function merge(ranges: Range[]): Range[] {
  const out: Range[] = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) last.length = Math.max(last.length, r.offset + r.length - last.offset);
    else out.push({ ...r });
  }
  return out;
}

/** The chunks a set of byte ranges touches, as merged byte ranges. */
function chunksOf(ranges: Range[]): Range[] {
  return merge(
    ranges.map((r) => {
      const start = Math.floor(r.offset / CHUNK) * CHUNK;
      const end = Math.min(SIZE, Math.ceil((r.offset + r.length) / CHUNK) * CHUNK);
      return { offset: start, length: end - start };
    }),
  );
}

const total = (rs: Range[]) => rs.reduce((n, r) => n + r.length, 0);

/**
 * Changes the volume through libnbd the ways a guest does: scattered writes of new bytes (aligned
 * and not), a TRIM, a WRITE_ZEROES, and writes that put back the bytes already there (deduplicated
 * onto the same chunk, so they must not count as changed). Returns the ranges given new bytes.
 */
async function guestWrites(exportName: string, seed: number, base: Buffer): Promise<Range[]> {
  const changed: Range[] = [];
  const ops: Array<{ op: 'write' | 'trim' | 'zero'; offset: number; length: number; same?: boolean }> = [];
  let x = seed;
  const rand = (n: number) => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % n);
  // New bytes below 48 MiB; the bytes written back are above, so nothing undoes a change.
  for (let i = 0; i < 40; i++) {
    const offset = rand((48 * MiB) / 512 - 64) * 512 + (i % 5 === 0 ? 7 : 0);
    const length = i % 3 === 0 ? 100 + rand(3000) : CHUNK * (1 + rand(8));
    ops.push({ op: 'write', offset, length });
  }
  ops.push({ op: 'write', offset: SIZE - 300, length: 300 }); // the last bytes of the volume
  // Each round trims and zeroes where the bytes are still data (again would change nothing).
  ops.push({ op: 'trim', offset: (16 + 4 * seed) * MiB, length: MiB });
  ops.push({ op: 'zero', offset: (30 + 4 * seed) * MiB + 512, length: 64 * 1024 });
  ops.push({ op: 'write', offset: 50 * MiB, length: 8 * CHUNK, same: true });
  ops.push({ op: 'write', offset: 52 * MiB, length: CHUNK, same: true });
  for (const o of ops) if (!o.same) changed.push({ offset: o.offset, length: o.length });
  const payloads = join(dir, `payload-${seed}.bin`);
  const blobs = ops.map((o) => (o.op !== 'write' ? Buffer.alloc(0) : o.same ? base.subarray(o.offset, o.offset + o.length) : randomBytes(o.length)));
  writeFileSync(payloads, Buffer.concat(blobs));
  await python(
    `
import nbd, json, os
h = nbd.NBD()
h.connect_uri(os.environ['URI'])
data = open(os.environ['PAYLOADS'], 'rb').read()
p = 0
for o in json.loads(os.environ['OPS']):
    if o['op'] == 'write':
        h.pwrite(data[p:p + o['length']], o['offset'])
        p += o['length']
    elif o['op'] == 'trim':
        h.trim(o['length'], o['offset'])
    else:
        h.zero(o['length'], o['offset'])
h.flush()
h.shutdown()
`,
    { URI: d.unixUri(exportName), PAYLOADS: payloads, OPS: JSON.stringify(ops) },
  );
  rmSync(payloads);
  return changed;
}

test('an incremental backup copies only the dirty ranges of s2 against s1 and equals s2 byte for byte', async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdinfo', 'qemu-img', 'nbdsh')) return;
  await d.createVolume('bk', SIZE);
  // Random contents everywhere (no two chunks alike), then snapshot s1 and take the full backup.
  const baseFile = join(dir, 'base.img');
  writeFileSync(baseFile, randomBytes(SIZE));
  await runOk('nbdcopy', [baseFile, d.unixUri('bk')]);
  assert.equal((await d.api('POST', '/v1/volumes/bk/snapshots', { name: 's1' })).status, 201);
  const full = join(dir, 'full.img');
  await runOk('nbdcopy', [d.unixUri('bk@s1'), full]);
  const s1 = readFileSync(full);
  assert.ok(s1.equals(readFileSync(baseFile)));

  const changed = await guestWrites('bk', 1, s1);
  assert.equal((await d.api('POST', '/v1/volumes/bk/snapshots', { name: 's2' })).status, 201);

  // The bitmap offered on bk@s2 is s1 (older); on bk, both.
  const contexts = await runOk('nbdinfo', ['--json', d.unixUri('bk@s2')]);
  assert.deepEqual(JSON.parse(contexts).exports[0].contexts.sort(), ['base:allocation', 'qemu:dirty-bitmap:s1']);

  // Exactly the chunks given new bytes are dirty: not the ones written back with their old bytes.
  const dirty = await nbdinfoDirty('bk@s2', 'qemu:dirty-bitmap:s1');
  assert.deepEqual(dirty, chunksOf(changed));
  assert.ok(total(dirty) < SIZE / 4, `a small part of the volume is dirty (${total(dirty)} bytes)`);

  // Every client agrees: qemu-img map with x-dirty-bitmap, REST (paged), the CLI.
  assert.deepEqual(await qemuImgDirty('bk@s2', 'qemu:dirty-bitmap:s1'), dirty);
  assert.deepEqual(await restChanges('bk', 'since=s1&until=s2'), dirty);
  const cli = await runOk(process.execPath, [MAIN, 'changes', 'bk@s2', '--since', 's1', '--json', '--api', d.apiUrl]);
  assert.deepEqual(JSON.parse(cli).extents, dirty);

  // The incremental: only the dirty ranges of s2, onto the full copy of s1.
  await applyRanges(d.unixUri('bk@s2'), full, dirty);
  const s2 = await exportBytes('bk@s2');
  assert.ok(readFileSync(full).equals(s2), 'full copy of s1 + dirty ranges of s2 = s2');
  assert.ok(!s1.equals(s2));

  // Next round, against the live volume with libnbd's block_status on the bitmap of s2: copy the
  // dirty ranges of the volume onto the backup of s2, and it equals the volume.
  const changed2 = await guestWrites('bk', 2, s2);
  const live = JSON.parse(
    await python(
      `
import nbd, json, os
h = nbd.NBD()
h.add_meta_context('qemu:dirty-bitmap:s2')
h.connect_uri(os.environ['URI'])
assert h.can_meta_context('qemu:dirty-bitmap:s2')
size = h.get_size()
out, pos = [], 0
def cb(meta, offset, entries, err):
    global pos
    assert meta == 'qemu:dirty-bitmap:s2', meta
    for i in range(0, len(entries), 2):
        if entries[i + 1] & 1:
            out.append({'offset': pos, 'length': entries[i]})
        pos += entries[i]
    return 0
while pos < size:
    h.block_status(min(size - pos, 1 << 30), pos, cb)
h.shutdown()
print(json.dumps(out))
`,
      { URI: d.unixUri('bk') },
    ),
  ) as Range[];
  assert.deepEqual(merge(live), chunksOf(changed2));
  await applyRanges(d.unixUri('bk'), full, live);
  assert.ok(readFileSync(full).equals(await exportBytes('bk')), 'backup of s2 + dirty ranges of the volume = the volume');
  await expectFsckClean(d);
});

test('a clone reports its changes against the snapshot it was cloned from; a grown volume reports its new end as changed', async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdinfo', 'nbdsh')) return;
  await d.createVolume('gold', 16 * MiB);
  const goldFile = join(dir, 'gold.img');
  writeFileSync(goldFile, randomBytes(16 * MiB));
  await runOk('nbdcopy', [goldFile, d.unixUri('gold')]);
  assert.equal((await d.api('POST', '/v1/volumes/gold/snapshots', { name: 'v1' })).status, 201);
  assert.equal((await d.api('POST', '/v1/volumes', { name: 'vm1', from: { volume: 'gold', snapshot: 'v1' } })).status, 201);
  // A snapshot of the origin taken after the clone is not an older snapshot of the clone.
  assert.equal((await d.api('POST', '/v1/volumes/gold/snapshots', { name: 'v2' })).status, 201);

  // Fresh clone: nothing differs from gold@v1.
  let r = await d.api('GET', '/v1/volumes/vm1/changes?since=gold@v1');
  assert.deepEqual(r.body, { extents: [] });
  const written = { offset: 3 * MiB + 100, length: 3 * CHUNK };
  await python(`
import nbd, os
h = nbd.NBD()
h.connect_uri(os.environ['URI'])
h.pwrite(os.urandom(${written.length}), ${written.offset})
h.flush()
h.shutdown()
`, { URI: d.unixUri('vm1') });
  const contexts = JSON.parse(await runOk('nbdinfo', ['--json', d.unixUri('vm1')])).exports[0].contexts.sort();
  assert.deepEqual(contexts, ['base:allocation', 'qemu:dirty-bitmap:gold@v1']);
  const dirty = await nbdinfoDirty('vm1', 'qemu:dirty-bitmap:gold@v1');
  assert.deepEqual(dirty, chunksOf([written]));
  // The golden image's copy plus the clone's dirty ranges is the clone.
  const copy = join(dir, 'vm1.img');
  copyFileSync(goldFile, copy);
  await applyRanges(d.unixUri('vm1'), copy, dirty);
  assert.ok(readFileSync(copy).equals(await exportBytes('vm1')));
  r = await d.api('GET', '/v1/volumes/vm1/changes?since=gold@v2');
  assert.equal(r.status, 400, JSON.stringify(r.body));
  assert.equal(r.body.error.code, 'invalid_snapshot_range');

  // Grow the clone past what its map's height covers (a new root above the old one): everything
  // past the snapshot's end may differ (it did not exist then); before it, the same chunk as before.
  assert.equal((await d.api('PATCH', '/v1/volumes/vm1', { size: 512 * MiB })).status, 200);
  r = await d.api('GET', '/v1/volumes/vm1/changes?since=gold@v1');
  assert.deepEqual(r.body.extents, [...chunksOf([written]), { offset: 16 * MiB, length: 496 * MiB }]);
  assert.deepEqual(await nbdinfoDirty('vm1', 'qemu:dirty-bitmap:gold@v1'), r.body.extents);
  await expectFsckClean(d);
});
