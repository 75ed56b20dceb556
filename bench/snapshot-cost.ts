// Issue "O(1) snapshots" (DESIGN.md invariant 4): snapshot/clone cost must not grow with the amount of data
// written, reads must not slow down with clone depth, and deleting a big volume must not stall I/O elsewhere.
//
//   1. volume A: 64 MiB written in scattered 4 KiB writes; volume B: 8 GiB (× BENCH_SCALE) written in
//      scattered 4 KiB writes (fio randwrite, random map so every block once, fresh random bytes each write:
//      nothing zero, nothing deduplicable). Time POST snapshot, POST clone (of the volume) and POST clone (of
//      the snapshot) ~20 times each on A and on B, alternating, with a few fresh writes before each round so
//      every snapshot has to share a changed map again. Targets: median B/A ≤ 2 and B median < 10 ms.
//   2. a chain of 64 clones (clone of a clone…, each with a few private 4 KiB writes); fio 4K randread QD32 on
//      the depth-1 and the depth-64 clone, interleaved. Target: depth-64 ≥ 0.9 × depth-1.
//   3. while fio (4K randread QD32) and a QD1 probe read volume C, DELETE volume B (and with it its snapshot)
//      and wait until the space is reclaimed. Target: max read latency during the window ≤ 50 ms.
//
//   BENCH_SCALE       fraction of 8 GiB written to B (default 1)
//   BENCH_ITERS       timed rounds per operation (default 20)
//   BENCH_RUNTIME     seconds per fio read run in the clone-depth test (default 10)
//   BENCH_DEPTH       clone chain length (default 64)
//   BENCH_CACHE       Shoal --cache-size (default 1G)
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { apiOk, fio, fix, fmtBytes, median, numEnv, percentile, waitDedupIndexed, PY, randomFile, ROOT, runMain, runOk, startShoal, systemHeader, tempDir, type Shoal } from './lib.js';
import { measureDeleteWindow, waitStable } from './delete-window.js';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const K4 = 4096;

// Writes N random 4 KiB blocks of fresh random bytes at random aligned offsets, then flushes.
const DIRTY_PY = `
import nbd, os, random, sys
for uri in sys.argv[2:]:
    h = nbd.NBD()
    h.connect_uri(uri)
    blocks = h.get_size() // 4096
    for _ in range(int(sys.argv[1])):
        h.pwrite(os.urandom(4096), random.randrange(blocks) * 4096)
    h.flush()
    h.shutdown()
`;


async function dirty(uris: string[], n = 4): Promise<void> {
  if (uris.length) await runOk(PY, ['-c', DIRTY_PY, String(n), ...uris]);
}

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const t0 = performance.now();
  const r = await fn();
  return [performance.now() - t0, r];
}

async function stats(s: Shoal): Promise<any> {
  return apiOk(s, 'GET', '/v1/stats');
}

