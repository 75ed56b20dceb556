// Issue "shared cache", item 7: the clone storm. A golden image holding a 512 MiB working set (random
// bytes, nothing zero, nothing deduplicable within it), then N = 1, 4 and 16 copies of it, each read in
// full by its own client (nbdcopy, one connection) at the same time. For each N it reports the server's
// memory (RSS growth plus page-cache growth), the bytes read from the backing store and the aggregate
// throughput, for Shoal and for what a user would pick instead:
//
//   shoal clones        N writable clones of a snapshot of the golden volume (one daemon, restarted
//                       before each run so the cache is cold: store reads are counted from zero)
//   shoal independent   N volumes, each written separately with the same bytes (as when the same OS is
//                       installed N times): no backing chain can share them, deduplication does
//   nbdkit file copies  N full copies of the image file, one `nbdkit file` each (one page-cache copy
//                       each; N images written independently are the same bytes on the same path)
//   qemu-nbd qcow2      N qcow2 overlays on one raw backing file, one `qemu-nbd` each
//
// Memory: Σ over the server processes of (peak VmRSS during the run − VmRSS before it), plus the growth
// of the page cache held for the files those servers read, measured per file with fincore (mincore):
// other processes on the machine do not disturb it, unlike /proc/meminfo. Before each run those files'
// pages are dropped (dd iflag=nocache count=0, i.e. posix_fadvise DONTNEED), so every run starts cold.
// Store reads: Shoal's cache.storeReadBytes (cross-checked with /proc/PID/io read_bytes); for nbdkit and
// qemu-nbd, Σ /proc/PID/io read_bytes (bytes that came from the disk, not from the page cache).
// Target (issue): Shoal's memory and store reads at N = 16 within 1.1× of its N = 1 figures.
//
//   CLONESTORM_MIB     golden working set in MiB (default 512)
//   CLONESTORM_NS      the values of N (default 1,4,16)
//   CLONESTORM_CACHE   Shoal --cache-size (default: working set × 1.5, at least 64M)
//   CLONESTORM_SKIP    comma list of setups to skip: shoal-clones, shoal-independent, nbdkit, qemu-nbd
//   CLONESTORM_DIR     where the big files go (default /var/tmp)
//   CLONESTORM_NBDCOPY extra nbdcopy flags for every client (default none: nbdcopy's own request size
//                      and requests in flight), e.g. "--request-size=128K --requests=16"
//
// Run: node --import tsx bench/clone-storm.ts   (writes bench/results/clone-storm-latest.md)
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Daemon } from '../test/helpers/daemon.js';
import { daemonNodeEnv, fix, numEnv, onCleanup, randomFile, ROOT, runMain, run, runOk, startNbdServer, systemHeader, type NbdServer } from './lib.js';

const MiB = 1024 ** 2;
const WS_MIB = numEnv('CLONESTORM_MIB', 512);
const WS = WS_MIB * MiB;
const NS = (process.env.CLONESTORM_NS ?? '1,4,16').split(',').map((s) => Number(s.trim()));
const NMAX = Math.max(...NS);
const CACHE = process.env.CLONESTORM_CACHE ?? `${Math.max(64, Math.ceil(WS_MIB * 1.5))}M`;
const SKIP = new Set((process.env.CLONESTORM_SKIP ?? '').split(',').map((s) => s.trim()).filter(Boolean));
const CLIENT_ARGS = (process.env.CLONESTORM_NBDCOPY ?? '').split(/\s+/).filter(Boolean);
const BASE = process.env.CLONESTORM_DIR ?? (existsSync('/var/tmp') ? '/var/tmp' : '/tmp');

if (!NS.every((n) => Number.isInteger(n) && n > 0) || !NS.includes(1)) throw new Error(`CLONESTORM_NS=${process.env.CLONESTORM_NS}: positive integers including 1`);

// ------------------------------------------------------------------ measuring

