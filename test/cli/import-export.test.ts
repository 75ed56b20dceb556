// `shoal import` and `shoal export` through the real CLI against a real daemon, checked with real
// clients: nbdinfo --map (holes stay holes: in the volume after an import, in the file after an
// export, the file read through nbdkit's file plugin), qemu-img compare for qcow2 round trips,
// cmp of the bytes. Off a terminal the CLI prints JSON progress lines. Interrupted and failed
// imports leave no volume behind, or, when the daemon died, one marked incomplete.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync, openSync, writeSync, closeSync, readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, MAIN, type Daemon } from '../helpers/daemon.js';
import { needTools, run, runOk, PATH_WITH_USR_BIN } from '../helpers/tools.js';
import { MiB } from '../helpers/volume-io.js';

const shoalIn = (d: Daemon) => (...args: string[]) => run(process.execPath, [MAIN, '--api', d.apiUrl, ...args], { timeoutMs: 180_000 });

/** A raw image of `pieces` 1 MiB pieces: data where `isData(i)`, zeroes elsewhere; `tail` odd bytes of data at the end. */
function makeImage(path: string, pieces: number, isData: (i: number) => boolean, tail = 0): Buffer {
  const fd = openSync(path, 'w');
  const parts: Buffer[] = [];
  for (let i = 0; i < pieces; i++) {
    const b = isData(i) ? randomBytes(MiB) : Buffer.alloc(MiB);
    writeSync(fd, b);
    parts.push(b);
  }
  if (tail > 0) {
    const b = randomBytes(tail);
    writeSync(fd, b);
    parts.push(b);
  }
  closeSync(fd);
  return Buffer.concat(parts);
}

/** nbdinfo --map --json: [{offset, length, type}] (type 0 data, 3 hole+zero). */
async function map(uriOrCommand: string[]): Promise<Array<{ offset: number; length: number; type: number }>> {
  return JSON.parse(await runOk('nbdinfo', ['--map', '--json', ...uriOrCommand]));
}

const dataRanges = (m: Array<{ offset: number; length: number; type: number }>) => m.filter((e) => (e.type & 2) === 0).map((e) => [e.offset, e.offset + e.length]);

