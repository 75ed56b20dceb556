// The flush journal (server/volume/flush-journal.ts): a FLUSH writes the operations its volume
// completed since the last commit to DATA_DIR/flush-journal, and a restart after kill -9 replays
// those the last commit does not cover. Background commits are held off here (every 10 minutes), so
// what survives the kill survives through the journal alone.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { startDaemon } from '../helpers/daemon.js';
import { needTools } from '../helpers/tools.js';
import { expectFsckClean, expectPattern, withHandle, MiB } from '../helpers/volume-io.js';

const NO_COMMITS = { NODE_ENV: 'test', SHOAL_TEST_COMMIT_INTERVAL_MS: '600000' };

/** Where records begin in the journal's first MiB (each starts on a 512-byte sector with its magic). */
function recordStarts(file: Buffer): number[] {
  const starts: number[] = [];
  for (let at = 0; at < 1024 * 1024; at += 512) if (file.toString('latin1', at, at + 4) === 'SHFJ') starts.push(at);
  return starts;
}

async function journalStats(d: Awaited<ReturnType<typeof startDaemon>>): Promise<{ records: number; commits: number; replayed: number }> {
  return (await d.api('GET', '/v1/stats')).body.flushJournal;
}

/**
 * Writes 4 KiB of byte `a` at 0 and of `b` at 8192 on a new 4 MiB volume, each FLUSHed (the volume's
 * first FLUSH commits, so each write is one journal record), then kills the daemon: the journal's
 * path, its bytes, and where its two records start.
 */
async function twoRecordsThenKill(d: Awaited<ReturnType<typeof startDaemon>>, volume: string, a: number, b: number): Promise<{ path: string; file: Buffer; starts: number[] }> {
  await d.createVolume(volume, 4 * MiB);
  const hex = (x: number) => `\\x${x.toString(16).padStart(2, '0')}`;
  await withHandle(d, volume, `h.flush()\nh.pwrite(b'${hex(a)}' * 4096, 0)\nh.flush()\nh.pwrite(b'${hex(b)}' * 4096, 8192)\nh.flush()`);
  await d.kill9();
  const path = join(d.dataDir, 'flush-journal');
  const file = readFileSync(path);
  const starts = recordStarts(file);
  assert.equal(starts.length, 2, `two records: ${starts}`);
  return { path, file, starts };
}

test('writes, trims and zeroes acknowledged by FLUSH and FUA come back after kill -9, holes and allocated zeroes as they were', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'qemu-io')) return;
  const d = await startDaemon({ env: NO_COMMITS });
  try {
    await d.createVolume('j', 8 * MiB);
    await d.createVolume('other', 1 * MiB);
    // Committed first (the first FLUSH of a volume commits): 0x11 over the first 4 MiB. Then a snapshot,
    // journaled: it comes back from the journal too, before the operations after it.
    await withHandle(d, 'j', `for i in range(4):\n    h.pwrite(b'\\x11' * (1024 * 1024), i * 1024 * 1024)\nh.flush()`);
    assert.equal((await d.api('POST', '/v1/volumes/j/snapshots', { name: 'base' })).status, 201);
    // Then, journaled only (libnbd's order: count, then offset; each within one map leaf of 1 MiB, so
    // that no whole leaf is let go, whose reclaim would commit): a sub-chunk write, a whole-chunk FUA write, a trim, zeroes with and
    // without a hole, a write past the old data, and one on another volume, in one FLUSH and a FUA.
    await withHandle(
      d,
      'j',
      [
        `h.pwrite(b'\\x22' * 1000, 100)`,
        `h.pwrite(b'\\x33' * 8192, 65536, nbd.CMD_FLAG_FUA)`,
        `h.trim(256 * 1024, (1024 + 128) * 1024)`,
        `h.zero(512 * 1024, (2048 + 64) * 1024, nbd.CMD_FLAG_NO_HOLE)`,
        `h.zero(256 * 1024, (3072 + 64) * 1024)`,
        `h.pwrite(b'\\x44' * 65536, 6 * 1024 * 1024)`,
        `h.flush()`,
      ].join('\n'),
    );
    await withHandle(d, 'other', `h.flush()\nh.pwrite(b'\\x55' * 4096, 4096, nbd.CMD_FLAG_FUA)`);
    const before = await journalStats(d);
    assert.ok(before.records >= 3, `the FLUSH and the FUA writes went to the journal: ${JSON.stringify(before)}`);
    assert.equal(before.commits, 1, `only the FLUSH after writes made before any FLUSH committed: ${JSON.stringify(before)}`);
    const mapBefore = await withHandle(d, 'j', BLOCK_STATUS, { structured: true });

    await d.kill9();
    await d.start();
    const after = await journalStats(d);
    assert.equal(after.replayed, 8, `the snapshot and each operation after it replayed once: ${JSON.stringify(after)}`);
    await expectPattern(d, 'j', 0x11, 0, 100);
    await expectPattern(d, 'j', 0x22, 100, 1000);
    await expectPattern(d, 'j', 0x11, 1100, 65536 - 1100);
    await expectPattern(d, 'j', 0x33, 65536, 8192);
    const K = 1024;
    const expected: Array<[number, number, number]> = [
      [0x11, 65536 + 8192, (1024 + 128) * K],
      [0x00, (1024 + 128) * K, (1024 + 384) * K],
      [0x11, (1024 + 384) * K, (2048 + 64) * K],
      [0x00, (2048 + 64) * K, (2048 + 576) * K],
      [0x11, (2048 + 576) * K, (3072 + 64) * K],
      [0x00, (3072 + 64) * K, (3072 + 320) * K],
      [0x11, (3072 + 320) * K, 4 * MiB],
    ];
    for (const [byte, from, to] of expected) await expectPattern(d, 'j', byte, from, to - from);
    await expectPattern(d, 'j', 0x44, 6 * MiB, 65536);
    await expectPattern(d, 'other', 0x55, 4096, 4096);
    await expectPattern(d, 'j@base', 0x11, 0, 4 * MiB);
    // Block status as before the kill: which ranges are holes, which allocated zeroes, which data.
    assert.equal(await withHandle(d, 'j', BLOCK_STATUS, { structured: true }), mapBefore);
    await expectFsckClean(d);

    // Replayed and committed: a second kill replays nothing more.
    await d.kill9();
    await d.start();
    assert.equal((await journalStats(d)).replayed, 0);
    await expectPattern(d, 'j', 0x33, 65536, 8192);
  } finally {
    await d.dispose();
  }
});