function procStatus(pid: number, key: 'VmRSS' | 'VmHWM'): number {
  try {
    const m = new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

function procReadBytes(pid: number): number {
  try {
    const m = /^read_bytes:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/io`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

/** Resets VmHWM to the current RSS (Linux ≥ 4.0: "5" > /proc/PID/clear_refs). */
function resetPeakRss(pid: number): void {
  try {
    writeFileSync(`/proc/${pid}/clear_refs`, '5');
  } catch {
    /* not permitted: the 50 ms samples still catch the peak */
  }
}

function meminfoCached(): number {
  const m = /^Cached:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

/** Bytes of these files resident in the page cache (fincore, i.e. mincore over a mapping). */
async function residentBytes(files: string[]): Promise<number> {
  if (files.length === 0) return 0;
  const out = await runOk('fincore', ['--bytes', '--noheadings', '--output', 'RES', ...files]);
  return out
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((n) => Number.isFinite(n))
    .reduce((a, b) => a + b, 0);
}

/** Drops the page cache of these files only (dd iflag=nocache count=0: posix_fadvise DONTNEED). */
async function dropFileCache(files: string[]): Promise<void> {
  await runOk('sync', []);
  for (const f of files) await runOk('dd', [`if=${f}`, 'iflag=nocache', 'count=0', 'status=none']);
}

interface RunResult {
  setup: string;
  n: number;
  memory: number; // RSS growth + page-cache growth
  rssGrowth: number;
  pageCache: number;
  rssAfter: number; // Σ VmRSS at the end
  storeReads: number;
  ioReadBytes: number; // Σ /proc/PID/io read_bytes growth (cross-check for Shoal)
  seconds: number;
  mibPerSec: number;
  cachedDelta: number; // /proc/meminfo Cached: growth (system-wide, disturbed by anything else running)
}

interface Target {
  pids: () => number[];
  files: string[]; // files the servers read (page cache measured and dropped)
  uris: string[]; // one per client
  storeReads?: () => Promise<number>; // server-side figure; default Σ read_bytes
}

/** Drops the servers' file cache, then reads every uri in full at once; measures around it. */
async function measure(setup: string, n: number, t: Target): Promise<RunResult> {
  await dropFileCache(t.files);
  await sleep(200);
  const pids = t.pids();
  for (const p of pids) resetPeakRss(p);
  const rss0 = pids.map((p) => procStatus(p, 'VmRSS'));
  const io0 = pids.map(procReadBytes);
  const res0 = await residentBytes(t.files);
  const cached0 = meminfoCached();
  const store0 = t.storeReads ? await t.storeReads() : 0;
  const peak = [...rss0];
  const sampler = setInterval(() => pids.forEach((p, i) => (peak[i] = Math.max(peak[i], procStatus(p, 'VmRSS')))), 50);
  const t0 = process.hrtime.bigint();
  const results = await Promise.all(t.uris.map((uri) => run('nbdcopy', ['--connections=1', ...CLIENT_ARGS, uri, 'null:'], { timeoutMs: 600_000 })));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  clearInterval(sampler);
  for (const [i, r] of results.entries()) if (r.status !== 0) throw new Error(`${setup} N=${n}: nbdcopy ${t.uris[i]} exited ${r.status}: ${r.stderr}`);
  // VmHWM was reset before the run (clear_refs 5): it is the peak of this run, between samples too.
  pids.forEach((p, i) => (peak[i] = Math.max(peak[i], procStatus(p, 'VmRSS'), procStatus(p, 'VmHWM'))));
  const rssGrowth = pids.reduce((a, p, i) => a + Math.max(0, peak[i] - rss0[i]), 0);
  const pageCache = Math.max(0, (await residentBytes(t.files)) - res0);
  const ioReadBytes = pids.reduce((a, p, i) => a + (procReadBytes(p) - io0[i]), 0);
  const storeReads = t.storeReads ? (await t.storeReads()) - store0 : ioReadBytes;
  const r: RunResult = {
    setup,
    n,
    memory: rssGrowth + pageCache,
    rssGrowth,
    pageCache,
    rssAfter: pids.reduce((a, p) => a + procStatus(p, 'VmRSS'), 0),
    storeReads,
    ioReadBytes,
    seconds,
    mibPerSec: (n * WS) / MiB / seconds,
    cachedDelta: meminfoCached() - cached0,
  };
  console.error(
    `  ${setup} N=${n}: memory ${fix(r.memory / MiB)} MiB (RSS +${fix(rssGrowth / MiB)}, page cache +${fix(pageCache / MiB)}), store reads ${fix(storeReads / MiB)} MiB, ${fix(r.mibPerSec)} MiB/s in ${fix(seconds, 1)} s`,
  );
  return r;
}

// ------------------------------------------------------------------ servers

async function stopAll(servers: NbdServer[]): Promise<void> {
  await Promise.all(servers.map((s) => s.stop()));
}

// ------------------------------------------------------------------ setups

async function shoalApi(d: Daemon, method: string, path: string, body?: unknown): Promise<any> {
  const r = await d.api(method, path, body);
  if (r.status < 200 || r.status > 299) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** One Shoal data directory: the golden volume, a snapshot, NMAX clones and NMAX independently written volumes. */
async function prepareShoal(dir: string, golden: string): Promise<Daemon> {
  const d = new Daemon({ dataDir: join(dir, 'shoal-data'), args: ['--cache-size', CACHE], env: daemonNodeEnv() });
  onCleanup(() => d.stop());
  await d.start();
  await d.createVolume('golden', WS);
  let t = Date.now();
  await runOk('nbdcopy', ['--flush', golden, d.unixUri('golden')]);
  console.error(`  shoal: golden written in ${fix((Date.now() - t) / 1000, 1)} s`);
  await shoalApi(d, 'POST', '/v1/volumes/golden/snapshots', { name: 'v1' });
  for (let i = 0; i < NMAX; i++) await shoalApi(d, 'POST', '/v1/volumes', { name: `clone${i}`, from: { volume: 'golden', snapshot: 'v1' } });
  if (!SKIP.has('shoal-independent')) {
    t = Date.now();
    for (let i = 0; i < NMAX; i++) {
      await d.createVolume(`image${i}`, WS);
      await runOk('nbdcopy', ['--flush', golden, d.unixUri(`image${i}`)]);
    }
    console.error(`  shoal: ${NMAX} independent images written in ${fix((Date.now() - t) / 1000, 1)} s`);
  }
  const st = await shoalApi(d, 'GET', '/v1/stats');
  console.error(`  shoal: logical ${fix(st.logicalBytes / MiB)} MiB, physical ${fix(st.physicalBytes / MiB)} MiB, dedup ratio ${fix(st.dedupRatio, 2)}`);
  return d;
}

async function runShoal(d: Daemon, setup: string, n: number, volume: (i: number) => string): Promise<RunResult> {
  await d.restart(); // a fresh process: cold cache, RSS from its baseline
  const pid = d.proc.pid!;
  const chunks = join(d.dataDir, 'chunks.dat');
  const r = await measure(setup, n, {
    pids: () => [pid],
    files: existsSync(chunks) ? [chunks] : [],
    uris: Array.from({ length: n }, (_, i) => d.unixUri(volume(i))),
    storeReads: async () => (await shoalApi(d, 'GET', '/v1/stats')).cache.storeReadBytes,
  });
  return r;
}

async function runNbdkitCopies(dir: string, copies: string[], n: number): Promise<RunResult> {
  const servers: NbdServer[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const sock = join(dir, `nbdkit-${i}.sock`);
      servers.push(await startNbdServer('nbdkit', ['-f', '--exit-with-parent', '-U', sock, 'file', copies[i]], sock));
    }
    return await measure('nbdkit file copies', n, { pids: () => servers.map((s) => s.proc.pid!), files: copies.slice(0, n), uris: servers.map((s) => s.uri) });
  } finally {
    await stopAll(servers);
  }
}

async function runQemuOverlays(dir: string, golden: string, n: number): Promise<RunResult> {
  const servers: NbdServer[] = [];
  const overlays: string[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const ovl = join(dir, `overlay-${n}-${i}.qcow2`);
      await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', golden, '-F', 'raw', ovl]);
      overlays.push(ovl);
      const sock = join(dir, `qemu-nbd-${i}.sock`);
      servers.push(await startNbdServer('qemu-nbd', ['-k', sock, '-f', 'qcow2', '-t', ovl], sock));
    }
    return await measure('qemu-nbd qcow2 overlays', n, { pids: () => servers.map((s) => s.proc.pid!), files: [golden, ...overlays], uris: servers.map((s) => s.uri) });
  } finally {
    await stopAll(servers);
    for (const o of overlays) rmSync(o, { force: true });
  }
}

// ------------------------------------------------------------------ report

function table(results: RunResult[]): string {
  const lines = [
    '| setup | N | memory MiB | store reads MiB | aggregate MiB/s | memory vs N=1 | store reads vs N=1 |',
    '|---|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of results) {
    const base = results.find((b) => b.setup === r.setup && b.n === 1);
    const rel = (a: number, b: number | undefined) => (b && b > 0 ? `${fix(a / b, 2)}×` : '—');
    lines.push(
      `| ${r.setup} | ${r.n} | ${fix(r.memory / MiB)} | ${fix(r.storeReads / MiB)} | ${fix(r.mibPerSec)} | ${rel(r.memory, base?.memory)} | ${rel(r.storeReads, base?.storeReads)} |`,
    );
  }
  return lines.join('\n');
}

function details(results: RunResult[]): string {
  const lines = [
    '| setup | N | RSS growth MiB | page-cache growth MiB | RSS at end MiB | /proc io read_bytes MiB | wall s | meminfo Cached Δ MiB (system-wide) |',
    '|---|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (const r of results)
    lines.push(
      `| ${r.setup} | ${r.n} | ${fix(r.rssGrowth / MiB)} | ${fix(r.pageCache / MiB)} | ${fix(r.rssAfter / MiB)} | ${fix(r.ioReadBytes / MiB)} | ${fix(r.seconds, 1)} | ${fix(r.cachedDelta / MiB)} |`,
    );
  return lines.join('\n');
}

function verdicts(results: RunResult[]): { lines: string[]; pass: boolean } {
  const lines: string[] = [];
  let pass = true;
  for (const setup of ['shoal clones', 'shoal independent']) {
    const one = results.find((r) => r.setup === setup && r.n === 1);
    const max = results.filter((r) => r.setup === setup).sort((a, b) => b.n - a.n)[0];
    if (!one || !max || max.n === 1) continue;
    const mem = max.memory / one.memory;
    const reads = max.storeReads / one.storeReads;
    const ok = mem <= 1.1 && reads <= 1.1;
    pass &&= ok;
    lines.push(`- ${setup}: memory N=${max.n}/N=1 = ${fix(mem, 3)}×, store reads N=${max.n}/N=1 = ${fix(reads, 3)}× (target ≤ 1.1×): **${ok ? 'PASS' : 'FAIL'}**`);
  }
  return { lines, pass };
}

// ------------------------------------------------------------------ main

async function main(): Promise<void> {
  for (const tool of ['nbdcopy', 'fincore', ...(SKIP.has('nbdkit') ? [] : ['nbdkit']), ...(SKIP.has('qemu-nbd') ? [] : ['qemu-nbd', 'qemu-img'])]) {
    if ((await run('sh', ['-c', `command -v ${tool}`])).status !== 0) throw new Error(`${tool} is needed (Debian: libnbd-bin, util-linux, nbdkit, qemu-utils)`);
  }
  if (!existsSync(join(ROOT, 'dist', 'server', 'main.js'))) throw new Error('dist/server/main.js is missing: build first (npx tsc -p tsconfig.json)');
  const header = systemHeader();
  const started = Date.now();
  const dir = mkdtempSync(join(BASE, 'shoal-clone-storm-'));
  onCleanup(async () => rmSync(dir, { recursive: true, force: true }));
  const needCopies = SKIP.has('nbdkit') ? 0 : NMAX;
  const df = await runOk('df', ['-B1', '--output=avail', dir]);
  const avail = Number(df.trim().split('\n').pop());
  const need = WS * (needCopies + 3) + 256 * MiB;
  if (avail < need) throw new Error(`${dir}: ${fix(avail / MiB)} MiB free, need about ${fix(need / MiB)} MiB (set CLONESTORM_DIR or CLONESTORM_MIB)`);
  console.error(`clone storm: ${WS_MIB} MiB working set, N = ${NS.join(', ')}, shoal --cache-size ${CACHE}, files in ${dir}`);

  const golden = join(dir, 'golden.raw');
  await randomFile(golden, WS);
  // Full copies for nbdkit, written with O_DIRECT so they do not sit in the page cache afterwards.
  const copies: string[] = [];
  for (let i = 0; i < needCopies; i++) {
    const c = join(dir, `copy-${i}.raw`);
    await runOk('dd', [`if=${golden}`, `of=${c}`, 'bs=4M', 'oflag=direct', 'status=none']);
    copies.push(c);
  }
  if (needCopies) console.error(`  ${needCopies} full copies written`);

  const results: RunResult[] = [];
  const shoal = SKIP.has('shoal-clones') && SKIP.has('shoal-independent') ? null : await prepareShoal(dir, golden);
  for (const n of NS.sort((a, b) => a - b)) {
    if (shoal && !SKIP.has('shoal-clones')) results.push(await runShoal(shoal, 'shoal clones', n, (i) => `clone${i}`));
    if (shoal && !SKIP.has('shoal-independent')) results.push(await runShoal(shoal, 'shoal independent', n, (i) => `image${i}`));
    if (!SKIP.has('nbdkit')) results.push(await runNbdkitCopies(dir, copies, n));
    if (!SKIP.has('qemu-nbd')) results.push(await runQemuOverlays(dir, golden, n));
  }
  const order = ['shoal clones', 'shoal independent', 'nbdkit file copies', 'qemu-nbd qcow2 overlays'];
  results.sort((a, b) => order.indexOf(a.setup) - order.indexOf(b.setup) || a.n - b.n);
  const v = verdicts(results);
  const minutes = (Date.now() - started) / 60_000;
  const md = [
    '# clone-storm',
    '',
    header,
    '',
    `Golden image: ${WS_MIB} MiB of random bytes. N copies of it, each read in full by its own client (\`nbdcopy --connections=1${CLIENT_ARGS.length ? ' ' + CLIENT_ARGS.join(' ') : ''} URI null:\`), all at once. ` +
      `Shoal: --cache-size ${CACHE}, one daemon restarted before each run (cold cache); clones are clones of one snapshot of the golden volume, ` +
      `independent images are N volumes each written with the same bytes by nbdcopy (deduplicated). nbdkit: one \`nbdkit file\` per full copy ` +
      `(N images written independently are the same bytes in the same files, so the same row). qemu-nbd: one \`qemu-nbd -f qcow2\` per overlay ` +
      `(\`qemu-img create -f qcow2 -b golden.raw -F raw\`). The page cache of the files each server reads is dropped before every run.`,
    '',
    '- memory = Σ (peak VmRSS during the run − VmRSS before) of the server processes + growth of the page cache held for the files they read (fincore).',
    '- store reads = Shoal: `cache.storeReadBytes` from /v1/stats; others: Σ `/proc/PID/io` read_bytes (bytes from disk).',
    '- aggregate MiB/s = N × image size / wall time of the slowest client.',
    '',
    table(results),
    '',
    ...v.lines,
    '',
    '<details><summary>details</summary>',
    '',
    details(results),
    '',
    'meminfo Cached Δ is system-wide and includes whatever else ran on the machine; the page-cache column counts only the servers’ files.',
    '',
    '</details>',
    '',
    `Run time: ${fix(minutes, 1)} min.`,
    '',
  ].join('\n');
  console.log(md);
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'clone-storm-latest.md'), md);
  console.error(`wrote bench/results/clone-storm-latest.md`);
  if (!v.pass) process.exitCode = 1;
}

runMain(main);
