// Issue "deduplication", item 7: which chunk size should be the default? For 4, 16 and 64 KiB chunks:
//
//   1. dedup ratio on realistic images: a fresh daemon (--chunk-size X) with three 1 GiB volumes, each
//      attached as a kernel block device (nbdfuse + losetup) and formatted separately with mkfs.ext4 (own
//      UUID, hash seed, journal). Volumes 1 and 2 receive the same tree of real files (a fixed pseudo-random
//      selection of CHUNKBENCH_MIB from /usr/share, /usr/lib and /usr/bin), volume 1 in sorted order and
//      volume 2 in reverse order; volume 3 receives the tree in sorted order, then 10 % of its files change
//      (half appended to, half overwritten in place in the middle). Then /v1/stats: logical/physical.
//   2. metadata bytes per TiB: LMDB pages in use (all databases: map nodes, refcounts, chunk records, the
//      fingerprint index) per TiB of logical (mapped) and of physical (stored) data.
//   3. 4 KiB random-write throughput: fio --ioengine=nbd randwrite bs=4k iodepth=32 (fresh random bytes per
//      write) for CHUNKBENCH_RUNTIME s on a 256 MiB volume pre-filled with random data, in a fresh daemon
//      per chunk size; the chunk sizes take turns, median of CHUNKBENCH_ROUNDS.
//
//   CHUNKBENCH_MIB      size of the file tree copied into each image (default 256)
//   CHUNKBENCH_SIZES    chunk sizes (default 4K,16K,64K)
//   CHUNKBENCH_RUNTIME  seconds per fio run (default 10)
//   CHUNKBENCH_ROUNDS   fio rounds (default 2)
import { createHash, randomBytes } from 'node:crypto';
import { appendFileSync, closeSync, lstatSync, mkdirSync, openSync, readdirSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { open as lmdbOpen } from 'lmdb';
import { Daemon } from '../test/helpers/daemon.js';
import { attachKernelDevice, kernelDeviceUnavailable, mountDevice, type KernelDevice } from '../test/helpers/kernel-device.js';
import { fio, fix, fmtBytes, median, numEnv, onCleanup, parseSizeEnv, randomFile, ROOT, runMain, runOk, systemHeader, tempDir } from './lib.js';

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const TiB = 1024 ** 4;

// ------------------------------------------------------------------ the file tree

interface SrcFile {
  path: string; // absolute
  size: number;
}

/** A fixed pseudo-random selection of regular files (≤ 16 MiB each) from system directories, ~budget bytes. */
function selectTree(budget: number): SrcFile[] {
  const all: SrcFile[] = [];
  const walk = (d: string) => {
    let ents;
    try {
      ents = readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of ents) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        try {
          const st = lstatSync(p);
          if (st.size <= 16 * MiB) all.push({ path: p, size: st.size });
        } catch {
          /* gone */
        }
      }
    }
  };
  for (const root of ['/usr/share', '/usr/lib', '/usr/bin']) walk(root);
  const key = (p: string) => createHash('sha1').update(p).digest('hex');
  all.sort((a, b) => (key(a.path) < key(b.path) ? -1 : 1));
  const out: SrcFile[] = [];
  let total = 0;
  for (const f of all) {
    if (total >= budget) break;
    out.push(f);
    total += f.size;
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : 1));
}

/** Copies the listed files (paths relative to /) into mnt with tar, in list order. */
async function copyTree(list: SrcFile[], order: 'sorted' | 'reversed', mnt: string, work: string): Promise<void> {
  const names = list.map((f) => f.path.slice(1));
  if (order === 'reversed') names.reverse();
  const listFile = join(work, `list-${order}-${process.hrtime.bigint()}`);
  writeFileSync(listFile, names.join('\n') + '\n');
  await runOk('sh', ['-c', 'tar -C / -cf - --no-recursion -T "$1" | tar -C "$2" -xf -', 'sh', listFile, mnt], { timeoutMs: 900_000 });
  rmSync(listFile, { force: true });
}

/** Changes every 10th file: half get a line appended, half get 256 bytes overwritten in the middle. */
function changeSome(list: SrcFile[], mnt: string): { changed: number } {
  let changed = 0;
  for (let i = 0; i < list.length; i += 10) {
    const p = join(mnt, list[i].path.slice(1));
    const size = statSync(p).size;
    if ((i / 10) % 2 === 0 || size < 512) appendFileSync(p, `\n# changed in image 3 (${i})\n`);
    else {
      const fd = openSync(p, 'r+');
      writeSync(fd, randomBytes(256), 0, 256, Math.floor(size / 2));
      closeSync(fd);
    }
    changed++;
  }
  return { changed };
}

// ------------------------------------------------------------------ measurements

