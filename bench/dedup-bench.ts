// Issue "deduplication", items 2 and 6: is fingerprinting fast enough, what does inline dedup cost a
// sequential writer, and what does the fingerprint index cost per unique chunk (disk and RAM)?
//
//   (a) fingerprint throughput on one core: the native addon's fingerprintSync (BLAKE3-256 per chunk) over
//       DEDUPBENCH_FP_SIZE of random data at 4, 16 and 64 KiB chunks, against node:crypto SHA-256 per 4 KiB
//       chunk (and SHA-256 streaming, for the textbook figure). Target: ≥ 1 GB/s per core at 4 KiB.
//   (b) nbdcopy --flush of DEDUPBENCH_SIZE (1 GiB) of unique random data from a file on /var/tmp into a
//       fresh daemon with --dedup on, and into a fresh daemon with --dedup off, interleaved, median of
//       DEDUPBENCH_ROUNDS (3). Target: on/off ≥ 0.7.
//   (c) the same file again into a second volume of the dedup-on daemon (every chunk already stored).
//       Target: faster than the unique write.
//   (d) the index: meta.lmdb growth after the unique write, dedup on minus dedup off (the off daemon
//       writes the same chunk records, map nodes and refcounts, but no index entries), and LMDB's own page
//       counts per database; daemon RSS (anonymous and file-backed) before/after the write, and after a
//       restart on that store (what stays in the daemon's memory per unique chunk). Extrapolated per TiB of unique data at the chunk size used (4 KiB).
//
//   DEDUPBENCH_SIZE     bytes written per run (default 1G)
//   DEDUPBENCH_ROUNDS   write rounds (default 3)
//   DEDUPBENCH_FP_SIZE  bytes hashed per fingerprint measurement (default 1G; hashed as 4 passes over a buffer)
//   DEDUPBENCH_CACHE    --cache-size of the daemons (default 64M: small, so RSS shows the index, not cache)
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash, randomFillSync } from 'node:crypto';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { open as lmdbOpen } from 'lmdb';
import { Daemon } from '../test/helpers/daemon.js';
import { LOG_MAX as FP_LOG_MAX } from '../server/dedup/dedup-indexer.js';
import { native } from '../server/native.js';
import { fix, fmtBytes, median, numEnv, waitDedupIndexed, onCleanup, parseSizeEnv, randomFile, ROOT, runMain, runOk, systemHeader, tempDir } from './lib.js';

const KiB = 1024;
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
const TiB = 1024 ** 4;
const MB = 1e6;

// ------------------------------------------------------------------ (a) fingerprint throughput

interface FpRow {
  name: string;
  mbps: number[]; // MB per second of this process's CPU time, per round (the per-core rate)
  wall: number[]; // MB per wall-clock second, per round (lower when other work shares the cores)
}

/** Runs fn, returning [wall seconds, CPU seconds of this process]. Only this thread works meanwhile. */
function timeIt(fn: () => void): [number, number] {
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  fn();
  const wall = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  return [wall, (c.user + c.system) / 1e6];
}