// The extents base:allocation reports, as "offset length flags" lines.
const BLOCK_STATUS = `
out = []
def cb(meta, off, entries, err):
    o = off
    for i in range(0, len(entries), 2):
        out.append('%d %d %d' % (o, entries[i], entries[i + 1]))
        o += entries[i]
h.block_status(h.get_size(), 0, cb)
print('\\n'.join(out))
`;

test('a record torn by the crash ends the replay there: the FLUSHes before it come back, the daemon starts, fsck is clean', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'qemu-io')) return;
  const d = await startDaemon({ env: NO_COMMITS });
  try {
    // The first FLUSH of a volume commits (a volume not flushed lately keeps no writes for the journal).
    // Two records, at the start of the journal's first half, on 512-byte sectors: damage the second's
    // data as a write cut short by a power cut would.
    const { path, starts } = await twoRecordsThenKill(d, 't', 0x61, 0x62);
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.from([0xff]), 0, 1, starts[1] + 200);
    closeSync(fd);
    await d.start();
    assert.equal((await journalStats(d)).replayed, 1);
    await expectPattern(d, 't', 0x61, 0, 4096);
    await expectPattern(d, 't', 0x00, 8192, 4096);
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});

test('a write larger than the journal keeps is made durable by a commit, and survives kill -9', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'qemu-io')) return;
  const d = await startDaemon({ env: NO_COMMITS });
  try {
    await d.createVolume('big', 8 * MiB);
    await withHandle(d, 'big', `h.pwrite(b'\\x71' * (2 * 1024 * 1024), 1024 * 1024)\nh.pwrite(b'\\x72' * 4096, 0)\nh.flush()`);
    const s = await journalStats(d);
    assert.equal(s.commits, 1, `the FLUSH committed: ${JSON.stringify(s)}`);
    await d.kill9();
    await d.start();
    await expectPattern(d, 'big', 0x72, 0, 4096);
    await expectPattern(d, 'big', 0x71, 1024 * 1024, 2 * 1024 * 1024);
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});

test('writes the journal keeps by reference (whole payloads, and views that share socket reads) come back after kill -9 byte for byte', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'qemu-io')) return;
  const d = await startDaemon({ env: NO_COMMITS });
  try {
    await d.createVolume('r', 8 * MiB);
    // A FLUSH first (the journal keeps writes of a volume flushed lately); then two 1 MiB writes and a
    // 300 KiB one (each gathered from many socket reads into a buffer of the payload pool: the second
    // 1 MiB write would be given the first's buffer were it not marked kept) and 16 pipelined 40 KiB
    // writes (views into the socket chunks they share with each other's headers), all kept for the
    // next FLUSH without a copy.
    const script = [
      `h.flush()`,
      `h.pwrite(b'\\x81' * (1024 * 1024), 1024 * 1024)`,
      `h.pwrite(b'\\x83' * (1024 * 1024), 6 * 1024 * 1024)`,
      `h.pwrite(b'\\x82' * (300 * 1024), 3 * 1024 * 1024)`,
      `for i in range(16):`,
      `    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray([0x90 + i]) * 40960), 5 * 1024 * 1024 + i * 40960)`,
      `while h.aio_in_flight() > 0:`,
      `    h.poll(-1)`,
      `h.flush()`,
    ].join('\n');
    await withHandle(d, 'r', script);
    const s = await journalStats(d);
    assert.equal(s.commits, 0, `no FLUSH committed: the writes are in the journal alone: ${JSON.stringify(s)}`);
    assert.ok(s.records >= 1, `the second FLUSH wrote a record: ${JSON.stringify(s)}`);
    await d.kill9();
    await d.start();
    assert.ok((await journalStats(d)).replayed >= 19, 'every write came back through the replay');
    await expectPattern(d, 'r', 0x81, 1024 * 1024, 1024 * 1024);
    await expectPattern(d, 'r', 0x83, 6 * MiB, 1024 * 1024);
    await expectPattern(d, 'r', 0x82, 3 * 1024 * 1024, 300 * 1024);
    for (let i = 0; i < 16; i++) await expectPattern(d, 'r', 0x90 + i, 5 * MiB + i * 40960, 40960);
    await expectPattern(d, 'r', 0x00, 5 * MiB + 16 * 40960, 4096);
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});

