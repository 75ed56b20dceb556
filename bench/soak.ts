// `npm run bench:soak` (issue "writes", item 5): sustained mixed load with nothing to hide behind.
// fio 70/30 random read/write, 4 KiB, QD32, on four volumes at once for SOAK_MINUTES (default 10):
// two clones of one image, one whose writes are half duplicates (fio --dedupe_percentage=50), and a
// plain one; each working set SOAK_WS (default 256 MiB) and the cache SOAK_CACHE (default 2 GiB), so
// every read could be a hit and any slowdown is the write path's own debt (reclaim of overwritten
// chunks, indexing of new fingerprints). Every 10 s: each volume's IOPS (fio's iops logs), the dedup
// log and reclaim backlogs, the daemon's RSS and the longest event-loop stall (the daemon's own
// gauge, reset at each scrape: a stall reads as itself plus at most the gauge's tick, 2 ms; 10 ms
// before 2026-12-07). Then: how long the backlogs take to drain, fsck, and the verdicts:
// last minute ≥ 0.8 × first minute; no stall over 50 ms; RSS ≤ cache + a stated bound.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { apiOk, fix, fmtBytes, numEnv, parseSizeEnv, randomFile, ROOT, run, runMain, runOk, startShoal, systemHeader, tempDir } from './lib.js';
import { SWEEP_MIN } from '../server/dedup/dedup-indexer.js';

const MiB = 2 ** 20;
/** What the daemon may hold beyond its cache budget: the stated bound RSS is checked against. */
const RSS_OVERHEAD = 768 * MiB;

interface Sample {
  t: number; // seconds since the load started
  logEntries: number;
  reclaimNodes: number;
  staleEntries: number; // fingerprint index entries freed chunks left, not swept yet
  rss: number;
  lagMaxMs: number;
  physical: number;
}

function rssOf(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** fio's averaged iops log (time ms, value, direction 0 read / 1 write, ...), summed per window index. */
function iopsPerWindow(file: string, windowMs: number): number[] {
  const out: number[] = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const f = line.split(',').map((x) => Number(x.trim()));
    if (f.length < 3 || !Number.isFinite(f[0])) continue;
    const w = Math.max(0, Math.round(f[0]! / windowMs) - 1);
    out[w] = (out[w] ?? 0) + f[1]!;
  }
  return out.map((x) => x ?? 0);
}

