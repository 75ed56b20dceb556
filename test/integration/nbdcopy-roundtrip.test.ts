// 256 MiB of random data through real libnbd/QEMU clients: nbdcopy in and out (multi-conn, structured
// replies, block status), qemu-img compare against the source file, and the allocation map before and
// after a TRIM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomFillSync } from 'node:crypto';
import { createReadStream, mkdtempSync, openSync, closeSync, readSync, writeSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon } from '../helpers/daemon.js';
import { PY, needTools, runOk } from '../helpers/tools.js';

const MiB = 2 ** 20;
const SIZE = 256 * MiB;

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path, { highWaterMark: 4 * MiB })) h.update(chunk as Buffer);
  return h.digest('hex');
}

interface Extent {
  offset: number;
  length: number;
  type: number;
}
const isHole = (e: Extent) => (e.type & 1) === 1;
/** Bytes of [off, off+len) the map reports as data / as holes. */
function tally(m: Extent[], off: number, len: number) {
  let data = 0;
  let hole = 0;
  for (const e of m) {
    const a = Math.max(e.offset, off);
    const b = Math.min(e.offset + e.length, off + len);
    if (b <= a) continue;
    if (isHole(e)) hole += b - a;
    else data += b - a;
  }
  return { data, hole };
}

test('256 MiB random: nbdcopy in and out, qemu-img compare, map and TRIM', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdinfo', 'nbdsh', 'qemu-img')) return;
  const tmp = mkdtempSync(join(tmpdir(), 'shoal-copy-'));
  const d = await startDaemon();
  try {
    const src = join(tmp, 'src.img');
    const fd = openSync(src, 'w');
    const buf = Buffer.alloc(8 * MiB);
    for (let off = 0; off < SIZE; off += buf.length) writeSync(fd, randomFillSync(buf));
    closeSync(fd);
    const srcSha = await sha256File(src);

    await d.createVolume('rt', SIZE);
    const uri = d.unixUri('rt');
    await runOk('nbdcopy', ['--flush', src, uri], { timeoutMs: 90_000 });
    const out = join(tmp, 'out.img');
    await runOk('nbdcopy', [uri, out], { timeoutMs: 90_000 });
    assert.equal(await sha256File(out), srcSha, 'data read back through nbdcopy equals what was written');
    rmSync(out);

    // QEMU's client (structured replies, block status, large requests) sees the same bytes.
    const cmp = await runOk('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', src, uri], { timeoutMs: 90_000 });
    assert.match(cmp, /Images are identical/);

    // Random data is all data in the map.
    const before: Extent[] = JSON.parse(await runOk('nbdinfo', ['--map', '--json', uri]));
    assert.deepEqual(tally(before, 0, SIZE), { data: SIZE, hole: 0 }, `map before TRIM: ${JSON.stringify(before.slice(0, 10))}`);

    const stats1 = (await d.api('GET', '/v1/stats')).body;
    assert.ok(stats1.physicalBytes >= SIZE, `256 MiB of random data takes at least 256 MiB (physicalBytes ${stats1.physicalBytes})`);

    // TRIM 16 MiB at 64 MiB, and an unaligned range too: only whole chunks inside it can become holes.
    const trimOff = 64 * MiB;
    const trimLen = 16 * MiB;
    const uOff = 200 * MiB + 1000;
    const uLen = 3 * 4096 + 500;
    await runOk(PY, ['-c', `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(uri)})\nh.trim(${trimLen}, ${trimOff})\nh.trim(${uLen}, ${uOff})\nh.flush()\nh.shutdown()`]);
    const after: Extent[] = JSON.parse(await runOk('nbdinfo', ['--map', '--json', uri]));
    assert.deepEqual(tally(after, trimOff, trimLen), { data: 0, hole: trimLen }, `trimmed range is a hole: ${JSON.stringify(after.slice(0, 10))}`);
    assert.deepEqual(tally(after, 0, trimOff), { data: trimOff, hole: 0 }, 'data before the trimmed range is untouched');
    assert.equal(tally(after, trimOff + trimLen, 100 * MiB).hole, 0, 'data after the trimmed range is untouched');
    // The whole chunks inside the unaligned trim are holes (at least 2 of them: 8192..12288 past the 4 KiB boundary).
    const firstWhole = Math.ceil(uOff / 4096) * 4096;
    const lastWhole = Math.floor((uOff + uLen) / 4096) * 4096;
    assert.ok(lastWhole - firstWhole >= 8192);
    assert.equal(tally(after, firstWhole, lastWhole - firstWhole).hole, lastWhole - firstWhole, 'whole chunks inside an unaligned TRIM are holes');
    assert.equal(tally(after, uOff - 1000, 1000).hole, 0, 'partial chunk before an unaligned TRIM keeps its data');

    // Holes read as zeros, and bytes of partial chunks outside the TRIM range are unchanged.
    const check = await runOk(PY, [
      '-c',
      `import nbd, hashlib
h = nbd.NBD()
h.connect_uri(${JSON.stringify(uri)})
assert h.pread(${trimLen}, ${trimOff}) == bytes(${trimLen}), 'trimmed range reads as zeros'
print(h.pread(${uLen + 2000}, ${uOff - 1000}).hex())`,
    ]);
    const got = Buffer.from(check.trim(), 'hex');
    const rfd = openSync(src, 'r');
    const orig = Buffer.alloc(uLen + 2000);
    readSync(rfd, orig, 0, orig.length, uOff - 1000);
    closeSync(rfd);
    assert.ok(got.subarray(0, 1000).equals(orig.subarray(0, 1000)), 'bytes before the unaligned TRIM are unchanged');
    assert.ok(got.subarray(1000 + uLen).equals(orig.subarray(1000 + uLen)), 'bytes after the unaligned TRIM are unchanged');
    assert.ok(got.subarray(1000 + (firstWhole - uOff), 1000 + (lastWhole - uOff)).equals(Buffer.alloc(lastWhole - firstWhole)), 'trimmed whole chunks read as zeros');

    // TRIM gives the space back (possibly after a GC pass: poll a little).
    let physical = 0;
    for (let i = 0; i < 50; i++) {
      physical = (await d.api('GET', '/v1/stats')).body.physicalBytes;
      if (physical <= stats1.physicalBytes - trimLen) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(physical <= stats1.physicalBytes - trimLen, `physicalBytes ${stats1.physicalBytes} → ${physical} after trimming ${trimLen}`);

    const fsck = await d.api('POST', '/v1/fsck');
    assert.equal(fsck.body.ok, true, JSON.stringify(fsck.body.errors));
  } finally {
    await d.dispose();
    rmSync(tmp, { recursive: true, force: true });
  }
});