function fingerprintThroughput(total: number, rounds: number): { rows: FpRow[]; loopBlockUs: number } {
  const addon = native();
  const bufSize = Math.min(total, 256 * MiB);
  const passes = Math.max(1, Math.round(total / bufSize));
  const buf = randomFillSync(Buffer.allocUnsafe(bufSize));
  const shaBytes = Math.min(bufSize, 128 * MiB); // SHA-256 per 4 KiB chunk is slow: hash less, same rate
  const rows: FpRow[] = [
    ...[4 * KiB, 16 * KiB, 64 * KiB].map((cs) => ({ name: `BLAKE3-256 native fingerprintSync, ${cs / KiB} KiB chunks`, mbps: [] as number[], wall: [] as number[] })),
    { name: 'SHA-256 node:crypto, one createHash per 4 KiB chunk', mbps: [], wall: [] },
    { name: 'SHA-256 node:crypto, streaming 1 MiB updates (reference)', mbps: [], wall: [] },
  ];
  // Warm up (page in the buffer, load the addon's code paths).
  addon.fingerprintSync(buf.subarray(0, 16 * MiB), 4 * KiB);
  for (let r = 0; r < rounds; r++) {
    const record = (row: FpRow, bytes: number, [wall, cpu]: [number, number]) => {
      row.mbps.push(bytes / MB / cpu);
      row.wall.push(bytes / MB / wall);
    };
    [4 * KiB, 16 * KiB, 64 * KiB].forEach((cs, i) => {
      record(rows[i], passes * bufSize, timeIt(() => {
        for (let p = 0; p < passes; p++) addon.fingerprintSync(buf, cs);
      }));
    });
    record(rows[3], shaBytes, timeIt(() => {
      for (let off = 0; off < shaBytes; off += 4 * KiB) createHash('sha256').update(buf.subarray(off, off + 4 * KiB)).digest();
    }));
    record(rows[4], bufSize, timeIt(() => {
      const h = createHash('sha256');
      for (let off = 0; off < bufSize; off += MiB) h.update(buf.subarray(off, off + MiB));
      h.digest();
    }));
  }
  // The data path hashes batches below 64 KiB on the event loop (ASYNC_HASH_BYTES in
  // server/dedup/fingerprinter.ts) and larger ones on the thread pool: the longest the loop is held.
  const small = buf.subarray(0, 60 * KiB);
  const t0 = performance.now();
  for (let i = 0; i < 1000; i++) addon.fingerprintSync(small, 4 * KiB);
  const loopBlockUs = ((performance.now() - t0) / 1000) * 1000;
  return { rows, loopBlockUs };
}

async function asyncThroughput(total: number): Promise<number> {
  // fingerprint() on libuv's thread pool, 4 batches of 1 MiB in flight: the whole machine's rate.
  const addon = native();
  const buf = randomFillSync(Buffer.allocUnsafe(Math.min(total, 256 * MiB)));
  const batch = MiB;
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    for (;;) {
      const off = next;
      next += batch;
      if (off >= buf.length) return;
      await addon.fingerprint(buf.subarray(off, off + batch), 4 * KiB);
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  return buf.length / MB / ((performance.now() - t0) / 1000);
}

// ------------------------------------------------------------------ daemons and measurements

interface Proc {
  rss: number;
  anon: number;
  file: number;
}

function procMem(pid: number): Proc {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(s)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), anon: kb('RssAnon'), file: kb('RssFile') + kb('RssShmem') };
}

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** CPU seconds (user + system) a process has used so far. */
function procCpu(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK; // utime, stime (fields 14 and 15)
}

