// Issue 15 (changed-block tracking): listing what changed since a snapshot must cost what changed,
// not the volume's size. Two volumes get the same history: BENCH_BASE of scattered 4 KiB writes,
// snapshot s1, BENCH_CHANGED more scattered 4 KiB writes (fresh random bytes, each block once),
// snapshot s2. One volume is BENCH_SMALL (16 GiB), the other BENCH_LARGE (1 TiB). Then, alternating
// between them, BENCH_ITERS times each:
//   - REST: every page of GET /v1/volumes/V/changes?since=s1&until=s2 (65536 extents a page);
//   - NBD:  nbdinfo --map=qemu:dirty-bitmap:s1 on V@s2 (every block-status reply over the export).
// Target: the large volume's time within 2x of the small one's: on the first REST listing (nothing
// of either map read before; a small third volume is listed first, so that neither pays for the
// JIT), and for each way as the median of the later runs (the map nodes a diff read are kept
// compactly, so a later listing of the same maps reads them from memory).
//
//   BENCH_SMALL    the small volume's size (default 16G)
//   BENCH_LARGE    the large volume's size (default 1T)
//   BENCH_BASE     written before s1 (default 1G)
//   BENCH_CHANGED  written between s1 and s2 (default 1G)
//   BENCH_ITERS    timed listings per volume and way (default 6)
//   BENCH_CACHE    Shoal --cache-size (default 1G)
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { apiOk, fio, fix, fmtBytes, median, numEnv, parseSizeEnv, ROOT, runMain, runOk, startShoal, systemHeader, tempDir, waitDedupIndexed, type Shoal } from './lib.js';

const K4 = 4096;
const PAGE = 65536;

interface Listing {
  ms: number;
  extents: number;
  bytes: number;
}

/** Every page of the change list, timed from the first request to the last reply parsed. */
async function listRest(s: Shoal, volume: string): Promise<Listing> {
  const t0 = performance.now();
  let extents = 0;
  let bytes = 0;
  let offset: number | undefined = 0;
  while (offset !== undefined) {
    const page: { extents: Array<{ offset: number; length: number }>; next?: number } = await apiOk(s, 'GET', `/v1/volumes/${volume}/changes?since=s1&until=s2&offset=${offset}&limit=${PAGE}`);
    extents += page.extents.length;
    for (const e of page.extents) bytes += e.length;
    offset = page.next;
  }
  return { ms: performance.now() - t0, extents, bytes };
}

/** nbdinfo --map of the dirty bitmap over the whole snapshot export (its --totals would hide the extents). */
async function listNbd(s: Shoal, volume: string): Promise<Listing> {
  const t0 = performance.now();
  const out = await runOk('nbdinfo', ['--map=qemu:dirty-bitmap:s1', s.unixUri(`${volume}@s2`)], { timeoutMs: 600_000 });
  const ms = performance.now() - t0;
  let extents = 0;
  let bytes = 0;
  for (const line of out.split('\n')) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 3 && f[2] === '1') {
      extents++;
      bytes += Number(f[1]);
    }
  }
  return { ms, extents, bytes };
}