test('raw import skips zeroes, export keeps holes, bytes round-trip; JSON progress off a terminal', async (t) => {
  if (!needTools(t, 'nbdinfo', 'nbdkit', 'nbdcopy')) return;
  const d = await startDaemon();
  const dir = mkdtempSync(join(tmpdir(), 'shoal-import-'));
  const shoal = shoalIn(d);
  try {
    // 24 MiB: data in pieces 1-3, 8, 15-16 (and a 1000-byte tail), zeroes elsewhere.
    const data = new Set([1, 2, 3, 8, 15, 16]);
    const img = join(dir, 'disk.raw');
    const bytes = makeImage(img, 24, (i) => data.has(i), 1000);
    let r = await shoal('import', 'vm1', img);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^imported .*disk\.raw \(raw, 24 MiB\) into volume vm1: 6 MiB of data, 18 MiB of zeroes skipped in \d+:\d\d/);
    // Off a terminal: JSON lines, the last one saying it is done.
    const lines = r.stderr.trim().split('\n').map((l) => JSON.parse(l));
    const last = lines.at(-1);
    assert.equal(last.event, 'done');
    assert.equal(last.operation, 'import');
    assert.equal(last.volume, 'vm1');
    assert.equal(last.doneBytes, bytes.length);
    assert.equal(last.totalBytes, bytes.length);

    // The volume: the image's size rounded up to a sector, complete, holes where the image had zeroes.
    const info = JSON.parse((await shoal('--json', 'volume', 'show', 'vm1')).stdout);
    assert.equal(info.size, Math.ceil(bytes.length / 512) * 512);
    assert.equal(info.incomplete, false);
    assert.equal(info.mappedBytes, 6 * MiB + 4096); // the 1000-byte tail fills one chunk
    const vmap = await map([d.unixUri('vm1')]);
    assert.deepEqual(dataRanges(vmap), [
      [1 * MiB, 4 * MiB],
      [8 * MiB, 9 * MiB],
      [15 * MiB, 17 * MiB],
      [24 * MiB, info.size], // the tail's chunk, up to the volume's end
    ]);
    // Nothing of the zeroes was stored.
    const stats = (await d.api('GET', '/v1/stats')).body;
    assert.equal(stats.physicalBytes, 6 * MiB + 4096);

    // Export: the same bytes, and holes where the volume has them.
    const out = join(dir, 'out.raw');
    r = await shoal('export', 'vm1', out);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^exported vm1 \(24 MiB\) to .*out\.raw \(raw\): 6 MiB of data/);
    const exported = readFileSync(out);
    assert.equal(exported.length, info.size);
    assert.ok(exported.subarray(0, bytes.length).equals(bytes), 'exported bytes equal the image');
    assert.ok(exported.subarray(bytes.length).equals(Buffer.alloc(info.size - bytes.length)));
    assert.ok(statSync(out).blocks * 512 < 8 * MiB, `the file is sparse (${statSync(out).blocks * 512} bytes allocated)`);
    const fmap = await map(['--', '[', 'nbdkit', '-r', 'file', out, ']']);
    assert.deepEqual(dataRanges(fmap).map(([a]) => a), [1 * MiB, 8 * MiB, 15 * MiB, 24 * MiB]);

    // A snapshot exports as it was when taken.
    assert.equal((await shoal('snapshot', 'create', 'vm1', 's1')).status, 0);
    await runOk('nbdcopy', ['--', '[', 'nbdkit', 'pattern', '1M', ']', d.unixUri('vm1')]);
    const snapOut = join(dir, 'snap.raw');
    r = await shoal('export', 'vm1@s1', snapOut);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(snapOut).equals(exported), 'the snapshot still holds the imported image');

    // An existing file is not replaced without --force.
    r = await shoal('export', 'vm1', out);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /out\.raw already exists: remove it, or give --force to replace it/);
    r = await shoal('export', 'vm1@s1', out, '--force');
    assert.equal(r.status, 0, r.stderr);
  } finally {
    await d.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a dense import, read back by nbdcopy, equals the image: the reader buffers are reused only once the kernel has their bytes', async (t) => {
  if (!needTools(t, 'nbdcopy')) return;
  const d = await startDaemon();
  const dir = mkdtempSync(join(tmpdir(), 'shoal-import-dense-'));
  try {
    // 48 MiB of random data: each of the 8 reader buffers of 1 MiB carries ~6 pieces, each piece
    // four WRITEs whose replies come long after the buffer was refilled.
    const img = join(dir, 'dense.raw');
    const bytes = makeImage(img, 48, () => true);
    const r = await shoalIn(d)('import', 'dense', img);
    assert.equal(r.status, 0, r.stderr);
    const back = join(dir, 'back.raw');
    await runOk('nbdcopy', [d.unixUri('dense'), back]);
    const got = readFileSync(back);
    assert.equal(got.length, bytes.length);
    for (let off = 0; off < bytes.length; off += MiB) {
      assert.ok(got.subarray(off, off + MiB).equals(bytes.subarray(off, off + MiB)), `MiB ${off / MiB} reads back as imported`);
    }
  } finally {
    await d.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('qcow2 round trip through qemu-img: import, compare, export, compare', async (t) => {
  if (!needTools(t, 'qemu-img', 'qemu-io', 'nbdinfo')) return;
  const d = await startDaemon();
  const dir = mkdtempSync(join(tmpdir(), 'shoal-qcow2-'));
  const shoal = shoalIn(d);
  try {
    const src = join(dir, 'src.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', src, '32M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 1M 3M', '-c', 'write -P 0xc3 20M 512k', src]);
    let r = await shoal('import', 'q1', src);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^imported .*src\.qcow2 \(qcow2, 32 MiB\) into volume q1 in \d+:\d\d/);
    await runOk('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', src, d.uri('q1')]);
    // Only the written clusters were stored (qemu-img skips zeroes on a volume that reads as zeroes).
    assert.deepEqual(dataRanges(await map([d.unixUri('q1')])), [
      [1 * MiB, 4 * MiB],
      [20 * MiB, 20 * MiB + 512 * 1024],
    ]);
    const back = join(dir, 'back.qcow2');
    r = await shoal('export', 'q1', back);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /to .*back\.qcow2 \(qcow2\)/);
    assert.equal(JSON.parse(await runOk('qemu-img', ['info', '--output=json', back])).format, 'qcow2');
    await runOk('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qcow2', src, back]);
    // --format overrides the extension.
    const vmdk = join(dir, 'back.img');
    r = await shoal('export', 'q1', vmdk, '--format', 'vmdk');
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(await runOk('qemu-img', ['info', '--output=json', vmdk])).format, 'vmdk');
    r = await shoal('import', 'v1', vmdk);
    assert.equal(r.status, 0, r.stderr);
    await runOk('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', src, d.uri('v1')]);
    // vhdx, by its extension, and back.
    const vhdx = join(dir, 'back.vhdx');
    r = await shoal('export', 'v1', vhdx);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(await runOk('qemu-img', ['info', '--output=json', vhdx])).format, 'vhdx');
    r = await shoal('import', 'x1', vhdx);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /\(vhdx, 32 MiB\)/);
    await runOk('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', src, d.uri('x1')]);
  } finally {
    await d.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bad input: a sentence, the right exit code, and nothing created', async (t) => {
  if (!needTools(t, 'qemu-img')) return;
  const d = await startDaemon();
  const dir = mkdtempSync(join(tmpdir(), 'shoal-import-bad-'));
  const shoal = shoalIn(d);
  try {
    const img = join(dir, 'small.raw');
    writeFileSync(img, randomBytes(64 * 1024));
    const volumes = async () => (await d.api('GET', '/v1/volumes')).body.volumes.map((v: any) => v.name);
    const expect = async (args: string[], status: number, re: RegExp) => {
      const r = await shoal(...args);
      assert.equal(r.status, status, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, re);
    };
    await expect(['import', 'x', join(dir, 'missing.raw')], 1, /^shoal: cannot read .*missing\.raw \(ENOENT\)\n$/);
    await expect(['import', 'x', img, '--size', '4K'], 2, /--size 4K is smaller than the image \(65536 bytes\)/);
    await expect(['import', 'x', img, '--format', 'iso'], 2, /--format "iso" is not a format this command takes: use raw, qcow2, vmdk, vhdx/);
    await expect(['import', 'x'], 2, /`shoal import` needs FILE/);
    await expect(['import', 'bad@name', img], 1, /"bad@name" is not a valid volume name/);
    await expect(['export', 'nope', join(dir, 'o.raw')], 1, /volume "nope" does not exist/);
    await expect(['export', 'x@', join(dir, 'o.raw')], 2, /must be VOLUME or VOLUME@SNAPSHOT/);
    assert.deepEqual(await volumes(), []);

    // A name in use is refused, and the volume is left as it was.
    assert.equal((await shoal('import', 'taken', img)).status, 0);
    await expect(['import', 'taken', img], 1, /volume taken already exists/);
    assert.deepEqual(await volumes(), ['taken']);

    // A qcow2 image without qemu-img: a sentence naming the package, nothing created.
    const q = join(dir, 'img.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', q, '1M']);
    const r = await run(process.execPath, [MAIN, '--api', d.apiUrl, 'import', 'fromqcow', q], { env: { PATH: '/nonexistent' } });
    assert.equal(r.status, 1);
    assert.match(r.stderr, /img\.qcow2 is a qcow2 image, which shoal converts with qemu-img, and qemu-img is not installed: install it \(Debian and Ubuntu: apt-get install qemu-utils/);
    assert.deepEqual(await volumes(), ['taken']);
  } finally {
    await d.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Starts `shoal import` as a child; resolves once the daemon has some of its data. */
async function importUnderway(d: Daemon, name: string, file: string) {
  const child = spawn(process.execPath, [MAIN, '--api', d.apiUrl, 'import', name, file], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PATH: PATH_WITH_USR_BIN } });
  let stderr = '';
  child.stderr.on('data', (b) => (stderr += b));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  for (let i = 0; i < 600; i++) {
    const r = await d.api('GET', `/v1/volumes/${name}`);
    if (r.status === 200 && r.body.mappedBytes > 0) {
      assert.equal(r.body.incomplete, true, 'an import in progress is marked incomplete');
      return { child, exited, stderr: () => stderr };
    }
    await new Promise((res) => setTimeout(res, 20));
  }
  throw new Error(`the import never started:\n${stderr}`);
}