/** Bytes a process has caused to be written to storage so far. */
function procWrites(pid: number): number {
  return Number(/^write_bytes: (\d+)/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'))?.[1] ?? NaN);
}

interface Usage {
  sec: number;
  cpu: number; // daemon CPU seconds
  disk: number; // daemon bytes written to storage
}

/** nbdcopy from the file into the export with a FLUSH at the end; what it took and cost the daemon. */
async function copyIn(d: Daemon, file: string, exportName: string): Promise<Usage> {
  const pid = d.proc.pid!;
  const c0 = procCpu(pid);
  const w0 = procWrites(pid);
  const t0 = performance.now();
  await runOk('nbdcopy', ['--flush', file, d.unixUri(exportName)], { timeoutMs: 600_000 });
  const sec = (performance.now() - t0) / 1000;
  return { sec, cpu: procCpu(pid) - c0, disk: procWrites(pid) - w0 };
}

/** Allocated bytes of a file (st_blocks × 512: LMDB files can be sparse). */
function allocated(path: string): number {
  const st = statSync(path);
  return st.blocks * 512;
}

interface DbStat {
  entries: number;
  bytes: number; // (branch + leaf + overflow pages) × page size
  branchBytes: number;
  depth: number;
}

/** Page counts per LMDB database, read through a second, read-only environment (LMDB is multi-process). */
function lmdbStats(dataDir: string): Record<string, DbStat> & { file: { pages: number; freePages: number } } {
  const env = lmdbOpen({ path: join(dataDir, 'meta.lmdb'), readOnly: true, maxDbs: 16 } as any);
  const out: any = {};
  try {
    const conv = (s: any): DbStat => ({
      entries: s.entryCount,
      bytes: (s.treeBranchPageCount + s.treeLeafPageCount + s.overflowPages) * s.pageSize,
      branchBytes: s.treeBranchPageCount * s.pageSize,
      depth: s.treeDepth,
    });
    out.main = conv(env.getStats());
    for (const name of ['nodes', 'node-refs', 'chunks', 'fingerprints', 'free-slots']) {
      const db = env.openDB({ name, encoding: 'binary', keyEncoding: 'binary' } as any);
      out[name] = conv(db.getStats());
    }
    // Pages in the file that no database uses: LMDB's free list (pages freed by copy-on-write commits,
    // reusable once no reader can see them), its own pages, and the two meta pages.
    const root: any = env.getStats();
    const pages = root.lastPageNumber + 1;
    const used = (Object.values(out) as DbStat[]).reduce((n, x) => n + x.bytes, 0) / root.pageSize;
    out.file = { pages, freePages: pages - used - 2 };
  } finally {
    void env.close();
  }
  return out;
}

async function startDaemonIn(dataDir: string, args: string[]): Promise<Daemon> {
  const d = new Daemon({ dataDir, args });
  onCleanup(() => d.stop());
  await d.start();
  return d;
}

async function api(d: Daemon, method: string, path: string, body?: unknown): Promise<any> {
  const r = await d.api(method, path, body);
  if (r.status < 200 || r.status > 299) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

interface WriteRun {
  uniqueSec: number;
  storedSec?: number;
  unique: Usage;
  stored?: Usage;
  storedAgain?: number; // bytes stored by the second copy (should be 0)
  metaBefore: number;
  metaAfter: number;
  memBefore: Proc;
  memAfter: Proc;
  cacheBytes: number;
  chunks: number;
  lmdb: ReturnType<typeof lmdbStats>;
  restart?: { sec: number; mem: Proc; settled: Proc; grown?: Proc; grownChunks?: number };
  stats: any;
  /** Dedup-log entries right after the write, and the seconds until the index had taken them in. */
  logEntries: number;
  indexSec: number;
}

async function writeRun(mode: 'on' | 'off', file: string, size: number, cache: string, withStored: boolean, withRestart: boolean, moreFile?: string): Promise<WriteRun> {
  const dir = tempDir(`shoal-dedupbench-${mode}-`);
  const d = await startDaemonIn(dir, ['--dedup', mode, '--cache-size', cache]);
  try {
    await api(d, 'POST', '/v1/volumes', { name: 'unique', size });
    await sleep(2500); // let the volume's creation commit settle
    const metaBefore = allocated(join(dir, 'meta.lmdb'));
    const memBefore = procMem(d.proc.pid!);
    const unique = await copyIn(d, file, 'unique');
    const uniqueSec = unique.sec;
    const memAfter = procMem(d.proc.pid!);
    // New fingerprints sit in the dedup log until writes pause; measure the index once it has them.
    const logEntries = (await api(d, 'GET', '/v1/stats')).dedupLogEntries;
    const indexSec = await waitDedupIndexed(() => api(d, 'GET', '/v1/stats'));
    const stats = await api(d, 'GET', '/v1/stats');
    const metaAfter = allocated(join(dir, 'meta.lmdb'));
    const lmdb = lmdbStats(dir);
    const run: WriteRun = { uniqueSec, unique, metaBefore, metaAfter, memBefore, memAfter, cacheBytes: stats.cache.bytes, chunks: stats.chunks, lmdb, stats, logEntries, indexSec };
    if (stats.physicalBytes !== size) throw new Error(`dedup ${mode}: ${size} unique bytes written, but physicalBytes = ${stats.physicalBytes}`);
    if (withStored) {
      await api(d, 'POST', '/v1/volumes', { name: 'again', size });
      run.stored = await copyIn(d, file, 'again');
      run.storedSec = run.stored.sec;
      const s2 = await api(d, 'GET', '/v1/stats');
      if (s2.logicalBytes !== 2 * size) throw new Error(`the second copy is not all mapped: ${JSON.stringify(s2)}`);
      // Every chunk of the second copy is already stored: anything stored now is a missed dedup.
      run.storedAgain = s2.physicalBytes - size;
      if (run.storedAgain !== 0) console.error(`!! dedup missed: the second copy of already stored data stored ${run.storedAgain} bytes (dedupHits ${s2.dedupHits - stats.dedupHits} of ${size / s2.chunkSize})`);
      run.stats = s2;
    }
    if (withRestart) {
      await d.stop();
      const t0 = performance.now();
      await d.start();
      const sec = (performance.now() - t0) / 1000;
      await sleep(500);
      const mem = procMem(d.proc.pid!);
      await sleep(10_000); // idle: whatever the daemon builds in the background at start is built
      run.restart = { sec, mem, settled: procMem(d.proc.pid!) };
      const s3 = await api(d, 'GET', '/v1/stats');
      if (s3.physicalBytes !== run.stats.physicalBytes) throw new Error(`after restart: ${JSON.stringify(s3)}`);
      // Per-chunk RAM is the slope: store as much unique data again, restart, compare.
      if (moreFile) {
        await api(d, 'POST', '/v1/volumes', { name: 'more', size });
        await copyIn(d, moreFile, 'more');
        await waitDedupIndexed(() => api(d, 'GET', '/v1/stats'));
        await d.stop();
        await d.start();
        await sleep(10_000);
        const s4 = await api(d, 'GET', '/v1/stats');
        run.restart.grown = procMem(d.proc.pid!);
        run.restart.grownChunks = s4.chunks - s3.chunks;
      }
    }
    return run;
  } finally {
    await d.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

// ------------------------------------------------------------------ main

runMain(async () => {
  const size = parseSizeEnv('DEDUPBENCH_SIZE', '1G');
  const rounds = Math.round(numEnv('DEDUPBENCH_ROUNDS', 3));
  const fpTotal = parseSizeEnv('DEDUPBENCH_FP_SIZE', '1G');
  const cache = process.env.DEDUPBENCH_CACHE ?? '64M';
  const header = systemHeader();
  console.log(header);
  const out: string[] = ['# dedup-bench', '', header, ''];
  const say = (line = '') => {
    console.log(line);
    out.push(line);
  };

  // (a)
  console.log(`(a) fingerprinting ${fmtBytes(fpTotal)} per measurement, ${rounds} rounds, one thread…`);
  const fp = fingerprintThroughput(fpTotal, rounds);
  const asyncMBps = await asyncThroughput(fpTotal);
  say('## (a) Fingerprint throughput, one core');
  say();
  say(`Random data, ${fmtBytes(fpTotal)} per measurement (SHA-256 per 4 KiB: ${fmtBytes(Math.min(fpTotal, 128 * MiB))}), median of ${rounds}, on the calling thread. Per core = bytes per second of this process's CPU time (only this thread runs meanwhile), so other work on the machine does not lower it; wall-clock rates beside it.`);
  say();
  say('| hash | MB/s per core (median) | per core, each round | wall-clock MB/s, each round |');
  say('|---|---:|---|---|');
  for (const r of fp.rows) say(`| ${r.name} | **${fix(median(r.mbps))}** | ${r.mbps.map((x) => fix(x)).join(', ')} | ${r.wall.map((x) => fix(x)).join(', ')} |`);
  say(`| BLAKE3-256 native fingerprint() on the thread pool, 4 KiB chunks, 4 × 1 MiB in flight (whole machine, wall clock) | | | ${fix(asyncMBps)} |`);
  say();
  const b4 = median(fp.rows[0].mbps);
  const sha4 = median(fp.rows[3].mbps);
  say(`- BLAKE3 at 4 KiB: ${fix(b4)} MB/s per core, ${fix(b4 / sha4, 1)}× SHA-256 per 4 KiB chunk → ${b4 >= 1000 ? 'meets' : 'BELOW'} the 1 GB/s-per-core target.`);
  say(`- Longest hash on the event loop: a batch under 64 KiB (15 × 4 KiB) takes ${fix(fp.loopBlockUs, 1)} µs; larger batches go to the thread pool.`);
  say();

  // (b), (c), (d)
  const work = mkdtempSync('/var/tmp/shoal-dedupbench-');
  onCleanup(async () => rmSync(work, { recursive: true, force: true }));
  const file = join(work, 'unique.bin');
  console.log(`(b) writing ${fmtBytes(size)} of random data to ${file}…`);
  await randomFile(file, size);
  await runOk('sh', ['-c', `cat "$1" > /dev/null`, 'sh', file]); // in the page cache: the source is not the bottleneck
  const moreFile = join(work, 'more.bin'); // other unique data, for the RAM slope in (d)
  await randomFile(moreFile, size);
  const on: WriteRun[] = [];
  const off: WriteRun[] = [];
  for (let r = 0; r < rounds; r++) {
    const order: ('on' | 'off')[] = r % 2 === 0 ? ['on', 'off'] : ['off', 'on'];
    for (const mode of order) {
      const res = await writeRun(mode, file, size, cache, mode === 'on', r === 0, mode === 'on' && r === 0 ? moreFile : undefined);
      (mode === 'on' ? on : off).push(res);
      const rate = size / MB / res.uniqueSec;
      console.log(`  round ${r + 1} dedup ${mode}: unique ${fix(rate)} MB/s${res.storedSec ? `, already stored ${fix(size / MB / res.storedSec)} MB/s` : ''}`);
    }
  }
  const mbps = (s: number) => size / MB / s;
  const onU = on.map((x) => mbps(x.uniqueSec));
  const offU = off.map((x) => mbps(x.uniqueSec));
  const onS = on.map((x) => mbps(x.storedSec!));
  say('## (b, c) Sequential write through NBD');
  say();
  say(`nbdcopy --flush of ${fmtBytes(size)} from a file in the page cache (/var/tmp) to the daemon's Unix socket; a fresh daemon (--cache-size ${cache}) per run; dedup on and off interleaved, ${rounds} rounds.`);
  say();
  const perGiB = (xs: Usage[], k: 'cpu' | 'disk') => median(xs.map((u) => (u[k] / size) * GiB));
  const cols = (xs: Usage[]) => `${fix(perGiB(xs, 'cpu'), 1)} | ${fmtBytes(perGiB(xs, 'disk'))}`;
  say('| write | MB/s (median) | rounds | ratio | daemon CPU s per GiB | daemon disk writes per GiB |');
  say('|---|---:|---|---:|---:|---:|');
  say(`| unique data, --dedup off | ${fix(median(offU))} | ${offU.map((x) => fix(x)).join(', ')} | 1.00 | ${cols(off.map((x) => x.unique))} |`);
  say(`| unique data, --dedup on | ${fix(median(onU))} | ${onU.map((x) => fix(x)).join(', ')} | **${fix(median(onU) / median(offU), 2)}** (target ≥ 0.70) | ${cols(on.map((x) => x.unique))} |`);
  say(`| already stored data, --dedup on (second volume) | ${fix(median(onS))} | ${onS.map((x) => fix(x)).join(', ')} | **${fix(median(onS) / median(onU), 2)}** × unique (target > 1) | ${cols(on.map((x) => x.stored!))} |`);
  say();
  const perRound = on.map((x, i) => fix(mbps(x.uniqueSec) / mbps(off[i].uniqueSec), 2));
  say(`- dedup on/off per round: ${perRound.join(', ')} → ${median(onU) / median(offU) >= 0.7 ? 'meets' : 'BELOW'} 0.7.`);
  say(`- bytes stored again by the second copy (must be 0: every chunk was already stored), per round: ${on.map((x) => x.storedAgain).join(', ')}${on.some((x) => x.storedAgain) ? ' → **DEDUP MISSED CHUNKS**' : ''}.`);
  say(`- already stored vs unique, per round: ${on.map((x) => fix(x.uniqueSec / x.storedSec!, 2)).join(', ')} → ${median(onS) > median(onU) ? 'faster' : 'NOT faster'}.`);
  say();

  // (d) from round 1
  const a = on[0];
  const b = off[0];
  const chunks = a.chunks;
  const cs = a.stats.chunkSize;
  const perChunk = (n: number) => n / chunks;
  const perTiB = (n: number) => (n / chunks) * (TiB / cs);
  const fpDb = a.lmdb.fingerprints;
  const chunksDb = a.lmdb.chunks;
  const growOn = a.metaAfter - a.metaBefore;
  const growOff = b.metaAfter - b.metaBefore;
  const lmdbSum = (s: ReturnType<typeof lmdbStats>) => ['main', 'nodes', 'node-refs', 'chunks', 'fingerprints', 'free-slots'].reduce((n, k) => n + s[k].bytes, 0);
  say(`- The dedup log: right after each unique write of dedup on it held ${on.map((r) => r.logEntries).join(', ')} entries (new fingerprints are logged at commit, not inserted into the on-disk index); once writes paused, the index had taken them in after ${on.map((r) => fix(r.indexSec, 1)).join(', ')} s (paced commits of 4096 random inserts, each followed by 3× its time idle). The figures below are measured after that.`);
  say(`- The log's memory is bounded, not per TiB: at most ${FP_LOG_MAX} entries (${fmtBytes(FP_LOG_MAX * cs)} of unique data at this chunk size) before the index takes them in while writes go on; each is a 48-byte slot of the native table (kept between 1/4 and 1/2 full: 96-192 B) plus its 42-byte log record: at most ${fmtBytes(FP_LOG_MAX * (192 + 42))}.`);
  say();
  say('## (d) What the fingerprint index costs');
  say();
  say(`${chunks} unique chunks of ${cs / KiB} KiB (${fmtBytes(size)}) written once; per TiB = × ${TiB / cs} chunks.`);
  say();
  say('| measure | bytes | per unique chunk | per TiB of unique data |');
  say('|---|---:|---:|---:|');
  say(`| meta.lmdb growth on disk (allocated blocks), dedup on | ${growOn} | ${fix(perChunk(growOn), 1)} | ${fmtBytes(perTiB(growOn))} |`);
  say(`| meta.lmdb growth on disk, dedup off (no index) | ${growOff} | ${fix(perChunk(growOff), 1)} | ${fmtBytes(perTiB(growOff))} |`);
  say(`| meta.lmdb growth, on − off (index pages + LMDB free pages left by its commits) | ${growOn - growOff} | ${fix(perChunk(growOn - growOff), 1)} | ${fmtBytes(perTiB(growOn - growOff))} |`);
  say(`| **index on disk**: LMDB pages of the \`fingerprints\` database (${fpDb.entries} entries, depth ${fpDb.depth}) | ${fpDb.bytes} | **${fix(perChunk(fpDb.bytes), 1)}** | **${fmtBytes(perTiB(fpDb.bytes))}** |`);
  say(`| … of which branch pages (the part a lookup needs in RAM for one disk read at most) | ${fpDb.branchBytes} | ${fix(perChunk(fpDb.branchBytes), 2)} | ${fmtBytes(perTiB(fpDb.branchBytes))} |`);
  say(`| LMDB pages of the \`chunks\` database (chunk records, ${chunksDb.entries} entries; also with dedup off) | ${chunksDb.bytes} | ${fix(perChunk(chunksDb.bytes), 1)} | ${fmtBytes(perTiB(chunksDb.bytes))} |`);
  say(`| all LMDB databases (map nodes, refcounts, chunks, index), dedup on | ${lmdbSum(a.lmdb)} | ${fix(perChunk(lmdbSum(a.lmdb)), 1)} | ${fmtBytes(perTiB(lmdbSum(a.lmdb)))} |`);
  say(`| free pages in meta.lmdb (LMDB free list), dedup on | ${a.lmdb.file.freePages * 4096} | ${fix(perChunk(a.lmdb.file.freePages * 4096), 1)} | |`);
  say(`| free pages in meta.lmdb, dedup off | ${b.lmdb.file.freePages * 4096} | ${fix(perChunk(b.lmdb.file.freePages * 4096), 1)} | |`);
  // Median over all rounds: one run's heap growth is noisy.
  const dAnonOn = median(on.map((x) => x.memAfter.anon - x.memBefore.anon));
  const dAnonOff = median(off.map((x) => x.memAfter.anon - x.memBefore.anon));
  const dFileOn = a.memAfter.file - a.memBefore.file;
  const dFileOff = b.memAfter.file - b.memBefore.file;
  say(`| daemon RssAnon growth during the write (median of the rounds), dedup on (JS heap, buffers, uncommitted overlays, cache arena: cache now ${fmtBytes(a.cacheBytes)}) | ${dAnonOn} | ${fix(perChunk(dAnonOn), 1)} | |`);
  say(`| daemon RssAnon growth during the write, dedup off (cache now ${fmtBytes(b.cacheBytes)}) | ${dAnonOff} | ${fix(perChunk(dAnonOff), 1)} | |`);
  say(`| daemon RssFile growth during the write (LMDB pages the daemon touched through its map: kernel page cache, shared, evictable), dedup on | ${dFileOn} | ${fix(perChunk(dFileOn), 1)} | ${fmtBytes(perTiB(dFileOn))} |`);
  say(`| daemon RssFile growth during the write, dedup off | ${dFileOff} | ${fix(perChunk(dFileOff), 1)} | |`);
  const r = a.restart;
  if (r) {
    say(`| daemon RssAnon 10 s after a restart on this store (${chunks} chunks) / on an empty store | ${r.settled.anon} / ${a.memBefore.anon} | (fixed cost: see the slope below) | |`);
    if (r.grown && r.grownChunks) {
      const slopeAnon = (r.grown.anon - r.settled.anon) / r.grownChunks;
      const slopeFile = (r.grown.file - r.settled.file) / r.grownChunks;
      say(`| **daemon's own memory per unique chunk**: RssAnon 10 s after a restart, with ${r.grownChunks} more unique chunks stored, minus the same before them (${r.grown.anon} − ${r.settled.anon}) | ${r.grown.anon - r.settled.anon} | **${fix(slopeAnon, 1)}** | **${fmtBytes(Math.max(0, slopeAnon) * (TiB / cs))}** |`);
      say(`| RssFile per unique chunk, the same way (LMDB pages mapped at start: page cache, evictable) | ${r.grown.file - r.settled.file} | ${fix(slopeFile, 1)} | ${fmtBytes(Math.max(0, slopeFile) * (TiB / cs))} |`);
    }
    say(`| daemon RssAnon / RssFile 0.5 s after the restart (ready after ${fix(r.sec, 2)} s) | ${r.mem.anon} / ${r.mem.file} | | |`);
  }
  say();
  say(`- The index itself lives in LMDB pages on disk, which the kernel caches as they are touched. To keep every lookup of an uncached fingerprint to at most one disk read, its branch pages should stay cached: ${fix(perChunk(fpDb.branchBytes), 2)} B per chunk (${fmtBytes(perTiB(fpDb.branchBytes))} per TiB). Holding the whole index in the page cache would take ${fmtBytes(perTiB(fpDb.bytes))} per TiB.`);
  say(`- LMDB free pages: writing unique data inserts fingerprints at random keys, so each commit copies leaf pages all over the index, and the pages it frees wait on the free list — the file grows by ${fix(perChunk(a.lmdb.file.freePages * 4096), 1)} B per chunk more than the pages in use (dedup off: ${fix(perChunk(b.lmdb.file.freePages * 4096), 1)} B).`);
  if (r?.grown && r.grownChunks) say(`- Per-chunk RAM kept by the daemon itself (the slope between two store sizes after a restart): ${fix((r.grown.anon - r.settled.anon) / r.grownChunks, 1)} B per chunk. Goal: at most 1 GiB per TiB = 4 B per 4 KiB chunk. At this scale RSS moves by a few MiB of heap noise (±10 B per chunk), so a small or negative slope means no per-chunk structure is visible; the only one by design is the Bloom filter in front of the index (server/meta/fingerprint-filter.ts), whose size follows from its code, not from this measurement.`);
  say();
  say(`Raw LMDB stats (dedup on): \`${JSON.stringify(a.lmdb)}\``);
  say();
  say(`Raw LMDB stats (dedup off): \`${JSON.stringify(b.lmdb)}\``);

  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  const path = join(ROOT, 'bench', 'results', 'dedup-bench-latest.md');
  writeFileSync(path, out.join('\n') + '\n');
  console.log(`\nwrote ${path}`);
});
