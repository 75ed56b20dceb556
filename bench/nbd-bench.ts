// `npm run bench`: fio's nbd engine against Shoal, `nbdkit memory`, `nbdkit file` and `qemu-nbd` (a raw
// file, writeback cache), all over Unix sockets, in one run so the ratios are comparable on a noisy machine;
// then the read workloads over TLS (X.509, certificates made by certtool) against Shoal and `nbdkit memory
// --tls=require` with the same certificates, over loopback TCP (TLS is for networks; over a Unix socket's
// small buffer Node's TLS layer, which writes 10 records per event-loop turn, ping-pongs with the reader
// on 1 MiB replies). Server CPU per request = the server process's user+sys time (/proc) during a run,
// divided by the requests of that run (ramp included).
//
//   BENCH_SIZE     size of each target, filled with random data first (default 1G)
//   BENCH_RUNTIME  seconds per fio run (default 10; plus a 1 s ramp that is not counted)
//   BENCH_REPEAT   runs per (workload, server); the median is reported (default 3)
//   BENCH_CACHE    Shoal --cache-size (default 1G)
//   BENCH_STRICT=1 exit 1 when a read ratio vs nbdkit memory is below the floor (0.5)
//
// For each workload the servers run back to back (order rotated each repetition) to reduce drift.
import { chmodSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTlsKeys } from '../test/helpers/tls-keys.js';
import { cpuSeconds, fio, fix, fmtBytes, freePort, median, waitDedupIndexed, numEnv, parseSizeEnv, onCleanup, randomFile, ROOT, runMain, runOk, startNbdkit, startNbdServer, startShoal, systemHeader, tempDir, type FioJob, type FioResult } from './lib.js';

const FLOOR = 0.5;
const TARGET = 0.8;

interface Workload {
  name: string;
  rw: FioJob['rw'];
  bs: string;
  iodepth: number;
  read: boolean;
}

const WORKLOADS: Workload[] = [
  { name: '4K randread QD32', rw: 'randread', bs: '4k', iodepth: 32, read: true },
  { name: '1M seqread QD8', rw: 'read', bs: '1m', iodepth: 8, read: true },
  { name: '4K randwrite QD32', rw: 'randwrite', bs: '4k', iodepth: 32, read: false },
  { name: '1M seqwrite QD8', rw: 'write', bs: '1m', iodepth: 8, read: false },
];

const SERVERS = ['shoal', 'nbdkit memory', 'nbdkit file', 'qemu-nbd'] as const;
type Server = (typeof SERVERS)[number];
/** Over TLS: the read workloads, Shoal against nbdkit memory. */
const TLS_SERVERS = ['shoal', 'nbdkit memory'] as const;
const TLS_WORKLOADS = WORKLOADS.filter((w) => w.read).map((w) => ({ ...w, name: `${w.name} TLS` }));