test('Ctrl-C stops an import: exit 130 and the half volume is deleted; a dead daemon leaves it marked incomplete', async (t) => {
  if (!needTools(t, 'nbdinfo')) return;
  const d = await startDaemon();
  const dir = mkdtempSync(join(tmpdir(), 'shoal-import-int-'));
  try {
    const img = join(dir, 'big.raw');
    makeImage(img, 768, () => true);
    const a = await importUnderway(d, 'cut', img);
    a.child.kill('SIGINT');
    assert.equal(await a.exited, 130, a.stderr());
    assert.match(a.stderr(), /"event":"interrupted"/);
    assert.match(a.stderr(), /shoal: deleted the half-imported volume cut\nshoal: interrupted\n$/);
    assert.equal((await d.api('GET', '/v1/volumes/cut')).status, 404);

    // The daemon dies mid-import: the CLI fails (exit 1), and after a restart the volume is there, marked incomplete.
    const b = await importUnderway(d, 'orphan', img);
    await d.kill9();
    assert.equal(await b.exited, 1, b.stderr());
    assert.match(b.stderr(), /volume orphan is left marked incomplete \(deleting it failed: .*\): delete it with `shoal volume delete orphan --force`/);
    await d.start();
    const list = await run(process.execPath, [MAIN, '--api', d.apiUrl, 'volume', 'list']);
    assert.match(list.stdout, /^orphan\s.*\sincomplete$/m);
    const again = await run(process.execPath, [MAIN, '--api', d.apiUrl, 'import', 'orphan', img]);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /volume orphan already exists, left incomplete by an import that did not finish: delete it first \(shoal volume delete orphan --force\)/);
  } finally {
    await d.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('GET /v1/endpoints says where NBD is; without a Unix socket the CLI goes over TCP', async (t) => {
  if (!needTools(t, 'nbdinfo')) return;
  const d = await startDaemon({ args: ['--nbd-socket', 'none'] });
  const dir = mkdtempSync(join(tmpdir(), 'shoal-import-tcp-'));
  try {
    const ep = await d.api('GET', '/v1/endpoints');
    assert.equal(ep.status, 200);
    assert.deepEqual(ep.body, { nbd: { tcp: `127.0.0.1:${d.nbdPort}`, unix: null, tls: 'off' } });
    const img = join(dir, 'img.raw');
    const bytes = makeImage(img, 4, (i) => i !== 1);
    const r = await shoalIn(d)('import', 'overtcp', img, '--tenant', 'acme', '--size', '8M', '--json');
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.volume, 'overtcp');
    assert.equal(out.dataBytes, 3 * MiB);
    assert.equal(out.zeroBytes, 1 * MiB);
    const v = (await d.api('GET', '/v1/volumes/overtcp')).body;
    assert.equal(v.tenant, 'acme');
    assert.equal(v.size, 8 * MiB);
    assert.deepEqual(dataRanges(await map([d.uri('overtcp')])), [
      [0, 1 * MiB],
      [2 * MiB, 4 * MiB],
    ]);
    const back = join(dir, 'back.raw');
    assert.equal((await shoalIn(d)('export', 'overtcp', back)).status, 0);
    assert.ok(readFileSync(back).subarray(0, bytes.length).equals(bytes));
  } finally {
    await d.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});
