// Issue "operations", item 2: `shoal import` of a raw image must run at ≥ 0.9× `nbdcopy` of the
// same file into the same daemon. Each run gets a fresh daemon (a second copy of the same bytes
// would be deduplicated and faster); nbdcopy and shoal alternate. Timed:
//   nbdcopy: `nbdcopy --flush --destination-is-zero FILE nbd+unix:///VOL?socket=…` into a volume
//            created beforehand (not timed);
//   shoal:   the whole `shoal import VOL FILE` command: node's start, the API calls (endpoints,
//            create, mark complete), the copy over 4 connections and the flush.
// Two images: dense (all random bytes) and sparse (random and all-zero 4 MiB runs alternating):
// both skip the zero runs (nbdcopy by its 4 KiB sparse detection, shoal by the chunk size).
//
//   IMPORTBENCH_SIZE    image size (default 1G)
//   IMPORTBENCH_ROUNDS  runs of each tool per image (default 3)
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { MAIN } from '../test/helpers/daemon.js';
import { fix, fmtBytes, median, numEnv, parseSizeEnv, randomFile, ROOT, run, runMain, runOk, startShoal, systemHeader, tempDir } from './lib.js';

const MiB = 1024 ** 2;

async function sparseFile(path: string, size: number): Promise<void> {
  const fd = openSync(path, 'w');
  const zero = Buffer.alloc(4 * MiB);
  for (let off = 0, i = 0; off < size; off += 4 * MiB, i++) writeSync(fd, i % 2 === 0 ? randomBytes(Math.min(4 * MiB, size - off)) : zero.subarray(0, Math.min(4 * MiB, size - off)));
  closeSync(fd);
}

/** Seconds one tool takes to import `file` into a fresh daemon. */
async function once(tool: 'nbdcopy' | 'shoal', file: string, size: number): Promise<number> {
  const s = await startShoal('1G');
  try {
    let t0: number;
    if (tool === 'nbdcopy') {
      await s.createVolume('img', size);
      t0 = performance.now();
      await runOk('nbdcopy', ['--flush', '--destination-is-zero', file, s.unixUri('img')]);
    } else {
      t0 = performance.now();
      const r = await run(process.execPath, [MAIN, '--api', s.apiUrl, 'import', 'img', file]);
      if (r.status !== 0) throw new Error(`shoal import failed: ${r.stderr}`);
    }
    const seconds = (performance.now() - t0) / 1000;
    const st = (await s.api('GET', '/v1/volumes/img')).body;
    if (st.incomplete) throw new Error('the volume is still marked incomplete');
    return seconds;
  } finally {
    await s.dispose();
  }
}

runMain(async () => {
  const size = parseSizeEnv('IMPORTBENCH_SIZE', '1G');
  const rounds = numEnv('IMPORTBENCH_ROUNDS', 3);
  const header = systemHeader();
  console.log(header);
  const tmp = tempDir('shoal-import-bench-');
  const images = { dense: join(tmp, 'dense.raw'), sparse: join(tmp, 'sparse.raw') };
  await randomFile(images.dense, size);
  await sparseFile(images.sparse, size);

  const md = [
    '# import-bench',
    '',
    header,
    '',
    `${fmtBytes(size)} raw images into a fresh daemon per run (Unix socket, cache 1G); nbdcopy --flush --destination-is-zero against the whole \`shoal import\` command; median of ${rounds}.`,
    '',
    '| image | tool | seconds (median) | MiB/s | runs (s) | shoal/nbdcopy | verdict (≥ 0.9) |',
    '|---|---|---:|---:|---|---:|---|',
  ];
  for (const [kind, file] of Object.entries(images)) {
    const times: Record<'nbdcopy' | 'shoal', number[]> = { nbdcopy: [], shoal: [] };
    for (let i = 0; i < rounds; i++) {
      for (const tool of ['nbdcopy', 'shoal'] as const) {
        const s = await once(tool, file, size);
        times[tool].push(s);
        console.log(`${kind} ${tool} round ${i + 1}: ${fix(s, 2)} s (${fix(size / MiB / s)} MiB/s)`);
      }
    }
    const n = median(times.nbdcopy);
    const sh = median(times.shoal);
    const ratio = n / sh; // rate ratio: shoal's MiB/s over nbdcopy's
    md.push(`| ${kind} | nbdcopy | ${fix(n, 2)} | ${fix(size / MiB / n)} | ${times.nbdcopy.map((x) => fix(x, 2)).join(', ')} | | |`);
    md.push(`| ${kind} | shoal import | ${fix(sh, 2)} | ${fix(size / MiB / sh)} | ${times.shoal.map((x) => fix(x, 2)).join(', ')} | **${fix(ratio, 2)}** | ${ratio >= 0.9 ? 'OK' : 'MISSED'} |`);
    console.log(`${kind}: nbdcopy ${fix(n, 2)} s, shoal import ${fix(sh, 2)} s → ${fix(ratio, 2)}×`);
  }
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'import-bench-latest.md'), md.join('\n') + '\n');
  console.log('\n' + md.slice(6).join('\n') + '\n\nwritten to bench/results/import-bench-latest.md');
});