function lmdbBytes(dataDir: string): { used: number; perDb: Record<string, { entries: number; bytes: number }> } {
  const env = lmdbOpen({ path: join(dataDir, 'meta.lmdb'), readOnly: true, maxDbs: 16 } as any);
  const perDb: Record<string, { entries: number; bytes: number }> = {};
  try {
    const conv = (s: any) => ({ entries: s.entryCount, bytes: (s.treeBranchPageCount + s.treeLeafPageCount + s.overflowPages) * s.pageSize });
    perDb.main = conv(env.getStats());
    for (const name of ['nodes', 'node-refs', 'chunks', 'fingerprints', 'free-slots']) perDb[name] = conv(env.openDB({ name, encoding: 'binary', keyEncoding: 'binary' } as any).getStats());
  } finally {
    void env.close();
  }
  return { used: Object.values(perDb).reduce((n, x) => n + x.bytes, 0), perDb };
}

async function api(d: Daemon, method: string, path: string, body?: unknown): Promise<any> {
  const r = await d.api(method, path, body);
  if (r.status < 200 || r.status > 299) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

async function startIn(dataDir: string, args: string[]): Promise<Daemon> {
  const d = new Daemon({ dataDir, args });
  onCleanup(() => d.stop());
  await d.start();
  return d;
}

interface ImageResult {
  chunkSize: number;
  logical: number;
  physical: number;
  ratio: number;
  chunks: number;
  vols: { name: string; mapped: number; shared: number; exclusive: number }[];
  metaUsed: number;
  metaFile: number;
  perDb: Record<string, { entries: number; bytes: number }>;
  seconds: number;
  changed: number;
}

async function buildImages(cs: number, tree: SrcFile[], work: string): Promise<ImageResult> {
  const dir = tempDir(`shoal-chunkbench-${cs / KiB}k-`);
  const d = await startIn(dir, ['--chunk-size', String(cs), '--cache-size', '256M']);
  const t0 = performance.now();
  let changed = 0;
  try {
    for (const [i, vol] of ['img1', 'img2', 'img3'].entries()) {
      await api(d, 'POST', '/v1/volumes', { name: vol, size: GiB });
      let kdev: KernelDevice | undefined;
      let umount: (() => Promise<void>) | undefined;
      const mnt = join(work, `mnt-${cs}-${vol}`);
      mkdirSync(mnt, { recursive: true });
      try {
        kdev = await attachKernelDevice(d.unixUri(vol));
        await runOk('mkfs.ext4', ['-q', '-F', kdev.dev], { timeoutMs: 120_000 });
        umount = await mountDevice(kdev.dev, mnt);
        await copyTree(tree, i === 1 ? 'reversed' : 'sorted', mnt, work);
        if (i === 2) changed = changeSome(tree, mnt).changed;
        await umount();
        umount = undefined;
        await kdev.detach();
        kdev = undefined;
      } finally {
        if (umount) await umount().catch(() => {});
        if (kdev) await kdev.detach().catch(() => {});
        rmSync(mnt, { recursive: true, force: true });
      }
      console.log(`  ${cs / KiB} KiB: ${vol} done (${fix((performance.now() - t0) / 1000)} s)`);
    }
    const check = await api(d, 'POST', '/v1/fsck'); // drains the collector and commits
    if (!check.ok) throw new Error(`fsck after the images (${cs}): ${JSON.stringify(check.errors)}`);
    const s = await api(d, 'GET', '/v1/stats');
    const vols = [];
    for (const name of ['img1', 'img2', 'img3']) {
      const v = await api(d, 'GET', `/v1/volumes/${name}`);
      vols.push({ name, mapped: v.mappedBytes, shared: v.sharedBytes, exclusive: v.exclusiveBytes });
    }
    const seconds = (performance.now() - t0) / 1000;
    await d.stop();
    const m = lmdbBytes(dir);
    return {
      chunkSize: cs,
      logical: s.logicalBytes,
      physical: s.physicalBytes,
      ratio: s.dedupRatio,
      chunks: s.chunks,
      vols,
      metaUsed: m.used,
      metaFile: statSync(join(dir, 'meta.lmdb')).blocks * 512,
      perDb: m.perDb,
      seconds,
      changed,
    };
  } finally {
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ main

runMain(async () => {
  const why = kernelDeviceUnavailable();
  if (why) throw new Error(`a kernel block device is needed for the images: ${why}`);
  const treeBytes = numEnv('CHUNKBENCH_MIB', 256) * MiB;
  const sizes = (process.env.CHUNKBENCH_SIZES ?? '4K,16K,64K').split(',').map((x) => {
    process.env.__CS = x.trim();
    return parseSizeEnv('__CS', '4K');
  });
  const runtime = numEnv('CHUNKBENCH_RUNTIME', 10);
  const rounds = Math.round(numEnv('CHUNKBENCH_ROUNDS', 2));
  const header = systemHeader();
  console.log(header);
  const work = tempDir('shoal-chunkbench-work-');

  const tree = selectTree(treeBytes);
  const treeTotal = tree.reduce((n, f) => n + f.size, 0);
  const treeBlocks = tree.reduce((n, f) => n + Math.ceil(f.size / 4096) * 4096, 0);
  console.log(`tree: ${tree.length} files, ${fmtBytes(treeTotal)} (${fmtBytes(treeBlocks)} in 4 KiB blocks)`);

  // 1 + 2: images, one chunk size at a time.
  const images: ImageResult[] = [];
  for (const cs of sizes) {
    console.log(`images at ${cs / KiB} KiB chunks…`);
    images.push(await buildImages(cs, tree, work));
  }

  // 3: 4 KiB random writes; one daemon per chunk size, all up at once, runs take turns.
  console.log('4 KiB random writes…');
  const fill = join(work, 'fill.bin');
  await randomFile(fill, 256 * MiB);
  const daemons: { cs: number; d: Daemon; iops: number[] }[] = [];
  for (const cs of sizes) {
    const dir = tempDir(`shoal-chunkbench-fio-${cs / KiB}k-`);
    const d = await startIn(dir, ['--chunk-size', String(cs), '--cache-size', '256M']);
    await api(d, 'POST', '/v1/volumes', { name: 'rw', size: 256 * MiB });
    await runOk('nbdcopy', ['--flush', fill, d.unixUri('rw')], { timeoutMs: 600_000 });
    daemons.push({ cs, d, iops: [] });
  }
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? daemons : [...daemons].reverse();
    for (const x of order) {
      const res = await fio({ uri: x.d.unixUri('rw'), rw: 'randwrite', bs: '4k', iodepth: 32, runtimeSec: runtime, rampSec: 1 }, work);
      if (res.errors) throw new Error(`fio errors at ${x.cs}: ${res.errors}`);
      x.iops.push(res.iops);
      console.log(`  round ${r + 1} ${x.cs / KiB} KiB: ${fix(res.iops)} IOPS`);
      await sleep(2500); // the daemon's commit timer settles before the next run
    }
  }
  for (const x of daemons) await x.d.stop();

  // Report.
  const out: string[] = ['# chunk-size', '', header, ''];
  const say = (line = '') => {
    console.log(line);
    out.push(line);
  };
  say(`Images: three 1 GiB volumes per chunk size, each a kernel block device (nbdfuse + losetup) formatted separately with mkfs.ext4 (defaults: 4 KiB blocks). The same ${tree.length} real files (${fmtBytes(treeTotal)}, a fixed pseudo-random pick from /usr/share, /usr/lib, /usr/bin) copied with tar into image 1 in sorted order, image 2 in reverse order, image 3 in sorted order with then ${images[0]?.changed ?? 0} files (10 %) changed (half appended to, half 256 bytes overwritten in the middle). Metadata: LMDB pages in use across all databases after the images (fsck'd and committed). Random writes: fio nbd engine, 4 KiB randwrite QD32, fresh random bytes per write, ${runtime} s on a 256 MiB volume pre-filled with random data, median of ${rounds} (chunk sizes take turns).`);
  say();
  say('| chunk size | dedup ratio (logical/physical) | physical MiB | logical MiB | metadata bytes per TiB logical | per TiB physical | 4K randwrite IOPS |');
  say('|---|---:|---:|---:|---:|---:|---:|');
  for (const [i, im] of images.entries()) {
    const iops = median(daemons[i].iops);
    say(`| ${im.chunkSize / KiB} KiB | **${fix(im.ratio, 2)}** | ${fix(im.physical / MiB, 1)} | ${fix(im.logical / MiB, 1)} | ${fmtBytes((im.metaUsed / im.logical) * TiB)} | ${fmtBytes((im.metaUsed / im.physical) * TiB)} | **${fix(iops)}** (${daemons[i].iops.map((x) => fix(x)).join(', ')}) |`);
  }
  say();
  say('Per image (mapped / shared MiB), and where the metadata goes (bytes of LMDB pages: map nodes · chunk records · fingerprint index):');
  say();
  say('| chunk size | image 1 | image 2 (same files, reverse order) | image 3 (10 % of files changed) | nodes | chunks | fingerprints | meta.lmdb allocated | build time |');
  say('|---|---|---|---|---:|---:|---:|---:|---:|');
  for (const im of images) {
    const v = (k: number) => `${fix(im.vols[k].mapped / MiB, 1)} / ${fix(im.vols[k].shared / MiB, 1)}`;
    say(`| ${im.chunkSize / KiB} KiB | ${v(0)} | ${v(1)} | ${v(2)} | ${fmtBytes(im.perDb.nodes.bytes)} | ${fmtBytes(im.perDb.chunks.bytes)} | ${fmtBytes(im.perDb.fingerprints.bytes)} | ${fmtBytes(im.metaFile)} | ${fix(im.seconds)} s |`);
  }
  say();
  say(`The file tree alone is ${fmtBytes(treeBlocks)} in 4 KiB blocks: three images hold it three times, so a ratio near 3 means the copies (and most of the filesystem metadata) are stored once.`);

  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  const path = join(ROOT, 'bench', 'results', 'chunk-size-latest.md');
  writeFileSync(path, out.join('\n') + '\n');
  console.log(`\nwrote ${path}`);
});