runMain(async () => {
  const minutes = numEnv('SOAK_MINUTES', 10);
  const ws = parseSizeEnv('SOAK_WS', '256M');
  const cache = process.env.SOAK_CACHE ?? '2G';
  const header = systemHeader();
  console.log(header);
  const tmp = tempDir('shoal-soak-');
  const s = await startShoal(cache);

  // The volumes: two clones of one image, a half-duplicate writer, a plain one.
  const img = join(tmp, 'img');
  await randomFile(img, ws);
  await s.createVolume('image', ws);
  await runOk('nbdcopy', [img, s.unixUri('image')]);
  await apiOk(s, 'POST', '/v1/volumes/image/snapshots', { name: 'gold' });
  for (const c of ['clone1', 'clone2']) await apiOk(s, 'POST', '/v1/volumes', { name: c, from: { volume: 'image', snapshot: 'gold' } });
  for (const v of ['dupes', 'plain']) {
    await s.createVolume(v, ws);
    const f = join(tmp, `${v}.img`);
    await randomFile(f, ws);
    await runOk('nbdcopy', [f, s.unixUri(v)]);
  }
  const vols = ['clone1', 'clone2', 'dupes', 'plain'];
  await apiOk(s, 'POST', '/v1/fsck'); // settled: reclaim drained, everything committed
  for (let i = 0; i < 2; i++) for (const v of vols) await runOk('nbdcopy', [s.unixUri(v), 'null:']);
  console.log(`4 volumes of ${fmtBytes(ws)} ready and cached; load for ${minutes} min`);

  // The load: one fio process, one job per volume, iops averaged over 10 s windows.
  const windowMs = 10_000;
  const logDir = join(tmp, 'logs');
  mkdirSync(logDir);
  const args = ['--ioengine=nbd', '--rw=randrw', '--rwmixread=70', '--bs=4k', '--iodepth=32', `--size=${ws}`, '--time_based', `--runtime=${Math.round(minutes * 60)}`, `--log_avg_msec=${windowMs}`, '--output-format=json', `--output=${join(tmp, 'fio.json')}`];
  for (const v of vols) {
    args.push(`--name=${v}`, `--uri=${s.unixUri(v)}`, `--write_iops_log=${join(logDir, v)}`);
    args.push(v === 'dupes' ? '--dedupe_percentage=50' : '--refill_buffers');
  }
  const t0 = Date.now();
  const load = run('fio', args, { timeoutMs: (minutes * 60 + 120) * 1000 });
  const samples: Sample[] = [];
  await apiOk(s, 'GET', '/metrics'); // resets the event-loop gauge
  while (Date.now() - t0 < minutes * 60_000) {
    await sleep(windowMs);
    const st = await apiOk(s, 'GET', '/v1/stats');
    const metrics = (await s.api('GET', '/metrics')).body as string;
    const lag = Number(/^shoal_nodejs_eventloop_lag_max_seconds ([\d.e+-]+)$/m.exec(metrics)?.[1] ?? NaN);
    const smp: Sample = { t: (Date.now() - t0) / 1000, logEntries: st.dedupLogEntries, reclaimNodes: st.reclaimPendingNodes, staleEntries: st.dedupIndexing.staleEntries, rss: rssOf(s.pid), lagMaxMs: lag * 1000, physical: st.physicalBytes };
    samples.push(smp);
    console.log(`  ${fix(smp.t).padStart(4)} s: dedup log ${smp.logEntries}, reclaim ${smp.reclaimNodes} nodes, stale index entries ${smp.staleEntries}, RSS ${fmtBytes(smp.rss)}, longest loop stall ${fix(smp.lagMaxMs)} ms, longest commit stretch so far ${fix(st.metadataCommits?.longestStretchMs ?? NaN)} ms`);
  }
  const r = await load;
  if (r.status !== 0) throw new Error(`fio failed:\n${r.stderr}`);
  const tLoadEnd = Date.now();

  // Drain: how long until the backlogs are gone once the load stops (stale index entries: below the
  // sweep's threshold, which waits for more).
  let drainSec = NaN;
  let staleLeft = NaN;
  for (;;) {
    const st = await apiOk(s, 'GET', '/v1/stats');
    if (st.dedupLogEntries === 0 && st.reclaimPendingNodes === 0 && st.dedupIndexing.staleEntries < SWEEP_MIN) {
      staleLeft = st.dedupIndexing.staleEntries;
      drainSec = (Date.now() - tLoadEnd) / 1000;
      break;
    }
    if (Date.now() - tLoadEnd > 30 * 60_000) break;
    await sleep(1000);
  }
  const fsck = await apiOk(s, 'POST', '/v1/fsck');

  // IOPS per volume and window, from fio's logs (reads and writes).
  const perVol = new Map<string, number[]>();
  for (const v of vols) {
    const files = readdirSync(logDir).filter((f) => f.startsWith(`${v}_iops`));
    const sums: number[] = [];
    for (const f of files) iopsPerWindow(join(logDir, f), windowMs).forEach((x, i) => (sums[i] = (sums[i] ?? 0) + x));
    perVol.set(v, sums);
  }
  const windows = Math.min(...[...perVol.values()].map((x) => x.length));
  const total = (i: number) => vols.reduce((a, v) => a + (perVol.get(v)![i] ?? 0), 0);
  const minuteOf = (m: number) => {
    const ws6 = Array.from({ length: 6 }, (_, k) => m * 6 + k).filter((i) => i < windows);
    return ws6.reduce((a, i) => a + total(i), 0) / Math.max(1, ws6.length);
  };
  const lastMinute = Math.floor((windows - 1) / 6);
  const first = minuteOf(0);
  const last = minuteOf(lastMinute);
  const maxLag = Math.max(...samples.map((x) => x.lagMaxMs));
  const maxRss = Math.max(...samples.map((x) => x.rss));
  const cacheBytes = parseSizeEnv('SOAK_CACHE', '2G');
  const maxLog = Math.max(...samples.map((x) => x.logEntries));
  const maxReclaim = Math.max(...samples.map((x) => x.reclaimNodes));
  const maxStale = Math.max(...samples.map((x) => x.staleEntries));

  const lines = [
    '| minute | IOPS, all 4 volumes | clone1 | clone2 | dupes | plain | dedup log entries (end) | reclaim backlog nodes (end) | RSS (end) | longest loop stall |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|',
  ];
  for (let m = 0; m <= lastMinute; m++) {
    const idx = Array.from({ length: 6 }, (_, k) => m * 6 + k).filter((i) => i < windows);
    const per = vols.map((v) => fix(idx.reduce((a, i) => a + (perVol.get(v)![i] ?? 0), 0) / Math.max(1, idx.length)));
    const sm = samples.filter((x) => x.t > m * 60 && x.t <= (m + 1) * 60 + 1);
    const end = sm[sm.length - 1];
    lines.push(`| ${m + 1} | ${fix(minuteOf(m))} | ${per.join(' | ')} | ${end?.logEntries ?? '—'} | ${end?.reclaimNodes ?? '—'} | ${end ? fmtBytes(end.rss) : '—'} | ${fix(Math.max(0, ...sm.map((x) => x.lagMaxMs)))} ms |`);
  }
  const verdicts = [
    `- last minute / first minute: **${fix(last / first, 2)}** (${fix(last)} / ${fix(first)} IOPS; target ≥ 0.8): ${last >= 0.8 * first ? 'PASS' : 'MISSED'}`,
    `- longest event-loop stall: **${fix(maxLag)} ms** (target ≤ 50 ms): ${maxLag <= 50 ? 'PASS' : 'MISSED'}`,
    `- RSS at most ${fmtBytes(maxRss)}: cache ${fmtBytes(cacheBytes)} ${maxRss >= cacheBytes ? `+ ${fmtBytes(maxRss - cacheBytes)}` : '(the cache was not full)'} (stated bound: cache + ${fmtBytes(RSS_OVERHEAD)}): ${maxRss <= cacheBytes + RSS_OVERHEAD ? 'PASS' : 'MISSED'}`,
    `- backlogs during the load: dedup log at most ${maxLog} entries, reclaim at most ${maxReclaim} nodes, stale index entries at most ${maxStale}; drained ${Number.isFinite(drainSec) ? `${fix(drainSec, 1)} s after the load stopped (${staleLeft} stale index entries left, under the sweep's threshold of ${SWEEP_MIN})` : 'NOT within 30 min after the load stopped'}`,
    `- fsck after the drain: ${fsck.ok ? 'clean' : `${fsck.errors.length} problem(s): ${fsck.errors.slice(0, 3).join('; ')}`} (physicalBytes ${fmtBytes(samples[samples.length - 1]?.physical ?? 0)} during the last window)`,
  ];
  console.log('\n' + lines.join('\n') + '\n\n' + verdicts.join('\n'));
  const md = ['# soak', '', header, '', `fio 70/30 randrw 4K QD32 on 4 volumes (2 clones of one image, one with 50% duplicate writes, one plain), ${fmtBytes(ws)} each, ${minutes} min; shoal --cache-size ${cache}`, '', ...lines, '', ...verdicts, ''];
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'soak-latest.md'), md.join('\n'));
  console.log('\nwritten to bench/results/soak-latest.md');
});