runMain(async () => {
  const small = parseSizeEnv('BENCH_SMALL', '16G');
  const large = parseSizeEnv('BENCH_LARGE', '1T');
  const base = parseSizeEnv('BENCH_BASE', '1G');
  const changed = parseSizeEnv('BENCH_CHANGED', '1G');
  const iters = Math.max(2, Math.round(numEnv('BENCH_ITERS', 6)));
  const cache = process.env.BENCH_CACHE ?? '1G';
  const header = systemHeader();
  console.log(header);
  const setup = `both volumes: ${fmtBytes(base)} written in scattered 4 KiB writes, snapshot s1, ${fmtBytes(changed)} more in scattered 4 KiB writes (fresh random bytes, each block once), snapshot s2; S is ${fmtBytes(small)}, L is ${fmtBytes(large)}; ${iters} listings of each, alternating; shoal --cache-size ${cache}`;
  console.log(setup + '\n');
  const md: string[] = ['# changes-cost', '', header, '', setup, ''];

  const tmp = tempDir('shoal-changes-bench-');
  const s = await startShoal(cache);
  const vols = [
    ['S', small],
    ['L', large],
  ] as const;
  const warmup = [['W', Math.min(small, 1024 ** 3), Math.min(base, 16 * 1024 ** 2), Math.min(changed, 16 * 1024 ** 2)]] as const;
  for (const [name, size, baseBytes, changedBytes] of [...warmup, ...vols.map(([n, sz]) => [n, sz, base, changed] as const)]) {
    await s.createVolume(name, size);
    for (const [phase, bytes, snap] of [
      ['base', baseBytes, 's1'],
      ['changes', changedBytes, 's2'],
    ] as const) {
      const t0 = performance.now();
      const r = await fio({ uri: s.unixUri(name), rw: 'randwrite', bs: '4k', iodepth: 32, size, extra: ['--randrepeat=0', `--number_ios=${bytes / K4}`] }, tmp);
      if (r.ios * K4 !== bytes) throw new Error(`fio wrote ${r.ios} of ${bytes / K4} blocks to ${name}`);
      await apiOk(s, 'POST', `/v1/volumes/${name}/snapshots`, { name: snap });
      const line = `${name}: ${phase} ${fmtBytes(bytes)} in ${fix((performance.now() - t0) / 1000, 1)} s (${fix(r.iops)} IOPS), then snapshot ${snap}`;
      console.log(line);
      md.push(`- ${line}`);
    }
  }
  // The fills' fingerprints are indexed in the background once writes pause: not during the timing.
  const idx = await waitDedupIndexed(() => apiOk(s, 'GET', '/v1/stats'));
  console.log(`dedup log indexed after ${fix(idx, 1)} s`);
  // The fills left gigabytes of dirty page cache: written back now, not during the first listings.
  await runOk('sync', []);
  await sleep(2000);
  md.push('');

  const ways = [
    ['REST', listRest],
    ['NBD', listNbd],
  ] as const;
  for (const [, list] of ways) for (let i = 0; i < 2; i++) await list(s, 'W'); // the JIT, not the maps
  const results: Record<string, Listing[]> = {};
  for (let i = 0; i < iters; i++) {
    for (const [way, list] of ways) {
      for (const [name] of i % 2 ? [...vols].reverse() : vols) {
        const r = await list(s, name);
        (results[`${way}|${name}`] ??= []).push(r);
        console.log(`  ${way.padEnd(4)} ${name} run ${i + 1}/${iters}: ${fix(r.ms, 1)} ms, ${r.extents} extents, ${fmtBytes(r.bytes)}`);
        if (r.bytes !== changed) throw new Error(`${way} on ${name} listed ${r.bytes} changed bytes, ${changed} were written`);
      }
    }
  }

  const lines = [
    `| way | S (${fmtBytes(small)}) first ms | L (${fmtBytes(large)}) first ms | L/S first | S median ms (later runs) | L median ms | L/S median | S / L extents | verdict (L/S ≤ 2) |`,
    '|---|---:|---:|---:|---:|---:|---:|---:|---|',
  ];
  let allOk = true;
  for (const [way] of ways) {
    const a = results[`${way}|S`];
    const b = results[`${way}|L`];
    const ma = median(a.slice(1).map((r) => r.ms));
    const mb = median(b.slice(1).map((r) => r.ms));
    // Only the first way's first runs read the maps for the first time.
    const cold = way === ways[0][0];
    const first = b[0].ms / a[0].ms;
    const ok = mb / ma <= 2 && (!cold || first <= 2);
    allOk &&= ok;
    const label = way === 'REST' ? `REST: GET …/changes?since=s1&until=s2, pages of ${PAGE}` : 'NBD: nbdinfo --map=qemu:dirty-bitmap:s1 V@s2';
    const firsts = cold ? `${fix(a[0].ms, 1)} | ${fix(b[0].ms, 1)} | **${fix(first, 2)}**` : '— | — | —';
    lines.push(`| ${label} | ${firsts} | ${fix(ma, 1)} | ${fix(mb, 1)} | **${fix(mb / ma, 2)}** | ${a[0].extents} / ${b[0].extents} | ${ok ? 'OK' : 'MISSED'} |`);
  }
  console.log('\n' + lines.join('\n') + '\n');
  md.push(`## Listing the changes since s1 (${fmtBytes(changed)} changed)`, '', ...lines, '');
  const st = await apiOk(s, 'GET', '/v1/stats');
  md.push(`- after the runs: logicalBytes ${fmtBytes(st.logicalBytes)}, physicalBytes ${fmtBytes(st.physicalBytes)}, chunks ${st.chunks}`, '');

  const dir = join(ROOT, 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'changes-cost-latest.md'), md.join('\n'));
  console.log(`results: bench/results/changes-cost-latest.md${allOk ? '' : ' (target MISSED)'}`);
});
