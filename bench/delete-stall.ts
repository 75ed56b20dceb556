// Issue "sharing", item 4, third point: deleting a big volume (and its snapshot) must not block reads on
// another volume for longer than 50 ms. The same measurement as the last part of bench/snapshot-cost.ts,
// without the rest, so it can be run alone and at other sizes.
//
//   1. volume B: DELBENCH_SIZE (default 8G) written in scattered 4 KiB writes (fio randwrite, random map,
//      fresh random bytes: nothing deduplicable; its chunk slots lie in random order along the map), then a
//      snapshot of B and a few more writes, so the delete releases a volume and a snapshot sharing its map.
//   2. volume C (256 MiB of random data) read by fio (4K randread QD32) and a QD1 probe; DELETE B; wait until
//      the space is reclaimed and 3 s more. Target: max read latency in that window ≤ 50 ms.
//
//   DELBENCH_SIZE      bytes written to B (default 8G)
//   DELBENCH_CACHE     Shoal --cache-size (default 1G)
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { apiOk, fio, fix, fmtBytes, parseSizeEnv, randomFile, ROOT, runMain, runOk, startShoal, systemHeader, tempDir } from './lib.js';
import { measureDeleteWindow, waitStable } from './delete-window.js';

const MiB = 1024 ** 2;
const K4 = 4096;

runMain(async () => {
  const size = Math.round(parseSizeEnv('DELBENCH_SIZE', '8G') / K4) * K4;
  const cache = process.env.DELBENCH_CACHE ?? '1G';
  const header = systemHeader();
  console.log(header);
  const tmp = tempDir('shoal-delete-bench-');
  const s = await startShoal(cache);
  const md = ['# delete-stall', '', header, '', `B: ${fmtBytes(size)} written in scattered 4 KiB writes, then a snapshot; C: 256 MiB read during the delete; shoal --cache-size ${cache}`, ''];

  await s.createVolume('B', size);
  const t0 = performance.now();
  const r = await fio({ uri: s.unixUri('B'), rw: 'randwrite', bs: '4k', iodepth: 32, size, extra: ['--randrepeat=0', `--number_ios=${size / K4}`] }, tmp);
  const fill = `fill B: ${fmtBytes(r.ios * K4)} in ${fix((performance.now() - t0) / 1000, 1)} s (${fix(r.iops)} IOPS)`;
  console.log(fill);
  md.push(`- ${fill}`);
  await apiOk(s, 'POST', '/v1/volumes/B/snapshots', { name: 'snap' });
  await fio({ uri: s.unixUri('B'), rw: 'randwrite', bs: '4k', iodepth: 8, size, extra: ['--number_ios=256'] }, tmp);

  await s.createVolume('C', 256 * MiB);
  const img = join(tmp, 'c.img');
  await randomFile(img, 256 * MiB);
  await runOk('nbdcopy', [img, s.unixUri('C')]);
  await runOk('nbdcopy', [s.unixUri('C'), 'null:']); // C in the cache
  await waitStable(s, 60_000);
  await sleep(2000);
  const st = await apiOk(s, 'GET', '/v1/stats');
  md.push(`- before the delete: physicalBytes ${fmtBytes(st.physicalBytes)}, chunks ${st.chunks}`, '');

  const del = await measureDeleteWindow(s, tmp, 'C', 256 * MiB, 'B', size);
  console.log('\n' + del.lines.join('\n'));
  md.push('## Delete of B under read load on C (fio 4K randread QD32 + a QD1 probe every ~1 ms)', '', ...del.lines, '');
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'delete-stall-latest.md'), md.join('\n'));
  console.log('\nwritten to bench/results/delete-stall-latest.md');
});
