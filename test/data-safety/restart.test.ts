// Data survives a graceful restart (SIGTERM flushes everything, even writes no client flushed), and a
// 16 TiB thin volume stores only what was written, at its start, middle and end.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes, createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../helpers/daemon.js';
import { PY, needTools, runOk } from '../helpers/tools.js';

const MiB = 2 ** 20;
const TiB = 2 ** 40;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Extent {
  offset: number;
  length: number;
  type: number;
}
/** `nbdinfo --map --json` (base:allocation): type bit 0 = hole, bit 1 = reads as zeros. */
async function map(uri: string, timeoutMs = 60_000): Promise<Extent[]> {
  return JSON.parse(await runOk('nbdinfo', ['--map', '--json', uri], { timeoutMs }));
}

/** Reads [offset, offset+length) with libnbd (as hex: run() decodes output as text). */
async function preadHex(uri: string, offset: number, length: number): Promise<Buffer> {
  const out = await runOk(PY, ['-c', `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(uri)})\nprint(h.pread(${length}, ${offset}).hex())\nh.shutdown()`], {
    timeoutMs: 60_000,
  });
  return Buffer.from(out.trim(), 'hex');
}

test('graceful stop (SIGTERM) and restart keep volumes, data and snapshots, even unflushed writes', { timeout: 90_000 }, async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdsh')) return;
  const d = await startDaemon();
  const tmp = mkdtempSync(join(tmpdir(), 'shoal-restart-'));
  try {
    const size = 16 * MiB;
    await d.createVolume('r', size);
    const src = join(tmp, 'src.img');
    const data = randomBytes(size);
    // Some repeated 4 KiB blocks (dedup) and a zero MiB (never stored) inside the random data.
    for (let i = 0; i < 64; i++) data.copy(data, 8 * MiB + i * 4096, 0, 4096);
    data.fill(0, 12 * MiB, 13 * MiB);
    writeFileSync(src, data);
    // nbdcopy without --flush: nothing is flushed by the client, the daemon's shutdown must do it.
    await runOk('nbdcopy', [src, d.unixUri('r')], { timeoutMs: 60_000 });
    // A snapshot, then unaligned sub-chunk overwrites after it.
    const snap = await d.api('POST', '/v1/volumes/r/snapshots', { name: 's1' });
    assert.equal(snap.status, 201, JSON.stringify(snap.body));
    const patch = randomBytes(5000);
    await runOk(PY, ['-c', `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(d.unixUri('r'))})\nh.pwrite(bytes.fromhex(${JSON.stringify(patch.toString('hex'))}), ${3 * MiB + 1234})\nh.shutdown()`]);
    const expected = Buffer.from(data);
    patch.copy(expected, 3 * MiB + 1234);

    await d.stop();
    assert.equal(d.proc.exitCode, 0, `SIGTERM should be a clean exit (exit code ${d.proc.exitCode}, signal ${d.proc.signalCode}); log:\n${d.log.slice(-2000)}`);
    await d.start();

    const vols = await d.api('GET', '/v1/volumes');
    assert.deepEqual(
      vols.body.volumes.map((v: { name: string; size: number }) => [v.name, v.size]),
      [['r', size]],
    );
    const out = join(tmp, 'out.img');
    await runOk('nbdcopy', [d.unixUri('r'), out], { timeoutMs: 60_000 });
    assert.equal(sha(readFileSync(out)), sha(expected), 'volume contents after restart');
    const outSnap = join(tmp, 'snap.img');
    await runOk('nbdcopy', [d.unixUri('r@s1'), outSnap], { timeoutMs: 60_000 });
    assert.equal(sha(readFileSync(outSnap)), sha(data), 'snapshot contents after restart');
    const fsck = await d.api('POST', '/v1/fsck');
    assert.equal(fsck.body.ok, true, JSON.stringify(fsck.body.errors));
  } finally {
    await d.dispose();
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('a 16 TiB volume: writes at the start, the middle and the end read back; the rest is holes; little is stored', { timeout: 90_000 }, async (t) => {
  if (!needTools(t, 'qemu-io', 'nbdinfo', 'nbdsh')) return;
  const d = await startDaemon();
  try {
    const size = 16 * TiB;
    await d.createVolume('big', size);
    const uri = d.unixUri('big');
    const info = JSON.parse(await runOk('nbdinfo', ['--json', uri]));
    assert.equal(info.exports[0]['export-size'], size);

    const writes = [
      { offset: 0, length: 65536, fill: 0x11 },
      { offset: 8 * TiB - 4096 + 512, length: 8192, fill: 0x22 }, // unaligned, across three chunks
    ];
    await runOk('qemu-io', ['-f', 'raw', ...writes.flatMap((w) => ['-c', `write -P 0x${w.fill.toString(16)} ${w.offset} ${w.length}`]), uri], { timeoutMs: 60_000 });
    const tail = randomBytes(4096);
    const tailOff = size - 4096;
    await runOk(PY, ['-c', `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(uri)})\nh.pwrite(bytes.fromhex(${JSON.stringify(tail.toString('hex'))}), ${tailOff}, nbd.CMD_FLAG_FUA)\nh.shutdown()`]);

    for (const w of writes) {
      // A little around each write too: the bytes next to it stay zero.
      const got = await preadHex(uri, w.offset - (w.offset ? 512 : 0), w.length + 1024);
      const want = Buffer.alloc(w.length + 1024);
      want.fill(w.fill, w.offset ? 512 : 0, (w.offset ? 512 : 0) + w.length);
      assert.ok(got.equals(want), `read back at ${w.offset}`);
    }
    assert.ok((await preadHex(uri, tailOff, 4096)).equals(tail), 'read back the last 4 KiB');
    // qemu-io's own pattern check of the middle write too (its read -P prints a failure, exit code or not).
    const qr = await runOk('qemu-io', ['-f', 'raw', '-c', `read -P 0x22 ${writes[1].offset} ${writes[1].length}`, uri]);
    assert.doesNotMatch(qr, /fail/i, qr);

    const m = await map(uri, 80_000);
    assert.equal(m[0].offset, 0);
    let end = 0;
    for (const e of m) {
      assert.equal(e.offset, end, 'extents are contiguous');
      end = e.offset + e.length;
    }
    assert.equal(end, size, 'the map covers the whole 16 TiB');
    const dataExtents = m.filter((e) => (e.type & 1) === 0);
    const dataBytes = dataExtents.reduce((s, e) => s + e.length, 0);
    assert.ok(dataBytes <= 256 * 1024, `only written chunks are data, got ${dataBytes} data bytes: ${JSON.stringify(dataExtents)}`);
    const covered = (off: number, len: number) => dataExtents.some((e) => e.offset <= off && off + len <= e.offset + e.length) ||
      // a range may span several adjacent data extents
      dataExtents.filter((e) => e.offset < off + len && off < e.offset + e.length).reduce((s, e) => s + Math.min(e.offset + e.length, off + len) - Math.max(e.offset, off), 0) === len;
    for (const w of [...writes, { offset: tailOff, length: 4096 }]) assert.ok(covered(w.offset, w.length), `written range at ${w.offset} is data in the map`);
    const at = (off: number) => m.find((e) => e.offset <= off && off < e.offset + e.length)!;
    for (const off of [1 * MiB, 1 * TiB, 12 * TiB, size - 2 * MiB]) {
      assert.equal(at(off).type & 3, 3, `hole that reads as zeros at ${off}: ${JSON.stringify(at(off))}`);
    }

    const stats = await d.api('GET', '/v1/stats');
    assert.equal(stats.status, 200);
    assert.ok(stats.body.physicalBytes > 0 && stats.body.physicalBytes < MiB, `physicalBytes ${stats.body.physicalBytes} should be small`);
    const fsck = await d.api('POST', '/v1/fsck');
    assert.equal(fsck.body.ok, true, JSON.stringify(fsck.body.errors));
  } finally {
    await d.dispose();
  }
});