test('a database syncing every write: each write is journaled as it arrives, and after kill -9 the volume reads back exactly as acknowledged', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'qemu-io')) return;
  const d = await startDaemon({ env: NO_COMMITS });
  try {
    await d.createVolume('db', 4 * MiB);
    // Write + FLUSH at QD1 over 64 chunks (whole chunks and sub-chunk pieces), and every tenth round
    // six overlapping writes in flight at once: the first is journaled as it arrives, the others
    // overlap it and are journaled once applied, and the replay must map them in the order they were.
    const script = `
import hashlib, random
rnd = random.Random(12)
h.flush()
for i in range(300):
    off = rnd.randrange(64) * 4096
    if i % 10 == 9:
        for k in range(6):
            h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray(rnd.randbytes(8192))), off + (k % 2) * 4096)
        while h.aio_in_flight() > 0:
            h.poll(-1)
    elif i % 3 == 0:
        h.pwrite(rnd.randbytes(1000), off + rnd.randrange(0, 4096, 512))
    else:
        h.pwrite(rnd.randbytes(4096), off)
    h.flush()
print(hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest())
`;
    const before = (await withHandle(d, 'db', script)).trim();
    const s = await journalStats(d);
    assert.equal(s.commits, 0, `no FLUSH committed: the writes are in the journal alone: ${JSON.stringify(s)}`);
    // 270 lone writes each follow a FLUSH by well under EAGER_WINDOW_MS; a slow turn of the client may
    // miss it now and then, and the overlapping ones in flight are not counted.
    assert.ok(s.onArrival >= 200, `the writes were journaled as they arrived: ${JSON.stringify(s)}`);
    await d.kill9();
    await d.start();
    const after = await journalStats(d);
    assert.ok(after.replayed >= 400, `every write since the first FLUSH came back through the replay: ${JSON.stringify(after)}`);
    assert.equal((await withHandle(d, 'db', 'import hashlib\nprint(hashlib.sha256(h.pread(h.get_size(), 0)).hexdigest())')).trim(), before);
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});

test('a journal of the former size (two 8 MiB halves) is replayed from both halves, then grown to two 32 MiB halves that replay too', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'qemu-io')) return;
  const d = await startDaemon({ env: NO_COMMITS });
  try {
    const { path, file, starts } = await twoRecordsThenKill(d, 'l', 0x81, 0x82);
    // The two records, laid out as a journal made before the halves grew: the first at the start of
    // its first half, the second at the start of its second half (8 MiB), in a 16 MiB file.
    assert.equal(file.length, 64 * MiB);
    const legacy = Buffer.alloc(16 * MiB);
    file.copy(legacy, 0, starts[0], starts[1]);
    file.copy(legacy, 8 * MiB, starts[1], starts[1] + (starts[1] - starts[0]));
    writeFileSync(path, legacy);
    await d.start();
    assert.equal((await journalStats(d)).replayed, 2, 'both halves of the former layout replayed');
    await expectPattern(d, 'l', 0x81, 0, 4096);
    await expectPattern(d, 'l', 0x82, 8192, 4096);
    assert.equal(statSync(path).size, 64 * MiB, 'grown once replayed');
    // The grown journal is used and read as such.
    await withHandle(d, 'l', `h.flush()\nh.pwrite(b'\\x83' * 4096, 16384)\nh.flush()`);
    await d.kill9();
    await d.start();
    assert.equal((await journalStats(d)).replayed, 1);
    await expectPattern(d, 'l', 0x81, 0, 4096);
    await expectPattern(d, 'l', 0x82, 8192, 4096);
    await expectPattern(d, 'l', 0x83, 16384, 4096);
    await expectFsckClean(d);
  } finally {
    await d.dispose();
  }
});