runMain(async () => {
  const size = parseSizeEnv('BENCH_SIZE', '1G');
  const runtime = numEnv('BENCH_RUNTIME', 10);
  const reps = Math.round(numEnv('BENCH_REPEAT', 3));
  const cache = process.env.BENCH_CACHE ?? '1G';
  const header = systemHeader();
  console.log(header);
  console.log(`size ${fmtBytes(size)} per target · ${runtime} s per run (+1 s ramp) · median of ${reps} · shoal --cache-size ${cache}\n`);

  const tmp = tempDir('shoal-nbd-bench-');
  const fill = join(tmp, 'fill.img');
  process.stdout.write('generating random fill data… ');
  await randomFile(fill, size);
  console.log('done');

  // --- TLS: one set of certificates for both servers; fio reads the client's from libnbd's default
  // directory as user nobody (its uri may not name local files).
  const keys = await makeTlsKeys();
  onCleanup(async () => keys.dispose());
  const tlsHome = join(tmp, 'tls-home');
  const pki = join(tlsHome, '.pki', 'libnbd');
  mkdirSync(pki, { recursive: true });
  for (const f of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']) {
    copyFileSync(join(keys.clientDir, f), join(pki, f));
    chmodSync(join(pki, f), 0o644);
  }
  chmodSync(tmp, 0o711);
  for (const d of [join(tlsHome, '.pki'), pki]) chmodSync(d, 0o755);
  chmodSync(tlsHome, 0o777);

  // --- targets
  const shoal = await startShoal(cache, ['--tls', 'on', '--tls-certificates', keys.serverDir]);
  await shoal.createVolume('bench', size);
  const mem = await startNbdkit(tmp, 'memory', [String(size)]);
  // nbdkit serves either a Unix socket or TCP: a second instance, TLS only, for the TLS rows.
  const memTlsPort = await freePort();
  const memTls = await startNbdServer('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(memTlsPort), '--tls=require', `--tls-certificates=${keys.serverDir}`, 'memory', String(size)], { port: memTlsPort });
  const fileImg = join(tmp, 'nbdkit-file.img');
  await runOk('truncate', ['-s', String(size), fileImg]);
  const file = await startNbdkit(tmp, 'file', [fileImg]);
  const qemuImg = join(tmp, 'qemu-nbd.img');
  await runOk('truncate', ['-s', String(size), qemuImg]);
  // -t: keep serving after a client leaves; -e 8: nbdcopy may open several connections.
  const qemuSock = join(tmp, 'qemu-nbd.sock');
  const qemu = await startNbdServer('qemu-nbd', ['-t', '-e', '8', '-f', 'raw', '--cache=writeback', '-k', qemuSock, qemuImg], qemuSock);
  const uris: Record<Server, string> = { shoal: shoal.unixUri('bench'), 'nbdkit memory': mem.uri, 'nbdkit file': file.uri, 'qemu-nbd': qemu.uri };
  const tlsUris: Record<(typeof TLS_SERVERS)[number], string> = { shoal: `nbds://127.0.0.1:${shoal.nbdPort}/bench`, 'nbdkit memory': `nbds://127.0.0.1:${memTlsPort}/` };
  const pids: Record<Server, number> = { shoal: shoal.pid, 'nbdkit memory': mem.proc.pid!, 'nbdkit file': file.proc.pid!, 'qemu-nbd': qemu.proc.pid! };
  const tlsPids: Record<(typeof TLS_SERVERS)[number], number> = { shoal: shoal.pid, 'nbdkit memory': memTls.proc.pid! };

  const fillRates: Record<string, number> = {};
  for (const s of SERVERS) {
    const t0 = performance.now();
    await runOk('nbdcopy', [fill, uris[s]]);
    const sec = (performance.now() - t0) / 1000;
    fillRates[s] = size / sec / (1 << 20);
    console.log(`filled ${s}: ${fix(sec, 1)} s (${fix(fillRates[s])} MiB/s with nbdcopy)`);
  }
  await runOk('nbdcopy', [fill, `${tlsUris['nbdkit memory']}?tls-certificates=${keys.clientDir}`]);
  // The fill's new fingerprints sit in the dedup log until writes pause; the daemon then moves them
  // into the on-disk index in the background (paced commits). Measure the I/O paths once that is done,
  // and say how long it took (it is a one-time cost of new data, not of reads).
  const indexSec = await waitDedupIndexed(async () => (await shoal.api('GET', '/v1/stats')).body, 300_000);
  // Reads are measured on a fully cached target (the hit path): each is read in full twice first.
  // Twice, because Shoal's cache resists scans: a chunk read once waits in its small probation
  // queue, and a second read moves it to the main queue.
  for (const s of SERVERS) for (let i = 0; i < 2; i++) await runOk('nbdcopy', [uris[s], 'null:']);
  const st = await shoal.api('GET', '/v1/stats');
  console.log(`shoal after fill: physicalBytes ${fmtBytes(st.body.physicalBytes)}, dedupRatio ${st.body.dedupRatio}, cache ${fmtBytes(st.body.cache?.bytes ?? 0)}; its dedup log was indexed ${fix(indexSec, 1)} s after the fill\n`);

  // --- runs
  const results = new Map<string, FioResult[]>(); // `${workload}|${server}`
  const cpuUs = new Map<string, number[]>(); // server CPU µs per request, same keys
  const measure = async (w: Workload, servers: readonly Server[], uriOf: (s: Server) => string, pidOf: (s: Server) => number, tls: boolean) => {
    for (let r = 0; r < reps; r++) {
      const order = servers.map((_, i) => servers[(i + r) % servers.length]!);
      for (const s of order) {
        const cpu0 = cpuSeconds(pidOf(s));
        const res = await fio({ uri: uriOf(s), rw: w.rw, bs: w.bs, iodepth: w.iodepth, size, runtimeSec: runtime, rampSec: 1, tlsHome: tls ? tlsHome : undefined }, tmp);
        // The CPU delta spans the ramp second too: divide by the requests of the whole run.
        const perReq = ((cpuSeconds(pidOf(s)) - cpu0) / (res.iops * (runtime + 1))) * 1e6;
        const k = `${w.name}|${s}`;
        if (!results.has(k)) results.set(k, []);
        results.get(k)!.push(res);
        if (!cpuUs.has(k)) cpuUs.set(k, []);
        cpuUs.get(k)!.push(perReq);
        console.log(`  ${w.name.padEnd(22)} ${s.padEnd(14)} run ${r + 1}/${reps}: ${fix(res.iops).padStart(7)} IOPS ${fix(res.bwBytes / 2 ** 20, 1).padStart(7)} MiB/s  p99 ${fix(res.clatP99Us)} µs  server CPU ${fix(perReq, 1)} µs/req${res.errors ? `  ERRORS ${res.errors}` : ''}`);
      }
    }
  };
  type TlsServer = (typeof TLS_SERVERS)[number];
  // Reads (plaintext, then TLS) before writes: the writes leave Shoal reclaiming overwritten chunks
  // and indexing new fingerprints in the background for a while.
  for (const w of WORKLOADS.filter((x) => x.read)) await measure(w, SERVERS, (s) => uris[s], (s) => pids[s], false);
  for (const w of TLS_WORKLOADS) await measure(w, TLS_SERVERS, (s) => tlsUris[s as TlsServer], (s) => tlsPids[s as TlsServer], true);
  for (const w of WORKLOADS.filter((x) => !x.read)) await measure(w, SERVERS, (s) => uris[s], (s) => pids[s], false);

  // --- table
  const med = (w: Workload, s: Server) => {
    const rs = results.get(`${w.name}|${s}`)!;
    const cpu = median(cpuUs.get(`${w.name}|${s}`)!);
    return { iops: median(rs.map((x) => x.iops)), mibs: median(rs.map((x) => x.bwBytes / 2 ** 20)), p99: median(rs.map((x) => x.clatP99Us)), cpu, errors: rs.reduce((a, x) => a + x.errors, 0) };
  };
  const lines: string[] = [];
  lines.push('| workload | server | IOPS | MiB/s | p99 clat (µs) | server CPU µs/req | Shoal/nbdkit-memory | Shoal/nbdkit-file | Shoal/qemu-nbd |');
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|');
  const checks: string[] = [];
  let belowFloor = false;
  for (const w of WORKLOADS) {
    const sh = med(w, 'shoal');
    const mm = med(w, 'nbdkit memory');
    const ff = med(w, 'nbdkit file');
    const rMem = sh.iops / mm.iops;
    const rFile = sh.iops / ff.iops;
    const rQemu = sh.iops / med(w, 'qemu-nbd').iops;
    for (const s of SERVERS) {
      const m = med(w, s);
      const ratios = s === 'shoal' ? [`**${fix(rMem, 2)}**`, `**${fix(rFile, 2)}**`, `**${fix(rQemu, 2)}**`] : ['', '', ''];
      lines.push(`| ${w.name} | ${s}${m.errors ? ' (errors!)' : ''} | ${fix(m.iops)} | ${fix(m.mibs, 1)} | ${fix(m.p99)} | ${fix(m.cpu, 1)} | ${ratios.join(' | ')} |`);
    }
    if (w.read) checks.push(check(w, rMem));
  }
  function check(w: Workload, rMem: number): string {
    const verdict = rMem >= TARGET ? 'OK (meets target 0.8)' : rMem >= FLOOR ? 'above floor 0.5, below target 0.8' : 'BELOW FLOOR 0.5';
    if (rMem < FLOOR) belowFloor = true;
    return `- ${w.name}: Shoal/nbdkit-memory = ${fix(rMem, 2)} → ${verdict}`;
  }
  for (const w of TLS_WORKLOADS) {
    const rMem = med(w, 'shoal').iops / med(w, 'nbdkit memory').iops;
    for (const s of TLS_SERVERS) {
      const m = med(w, s);
      lines.push(`| ${w.name} | ${s}${m.errors ? ' (errors!)' : ''} | ${fix(m.iops)} | ${fix(m.mibs, 1)} | ${fix(m.p99)} | ${fix(m.cpu, 1)} | ${s === 'shoal' ? `**${fix(rMem, 2)}**` : ''} | | |`);
    }
    checks.push(check(w, rMem));
  }
  const fillLine = `fill (nbdcopy, MiB/s): ${SERVERS.map((s) => `${s} ${fix(fillRates[s])}`).join(' · ')}`;
  const params = `fio ${'`'}--ioengine=nbd${'`'} over Unix sockets, 1 job, ${runtime} s time_based + 1 s ramp, median of ${reps}; writes use refill_buffers; target size ${fmtBytes(size)} pre-filled with random data; shoal --cache-size ${cache}; TLS rows: X.509 (ECDSA P-256), TLS 1.3, nbds:// over loopback TCP, against nbdkit memory --tls=require with the same certificates`;
  const md = [`# nbd-bench`, '', header, '', params, '', ...lines, '', fillLine, '', 'Read ratio checks vs nbdkit memory (floor 0.5, target 0.8):', ...checks, ''].join('\n');

  console.log('\n' + lines.join('\n'));
  console.log('\n' + fillLine);
  console.log('\nRead ratio checks vs nbdkit memory (floor 0.5, target 0.8):');
  for (const c of checks) console.log(c);
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'nbd-bench-latest.md'), md);
  console.log(`\nwritten to bench/results/nbd-bench-latest.md`);
  if (belowFloor && process.env.BENCH_STRICT === '1') process.exitCode = 1;
});
