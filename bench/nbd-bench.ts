// `npm run bench`: fio's nbd engine against Shoal and its peers, all over Unix sockets, in one run so the
// ratios are comparable on a noisy machine. The peer to beat on writes is qemu-nbd serving a qcow2 overlay
// on a raw base (what VM fleets use for thin copy-on-write images); nbdkit memory is the ceiling of the
// protocol path. Server CPU per request = the server process's user+sys time (/proc) during a run,
// divided by the requests of that run (ramp included).
//
// Workloads (BENCH_WORKLOADS, comma-separated keys; default all but tls):
//   randread    4K random read QD32 and
//   seqread     1M sequential read QD8, on the hit path (every target read in full twice first)
//   tls         the two reads over TLS 1.3 (X.509) on loopback TCP, Shoal against nbdkit memory
//   randwrite   4K random write QD32
//   seqwrite    1M sequential write QD8 on a settled volume
//   overwrite   1M sequential write QD8 right after BENCH_OVERWRITE_SEC of 4K random writes QD32
//               (Shoal and the qcow2 overlay only: the issue's comparison)
//   fsync       4K random write + FLUSH at QD1 (fio --fsync=1)
//   fua         4K random FUA writes at QD1 (libnbd's Python binding: fio's nbd engine sends no FUA)
// Every write run except `overwrite` starts settled: `sync`, and Shoal's dedup log and reclaim backlog
// empty (how long that took is printed).
//
//   BENCH_SERVERS       comma-separated: shoal, qcow2-overlay, nbdkit-memory, qemu-nbd-raw, nbdkit-file,
//                       or `all` (default shoal,qcow2-overlay,nbdkit-memory; Shoal always runs)
//   BENCH_SIZE          size of each target, filled with random data first (default 1G)
//   BENCH_RUNTIME       seconds per measured run (default 5; plus a 1 s ramp that is not counted)
//   BENCH_OVERWRITE_SEC seconds of 4K random writes before the `overwrite` run (default 30)
//   BENCH_REPEAT        runs per (workload, server); the median is reported (default 3)
//   BENCH_CACHE         Shoal --cache-size (default 1G)
//   BENCH_STRICT=1      exit 1 when a read ratio vs nbdkit memory is below the floor (0.5)
//
// For each workload the servers run back to back (order rotated each repetition) to reduce drift.
// The default run takes about 12 minutes on 2 cores.
import { chmodSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { makeTlsKeys } from '../test/helpers/tls-keys.js';
import { fuaWrites } from './fua-writes.js';
import { cpuSeconds, diskWrittenBytes, fio, fix, fmtBytes, freePort, median, waitDedupIndexed, numEnv, parseSizeEnv, onCleanup, randomFile, ROOT, runMain, runOk, startNbdkit, startNbdServer, startShoal, systemHeader, tempDir, type FioJob, type Shoal } from './lib.js';

const FLOOR = 0.5;
const TARGET = 0.8;

const SERVER_KEYS = ['shoal', 'qcow2-overlay', 'nbdkit-memory', 'qemu-nbd-raw', 'nbdkit-file'] as const;
type Server = (typeof SERVER_KEYS)[number];
const SERVER_NAME: Record<Server, string> = {
  shoal: 'shoal',
  'qcow2-overlay': 'qemu-nbd qcow2 overlay',
  'nbdkit-memory': 'nbdkit memory',
  'qemu-nbd-raw': 'qemu-nbd raw',
  'nbdkit-file': 'nbdkit file',
};
const DEFAULT_SERVERS: Server[] = ['shoal', 'qcow2-overlay', 'nbdkit-memory'];

interface Workload {
  key: string;
  name: string;
  rw: FioJob['rw'];
  bs: string;
  iodepth: number;
  read: boolean;
  tls?: boolean;
  extra?: string[];
  /** Timed per request by the libnbd client instead of fio. */
  fua?: boolean;
  /** Runs right after BENCH_OVERWRITE_SEC of 4K random writes QD32, on these servers only. */
  afterOverwrite?: readonly Server[];
}

const OVERWRITE_SEC = numEnv('BENCH_OVERWRITE_SEC', 30);
const WORKLOADS: Workload[] = [
  { key: 'randread', name: '4K randread QD32', rw: 'randread', bs: '4k', iodepth: 32, read: true },
  { key: 'seqread', name: '1M seqread QD8', rw: 'read', bs: '1m', iodepth: 8, read: true },
  { key: 'tls', name: '4K randread QD32 TLS', rw: 'randread', bs: '4k', iodepth: 32, read: true, tls: true },
  { key: 'tls', name: '1M seqread QD8 TLS', rw: 'read', bs: '1m', iodepth: 8, read: true, tls: true },
  { key: 'randwrite', name: '4K randwrite QD32', rw: 'randwrite', bs: '4k', iodepth: 32, read: false },
  { key: 'seqwrite', name: '1M seqwrite QD8, settled', rw: 'write', bs: '1m', iodepth: 8, read: false },
  { key: 'overwrite', name: `1M seqwrite QD8 after ${OVERWRITE_SEC} s of 4K randwrite`, rw: 'write', bs: '1m', iodepth: 8, read: false, afterOverwrite: ['shoal', 'qcow2-overlay'] },
  { key: 'fsync', name: '4K randwrite + FLUSH QD1', rw: 'randwrite', bs: '4k', iodepth: 1, read: false, extra: ['--fsync=1'] },
  { key: 'fua', name: '4K FUA write QD1', rw: 'randwrite', bs: '4k', iodepth: 1, read: false, fua: true },
];
/** Over TLS: Shoal against nbdkit memory. */
const TLS_SERVERS: readonly Server[] = ['shoal', 'nbdkit-memory'];

/** One measured run, reduced to what the tables show. */
interface Run {
  iops: number;
  mibs: number;
  /** Latency percentiles of one request; for fsync runs, the write's plus its FLUSH's. */
  p50: number;
  p99: number;
  writeP50: number;
  writeP99: number;
  flushP50: number;
  flushP99: number;
  cpuUs: number;
  /** Write runs: bytes that reached the disk (data, metadata, journals) per byte the client wrote. */
  wa: number;
  errors: number;
}

function listEnv<T extends string>(name: string, all: readonly T[], def: readonly T[]): T[] {
  const v = process.env[name]?.trim();
  if (!v) return [...def];
  if (v === 'all') return [...all];
  const picked = v.split(',').map((x) => x.trim());
  for (const p of picked) if (!all.includes(p as T)) throw new Error(`${name}: unknown "${p}" (one of ${all.join(', ')}, or all)`);
  return all.filter((x) => picked.includes(x));
}

runMain(async () => {
  const size = parseSizeEnv('BENCH_SIZE', '1G');
  const runtime = numEnv('BENCH_RUNTIME', 5);
  const reps = Math.round(numEnv('BENCH_REPEAT', 3));
  const cache = process.env.BENCH_CACHE ?? '1G';
  const servers = listEnv('BENCH_SERVERS', SERVER_KEYS, DEFAULT_SERVERS);
  if (!servers.includes('shoal')) servers.unshift('shoal');
  const workloadKeys = [...new Set(WORKLOADS.map((w) => w.key))];
  const keys = listEnv('BENCH_WORKLOADS', workloadKeys, workloadKeys.filter((k) => k !== 'tls'));
  const workloads = WORKLOADS.filter((w) => keys.includes(w.key));
  const tlsOn = keys.includes('tls');
  const serversOf = (w: Workload): Server[] => servers.filter((s) => (w.tls ? TLS_SERVERS : (w.afterOverwrite ?? SERVER_KEYS)).includes(s));

  const header = systemHeader();
  console.log(header);
  console.log(`size ${fmtBytes(size)} per target · ${runtime} s per run (+1 s ramp) · median of ${reps} · shoal --cache-size ${cache}`);
  console.log(`servers: ${servers.join(', ')} · workloads: ${keys.join(', ')}\n`);

  const tmp = tempDir('shoal-nbd-bench-');
  const fill = join(tmp, 'fill.img');
  process.stdout.write('generating random fill data… ');
  await randomFile(fill, size);
  console.log('done');

  // --- TLS: one set of certificates for both servers; fio reads the client's from libnbd's default
  // directory as user nobody (its uri may not name local files).
  const tlsHome = join(tmp, 'tls-home');
  let tlsArgs: string[] = [];
  let serverTlsDir = '';
  let clientTlsDir = '';
  if (tlsOn) {
    const tlsKeys = await makeTlsKeys();
    onCleanup(async () => tlsKeys.dispose());
    serverTlsDir = tlsKeys.serverDir;
    clientTlsDir = tlsKeys.clientDir;
    const pki = join(tlsHome, '.pki', 'libnbd');
    mkdirSync(pki, { recursive: true });
    for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) {
      copyFileSync(join(tlsKeys.clientDir, f), join(pki, f));
      chmodSync(join(pki, f), 0o644);
    }
    chmodSync(tmp, 0o711);
    for (const d of [join(tlsHome, '.pki'), pki]) chmodSync(d, 0o755);
    chmodSync(tlsHome, 0o777);
    tlsArgs = ['--tls', 'on', '--tls-certificates', serverTlsDir];
  }

  // --- targets
  const uris = {} as Record<Server, string>;
  const pids = {} as Record<Server, number>;
  const fillRates: string[] = [];
  const shoal: Shoal = await startShoal(cache, tlsArgs);
  await shoal.createVolume('bench', size);
  uris.shoal = shoal.unixUri('bench');
  pids.shoal = shoal.pid;
  for (const s of servers) {
    if (s === 'nbdkit-memory' || s === 'nbdkit-file') {
      let args = [String(size)];
      if (s === 'nbdkit-file') {
        const img = join(tmp, 'nbdkit-file.img');
        await runOk('truncate', ['-s', String(size), img]);
        args = [img];
      }
      const srv = await startNbdkit(tmp, s === 'nbdkit-memory' ? 'memory' : 'file', args);
      uris[s] = srv.uri;
      pids[s] = srv.proc.pid!;
    } else if (s === 'qemu-nbd-raw' || s === 'qcow2-overlay') {
      let img: string;
      let format: string;
      if (s === 'qemu-nbd-raw') {
        img = join(tmp, 'qemu-nbd.img');
        format = 'raw';
        await runOk('truncate', ['-s', String(size), img]);
      } else {
        // The base holds the fill; the overlay starts empty, so every first write to a 64 KiB cluster
        // copies it up from the base, as a fresh VM's overlay does.
        const base = join(tmp, 'base.raw');
        copyFileSync(fill, base);
        img = join(tmp, 'overlay.qcow2');
        format = 'qcow2';
        await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', base, '-F', 'raw', img]);
      }
      // -t: keep serving after a client leaves; -e 8: nbdcopy may open several connections.
      const sock = join(tmp, `${s}.sock`);
      const srv = await startNbdServer('qemu-nbd', ['-t', '-e', '8', '-f', format, '--cache=writeback', '-k', sock, img], sock);
      uris[s] = srv.uri;
      pids[s] = srv.proc.pid!;
    }
  }
  const tlsUris = {} as Record<Server, string>;
  const tlsPids = {} as Record<Server, number>;
  if (tlsOn) {
    // nbdkit serves either a Unix socket or TCP: a second instance, TLS only, for the TLS rows.
    const port = await freePort();
    const memTls = await startNbdServer('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(port), '--tls=require', `--tls-certificates=${serverTlsDir}`, 'memory', String(size)], { port });
    tlsUris.shoal = `nbds://127.0.0.1:${shoal.nbdPort}/bench`;
    tlsUris['nbdkit-memory'] = `nbds://127.0.0.1:${port}/`;
    tlsPids.shoal = shoal.pid;
    tlsPids['nbdkit-memory'] = memTls.proc.pid!;
    await runOk('nbdcopy', [fill, `${tlsUris['nbdkit-memory']}?tls-certificates=${clientTlsDir}`]);
  }

  for (const s of servers) {
    if (s === 'qcow2-overlay') {
      fillRates.push(`${SERVER_NAME[s]}: the fill is its raw base`);
      continue;
    }
    const t0 = performance.now();
    await runOk('nbdcopy', [fill, uris[s]]);
    const sec = (performance.now() - t0) / 1000;
    fillRates.push(`${SERVER_NAME[s]} ${fix(size / sec / (1 << 20))}`);
    console.log(`filled ${SERVER_NAME[s]}: ${fix(sec, 1)} s`);
  }
  // The fill's new fingerprints sit in the dedup log until writes pause; the daemon then moves them
  // into the on-disk index in the background (paced commits). Measure the I/O paths once that is done,
  // and say how long it took (it is a one-time cost of new data, not of reads).
  const indexSec = await waitDedupIndexed(async () => (await shoal.api('GET', '/v1/stats')).body, 300_000);
  // Reads are measured on a fully cached target (the hit path): each is read in full twice first.
  // Twice, because Shoal's cache resists scans: a chunk read once waits in its small probation
  // queue, and a second read moves it to the main queue.
  for (const s of servers) for (let i = 0; i < 2; i++) await runOk('nbdcopy', [uris[s], 'null:']);
  const st = await shoal.api('GET', '/v1/stats');
  console.log(`shoal after fill: physicalBytes ${fmtBytes(st.body.physicalBytes)}, dedupRatio ${st.body.dedupRatio}, cache ${fmtBytes(st.body.cache?.bytes ?? 0)}; its dedup log was indexed ${fix(indexSec, 1)} s after the fill\n`);

  // A settled target: the kernel has written back every dirty page (qemu-nbd's and nbdkit file's
  // writeback caches, Shoal's files), and Shoal has indexed its dedup log and reclaimed what
  // overwrites released. Returns the seconds Shoal needed.
  const settleSec: Record<string, number[]> = {};
  const settle = async (w: Workload, s: Server) => {
    const t0 = performance.now();
    await runOk('sync', []);
    if (s !== 'shoal') return;
    for (;;) {
      const b = (await shoal.api('GET', '/v1/stats')).body;
      if (b.dedupLogEntries === 0 && b.reclaimPendingNodes === 0) break;
      if (performance.now() - t0 > 600_000) throw new Error('shoal did not settle within 10 min');
      await sleep(200);
    }
    (settleSec[w.name] ??= []).push((performance.now() - t0) / 1000);
  };

  // --- runs
  const results = new Map<string, Run[]>(); // `${workload}|${server}`
  const runOne = async (w: Workload, s: Server): Promise<Run> => {
    const uri = w.tls ? tlsUris[s] : uris[s];
    const pid = w.tls ? tlsPids[s] : pids[s];
    if (!w.read) await settle(w, s);
    if (w.afterOverwrite) {
      const ow = await fio({ uri, rw: 'randwrite', bs: '4k', iodepth: 32, size, runtimeSec: OVERWRITE_SEC }, tmp);
      console.log(`  (${SERVER_NAME[s]}: ${OVERWRITE_SEC} s of 4K random writes at ${fix(ow.iops)} IOPS)`);
    }
    // Write runs start and end with a sync: what the run put on the disk, and only that, is counted
    // (the machine's other writers are few while it runs).
    if (!w.read) await runOk('sync', []);
    const disk0 = w.read ? NaN : diskWrittenBytes(tmp);
    const cpu0 = cpuSeconds(pid);
    if (w.fua) {
      const r = await fuaWrites(uri, size, runtime, 1);
      const cpuUs = ((cpuSeconds(pid) - cpu0) / r.total) * 1e6;
      await runOk('sync', []);
      const wa = (diskWrittenBytes(tmp) - disk0) / (r.total * 4096);
      return { iops: r.iops, mibs: (r.iops * 4096) / 2 ** 20, p50: r.p50Us, p99: r.p99Us, writeP50: r.p50Us, writeP99: r.p99Us, flushP50: 0, flushP99: 0, cpuUs, wa, errors: 0 };
    }
    // Right after the overwrites, count from the first second: that is when their debt is largest.
    const ramp = w.afterOverwrite ? 0 : 1;
    const res = await fio({ uri, rw: w.rw, bs: w.bs, iodepth: w.iodepth, size, runtimeSec: runtime, rampSec: ramp, extra: w.extra, tlsHome: w.tls ? tlsHome : undefined }, tmp);
    // The CPU delta spans the ramp too: divide by the requests of the whole run (a write and its
    // FLUSH count as one request in fsync runs).
    const cpuUs = ((cpuSeconds(pid) - cpu0) / (res.iops * (runtime + ramp))) * 1e6;
    if (!w.read) await runOk('sync', []);
    const wa = w.read ? NaN : (diskWrittenBytes(tmp) - disk0) / (res.bwBytes * (runtime + ramp));
    return {
      iops: res.iops,
      mibs: res.bwBytes / 2 ** 20,
      p50: res.clatP50Us + res.syncP50Us,
      p99: res.clatP99Us + res.syncP99Us,
      writeP50: res.clatP50Us,
      writeP99: res.clatP99Us,
      flushP50: res.syncP50Us,
      flushP99: res.syncP99Us,
      cpuUs,
      wa,
      errors: res.errors,
    };
  };
  for (const w of workloads) {
    const ss = serversOf(w);
    for (let r = 0; r < reps; r++) {
      const order = ss.map((_, i) => ss[(i + r) % ss.length]!);
      for (const s of order) {
        const res = await runOne(w, s);
        const k = `${w.name}|${s}`;
        if (!results.has(k)) results.set(k, []);
        results.get(k)!.push(res);
        console.log(`  ${w.name.padEnd(30)} ${SERVER_NAME[s].padEnd(22)} run ${r + 1}/${reps}: ${fix(res.iops).padStart(7)} IOPS ${fix(res.mibs, 1).padStart(7)} MiB/s  p50 ${fix(res.p50)} µs  p99 ${fix(res.p99)} µs  server CPU ${fix(res.cpuUs, 1)} µs/req${res.errors ? `  ERRORS ${res.errors}` : ''}`);
      }
    }
  }

  // --- tables
  const med = (w: Workload, s: Server) => {
    const rs = results.get(`${w.name}|${s}`)!;
    const m = (f: (x: Run) => number) => median(rs.map(f));
    return { iops: m((x) => x.iops), mibs: m((x) => x.mibs), p50: m((x) => x.p50), p99: m((x) => x.p99), writeP50: m((x) => x.writeP50), writeP99: m((x) => x.writeP99), flushP50: m((x) => x.flushP50), flushP99: m((x) => x.flushP99), cpu: m((x) => x.cpuUs), wa: m((x) => x.wa), errors: rs.reduce((a, x) => a + x.errors, 0) };
  };
  const peers = servers.filter((s) => s !== 'shoal');
  const lines: string[] = [];
  lines.push(`| workload | server | IOPS | MiB/s | p50 lat (µs) | p99 lat (µs) | server CPU µs/req | ${peers.map((p) => `Shoal/${SERVER_NAME[p]}`).join(' | ')} |`);
  lines.push(`|---|---|---:|---:|---:|---:|---:|${peers.map(() => '---:|').join('')}`);
  for (const w of workloads) {
    const ss = serversOf(w);
    const sh = med(w, 'shoal');
    for (const s of ss) {
      const m = med(w, s);
      const ratios = peers.map((p) => (s === 'shoal' && ss.includes(p) ? `**${fix(sh.iops / med(w, p).iops, 2)}**` : ''));
      lines.push(`| ${w.name} | ${SERVER_NAME[s]}${m.errors ? ' (errors!)' : ''} | ${fix(m.iops)} | ${fix(m.mibs, 1)} | ${fix(m.p50)} | ${fix(m.p99)} | ${fix(m.cpu, 1)} | ${ratios.join(' | ')} |`);
    }
  }

  // Sync writes: latency per request, the issue's measure (lower is better, so Shoal/peer ≤ 1.2 wins).
  const syncLines: string[] = [];
  const syncWorkloads = workloads.filter((w) => w.fua || w.extra?.includes('--fsync=1'));
  if (syncWorkloads.length) {
    syncLines.push('| workload | server | write p50 | FLUSH p50 | **p50** | write p99 | FLUSH p99 | **p99** | p50 Shoal/qcow2 overlay | p99 Shoal/qcow2 overlay |');
    syncLines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|');
    for (const w of syncWorkloads) {
      const q = servers.includes('qcow2-overlay') ? med(w, 'qcow2-overlay') : null;
      for (const s of serversOf(w)) {
        const m = med(w, s);
        const ratio = (a: number, b: number | undefined) => (s === 'shoal' && b ? `**${fix(a / b, 2)}**` : '');
        const flush = (x: number) => (w.fua ? '—' : fix(x));
        syncLines.push(`| ${w.name} | ${SERVER_NAME[s]} | ${fix(m.writeP50)} | ${flush(m.flushP50)} | ${fix(m.p50)} | ${fix(m.writeP99)} | ${flush(m.flushP99)} | ${fix(m.p99)} | ${ratio(m.p50, q?.p50)} | ${ratio(m.p99, q?.p99)} |`);
      }
    }
  }

  // Write amplification: what each server wrote to its disk per byte written by the client (issue 12 point 6).
  const waLines: string[] = [];
  const writeWorkloads = workloads.filter((w) => !w.read);
  if (writeWorkloads.length) {
    const waServers = servers.filter((s) => s !== 'nbdkit-memory');
    waLines.push(`| workload | ${waServers.map((s) => SERVER_NAME[s]).join(' | ')} |`);
    waLines.push(`|---|${waServers.map(() => '---:|').join('')}`);
    for (const w of writeWorkloads) waLines.push(`| ${w.name} | ${waServers.map((s) => (serversOf(w).includes(s) ? fix(med(w, s).wa, 2) : '')).join(' | ')} |`);
  }

  // --- verdicts: the read floor against nbdkit memory, and issue 12's write goals against the qcow2 overlay.
  const checks: string[] = [];
  let belowFloor = false;
  const byKey = (k: string) => workloads.filter((w) => w.key === k);
  if (servers.includes('nbdkit-memory')) {
    for (const w of workloads.filter((x) => x.read)) {
      const r = med(w, 'shoal').iops / med(w, 'nbdkit-memory').iops;
      if (r < FLOOR) belowFloor = true;
      checks.push(`- ${w.name}: Shoal/nbdkit-memory = ${fix(r, 2)} → ${r >= TARGET ? 'OK (meets target 0.8)' : r >= FLOOR ? 'above floor 0.5, below target 0.8' : 'BELOW FLOOR 0.5'}`);
    }
  }
  if (servers.includes('qcow2-overlay')) {
    const verdict = (what: string, r: number, goal: number, atLeast: boolean) => `- ${what} = ${fix(r, 2)} (goal ${atLeast ? '≥' : '≤'} ${goal}) → ${(atLeast ? r >= goal : r <= goal) ? 'holds' : 'MISSED'}`;
    const vs = (w: Workload) => ({ sh: med(w, 'shoal'), q: med(w, 'qcow2-overlay') });
    for (const w of byKey('randwrite')) {
      const { sh, q } = vs(w);
      checks.push(verdict(`issue 12 point 2, ${w.name}: IOPS Shoal/qcow2-overlay`, sh.iops / q.iops, 1.0, true));
      checks.push(verdict(`issue 12 point 2, ${w.name}: CPU per request Shoal/qcow2-overlay`, sh.cpu / q.cpu, 1.0, false));
    }
    for (const w of byKey('seqwrite')) checks.push(verdict(`issue 12 point 3, ${w.name}: Shoal/qcow2-overlay`, vs(w).sh.iops / vs(w).q.iops, 1.0, true));
    for (const w of byKey('overwrite')) checks.push(verdict(`issue 12 point 3, ${w.name}: Shoal/qcow2-overlay`, vs(w).sh.iops / vs(w).q.iops, 0.7, true));
    for (const w of syncWorkloads) {
      const { sh, q } = vs(w);
      checks.push(verdict(`issue 12 point 4, ${w.name}: p50 latency Shoal/qcow2-overlay`, sh.p50 / q.p50, 1.2, false));
      checks.push(verdict(`issue 12 point 4, ${w.name}: p99 latency Shoal/qcow2-overlay`, sh.p99 / q.p99, 1.2, false));
    }
  }

  const settleLine = Object.entries(settleSec).map(([w, xs]) => `${w} ${fix(median(xs), 1)} s`);
  const notes = [
    `fill (nbdcopy, MiB/s): ${fillRates.join(' · ')}; Shoal's dedup log was indexed ${fix(indexSec, 1)} s after its fill`,
    ...(settleLine.length ? [`Shoal settling (dedup log indexed, reclaim drained) before each run, median: ${settleLine.join(' · ')}`] : []),
  ];
  const params = `fio ${'`'}--ioengine=nbd${'`'} over Unix sockets, 1 job, ${runtime} s time_based + 1 s ramp (none right after the overwrites), median of ${reps}; writes use refill_buffers and randrepeat=0 (fresh random data in every run); target size ${fmtBytes(size)} pre-filled with random data; shoal --cache-size ${cache}; qemu-nbd --cache=writeback; FUA writes timed one by one with libnbd's Python binding; the fsync row's latency is fio's write completion plus its FLUSH${tlsOn ? '; TLS rows: X.509 (ECDSA P-256), TLS 1.3, nbds:// over loopback TCP, against nbdkit memory --tls=require with the same certificates' : ''}`;
  const md = [`# nbd-bench`, '', header, '', params, '', ...lines, '', ...(syncLines.length ? ['Sync writes at QD1, latency per request (µs):', '', ...syncLines, ''] : []), ...(waLines.length ? ['Write amplification: bytes that reached the disk during the run and the sync after it (/proc/diskstats: data, metadata, journals, the filesystem\'s own) per byte the client wrote, median:', '', ...waLines, ''] : []), ...notes.map((n) => `${n}\n`), 'Checks:', ...checks, ''].join('\n');

  console.log('\n' + lines.join('\n'));
  if (syncLines.length) console.log('\n' + syncLines.join('\n'));
  if (waLines.length) console.log('\n' + waLines.join('\n'));
  console.log('\n' + notes.join('\n'));
  console.log('\nChecks:');
  for (const c of checks) console.log(c);
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'nbd-bench-latest.md'), md);
  console.log(`\nwritten to bench/results/nbd-bench-latest.md`);
  if (belowFloor && process.env.BENCH_STRICT === '1') process.exitCode = 1;
});