runMain(async () => {
  const scale = numEnv('BENCH_SCALE', 1);
  const iters = Math.round(numEnv('BENCH_ITERS', 20));
  const runtime = numEnv('BENCH_RUNTIME', 10);
  const depth = Math.round(numEnv('BENCH_DEPTH', 64));
  const cache = process.env.BENCH_CACHE ?? '1G';
  const bTarget = Math.max(128 * MiB, Math.round((8 * GiB * scale) / K4) * K4);
  const maxFill = numEnv('BENCH_FILL_MAX_SEC', 600);
  let bBytes = bTarget; // what B really got: the fill stops early after BENCH_FILL_MAX_SEC
  const aBytes = Math.min(64 * MiB, bBytes);
  const volSize = bTarget; // A and B have the same virtual size; only the amount written differs
  const header = systemHeader();
  const t00 = performance.now();
  console.log(header);
  console.log(`A: ${fmtBytes(aBytes)} written · B: ${fmtBytes(bTarget)} to write (BENCH_SCALE=${scale}, fill capped at ${maxFill} s) · both ${fmtBytes(volSize)} virtual · ${iters} rounds · shoal --cache-size ${cache}\n`);

  const tmp = tempDir('shoal-snap-bench-');
  const s = await startShoal(cache);
  const md: string[] = [`# snapshot-cost`, '', header, '', `A: ${fmtBytes(aBytes)} written, B: ${fmtBytes(bTarget)} to write in scattered 4 KiB writes (BENCH_SCALE=${scale}, fill capped at BENCH_FILL_MAX_SEC=${maxFill} s); both volumes ${fmtBytes(volSize)}; shoal --cache-size ${cache}`, ''];

  // ------------------------------------------------------------------ fill A and B
  await s.createVolume('A', volSize);
  await s.createVolume('B', volSize);
  const fillFlags = ['--randrepeat=0']; // random map (default): each block written exactly once
  for (const [name, bytes] of [['A', aBytes], ['B', bTarget]] as const) {
    const t0 = performance.now();
    const cap = name === 'B' ? [`--runtime=${maxFill}`] : [];
    const r = await fio({ uri: s.unixUri(name), rw: 'randwrite', bs: '4k', iodepth: 32, size: volSize, extra: [...fillFlags, `--number_ios=${bytes / K4}`, ...cap] }, tmp);
    const sec = (performance.now() - t0) / 1000;
    console.log(`filled ${name}: ${fmtBytes(r.ios * K4)} in ${fix(sec, 1)} s (${fix(r.iops)} IOPS, p99 ${fix(r.clatP99Us)} µs, max ${fix(r.clatMaxUs / 1000, 1)} ms)`);
    md.push(`- fill ${name}: ${fmtBytes(r.ios * K4)} in ${fix(sec, 1)} s, ${fix(r.iops)} IOPS 4K randwrite QD32, p99 ${fix(r.clatP99Us)} µs, max ${fix(r.clatMaxUs / 1000, 1)} ms`);
    if (name === 'B' && r.ios * K4 < bytes) {
      bBytes = r.ios * K4;
      const l = `!! B's fill hit BENCH_FILL_MAX_SEC=${maxFill}: B holds ${fmtBytes(bBytes)} (${fix((100 * bBytes) / bytes, 0)} % of ${fmtBytes(bytes)})`;
      console.log(l);
      md.push(`- ${l}`);
    } else if (r.ios * K4 < bytes) throw new Error(`fio wrote only ${r.ios} of ${bytes / K4} blocks to ${name}`);
  }
  {
    const st = await stats(s);
    const line = `after fill: logicalBytes ${fmtBytes(st.logicalBytes)}, physicalBytes ${fmtBytes(st.physicalBytes)}, chunks ${st.chunks}, dedupHits ${st.dedupHits}`;
    console.log(line);
    md.push(`- ${line}`, '');
    if (st.physicalBytes < 0.95 * (aBytes + bBytes)) console.log(`!! physicalBytes is well below what was written: data got deduplicated or lost?`);
  }

  // ------------------------------------------------------------------ snapshot / clone timing
  type Op = 'snapshot' | 'clone (of volume)' | 'clone (of snapshot)';
  const OPS: Op[] = ['snapshot', 'clone (of volume)', 'clone (of snapshot)'];
  const times: Record<string, number[]> = {};
  const rec = (op: Op, v: string, ms: number) => (times[`${op}|${v}`] ??= []).push(ms);
  await stats(s); // warm the HTTP connection
  for (let i = 0; i < iters; i++) {
    if (i > 0) await dirty([s.unixUri('A'), s.unixUri('B')]); // round 0 runs right after the fill
    const vols = i % 2 ? ['B', 'A'] : ['A', 'B'];
    for (const v of vols) {
      const [ms] = await timed(() => apiOk(s, 'POST', `/v1/volumes/${v}/snapshots`, { name: `s${i}` }));
      rec('snapshot', v, ms);
    }
    for (const v of vols) {
      const [ms] = await timed(() => apiOk(s, 'POST', '/v1/volumes', { name: `${v}-vc${i}`, from: { volume: v } }));
      rec('clone (of volume)', v, ms);
    }
    for (const v of vols) {
      const [ms] = await timed(() => apiOk(s, 'POST', '/v1/volumes', { name: `${v}-sc${i}`, from: { volume: v, snapshot: `s${i}` } }));
      rec('clone (of snapshot)', v, ms);
    }
  }
  const snapLines = [
    `| operation | A (${fmtBytes(aBytes)} written) median ms | B (${fmtBytes(bBytes)} written) median ms | B/A | A p90 / max ms | B p90 / max ms | first call (right after fill) A / B ms | verdict (B/A ≤ 2, B < 10 ms) |`,
    '|---|---:|---:|---:|---:|---:|---:|---|',
  ];
  for (const op of OPS) {
    const a = times[`${op}|A`];
    const b = times[`${op}|B`];
    const ma = median(a);
    const mb = median(b);
    const ok = mb / ma <= 2 && mb < 10;
    snapLines.push(`| ${op} | ${fix(ma, 2)} | ${fix(mb, 2)} | **${fix(mb / ma, 2)}** | ${fix(percentile(a, 90), 2)} / ${fix(Math.max(...a), 2)} | ${fix(percentile(b, 90), 2)} / ${fix(Math.max(...b), 2)} | ${fix(a[0], 2)} / ${fix(b[0], 2)} | ${ok ? 'OK' : 'MISSED'} |`);
  }
  console.log('\n' + snapLines.join('\n') + '\n');
  md.push('## Snapshot and clone cost (wall time of the REST call)', '', ...snapLines, '');

  // ------------------------------------------------------------------ clone depth
  const depthSize = 256 * MiB;
  await s.createVolume('base', depthSize);
  const fill = join(tmp, 'base.img');
  await randomFile(fill, depthSize);
  await runOk('nbdcopy', [fill, s.unixUri('base')]);
  const chainT: number[] = [];
  let prev = 'base';
  for (let d = 1; d <= depth; d++) {
    const name = `d${d}`;
    const [ms] = await timed(() => apiOk(s, 'POST', '/v1/volumes', { name, from: { volume: prev } }));
    chainT.push(ms);
    await dirty([s.unixUri(name)], 4);
    prev = name;
  }
  console.log(`built a chain of ${depth} clones of a ${fmtBytes(depthSize)} random volume (clone call median ${fix(median(chainT), 2)} ms, first ${fix(chainT[0], 2)} ms, last ${fix(chainT[depth - 1], 2)} ms)`);
  // B's 8 GiB of new fingerprints (and the chain's) are indexed in the background once writes pause;
  // measured meanwhile, d1 and d64 would share the machine with that work in varying measure.
  const chainIndexSec = await waitDedupIndexed(() => apiOk(s, 'GET', '/v1/stats'));
  console.log(`dedup log indexed ${fix(chainIndexSec, 1)} s after the chain was built`);
  // Both are measured on the hit path: B's fill pushed the chain's chunks out of the cache, and the first
  // fio run would otherwise warm it for the others (a d1 run at a third of the rate of the rest). Each is
  // read in full twice, since a chunk read once waits in the cache's probation queue.
  const deep = `d${depth}`;
  for (const v of ['d1', deep]) for (let i = 0; i < 2; i++) await runOk('nbdcopy', [s.unixUri(v), 'null:']);
  const reads: Record<string, number[]> = { d1: [], [deep]: [] };
  const p99s: Record<string, number[]> = { d1: [], [deep]: [] };
  const depthReps = 3;
  for (let r = 0; r < depthReps; r++) {
    for (const v of r % 2 ? [deep, 'd1'] : ['d1', deep]) {
      const res = await fio({ uri: s.unixUri(v), rw: 'randread', bs: '4k', iodepth: 32, size: depthSize, runtimeSec: runtime, rampSec: 1 }, tmp);
      reads[v].push(res.iops);
      p99s[v].push(res.clatP99Us);
      console.log(`  4K randread QD32 on ${v.padEnd(4)} run ${r + 1}/${depthReps}: ${fix(res.iops)} IOPS, p99 ${fix(res.clatP99Us)} µs`);
    }
  }
  const r1 = median(reads.d1);
  const rd = median(reads[deep]);
  const depthLines = [
    '| clone | depth | 4K randread QD32 IOPS (median) | p99 clat µs | ratio vs depth 1 | verdict (≥ 0.9) |',
    '|---|---:|---:|---:|---:|---|',
    `| d1 | 1 | ${fix(r1)} | ${fix(median(p99s.d1))} | 1.00 | |`,
    `| ${deep} | ${depth} | ${fix(rd)} | ${fix(median(p99s[deep]))} | **${fix(rd / r1, 2)}** | ${rd / r1 >= 0.9 ? 'OK' : 'MISSED'} |`,
  ];
  console.log('\n' + depthLines.join('\n') + '\n');
  md.push(`## Clone depth (chain of ${depth} clones of a ${fmtBytes(depthSize)} random volume, ${runtime} s runs, median of ${depthReps})`, '', ...depthLines, '', `clone-creation time along the chain: median ${fix(median(chainT), 2)} ms, depth 1 ${fix(chainT[0], 2)} ms, depth ${depth} ${fix(chainT[depth - 1], 2)} ms`, '');

  // ------------------------------------------------------------------ delete B under read load on C
  // Everything that shares B's chunks goes first (its clones, all snapshots but the last), so that deleting
  // B and its remaining snapshot is what frees its data.
  const pre: number[] = [];
  for (let i = 0; i < iters; i++) {
    for (const n of [`B-vc${i}`, `B-sc${i}`]) pre.push((await timed(() => apiOk(s, 'DELETE', `/v1/volumes/${n}`)))[0]);
  }
  for (let i = 0; i < iters - 1; i++) pre.push((await timed(() => apiOk(s, 'DELETE', `/v1/volumes/B/snapshots/s${i}`)))[0]);
  console.log(`pre-delete: removed B's ${2 * iters} clones and ${iters - 1} of its snapshots (DELETE median ${fix(median(pre), 2)} ms, max ${fix(Math.max(...pre), 2)} ms)`);
  await waitStable(s, 60_000); // let GC of those settle before the measured window

  await s.createVolume('C', 256 * MiB);
  await runOk('nbdcopy', [fill, s.unixUri('C')]);
  await sleep(2000);
  const del = await measureDeleteWindow(s, tmp, 'C', 256 * MiB, 'B', bBytes);
  console.log('\n' + del.lines.join('\n') + '\n');
  md.push('## Delete of B under read load on C (fio 4K randread QD32 + a QD1 probe every ~1 ms)', '', ...del.lines, '');
  md.push(`total run time ${fix((performance.now() - t00) / 1000, 0)} s`, '');

  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'snapshot-cost-latest.md'), md.join('\n'));
  console.log(`\ntotal ${fix((performance.now() - t00) / 1000, 0)} s; written to bench/results/snapshot-cost-latest.md`);
});
