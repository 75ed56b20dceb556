// A REST operation never holds back every commit (issue "structure", item 5): while a reflink or a
// dedupe of RANGEBENCH_SIZE (default 16 GiB) runs between two volumes, a QD1 client on a third
// volume writes 4 KiB and FLUSHes, over and over, while fio loads that volume too. Its FLUSH
// latency during each operation is compared with a control window of the same length (same load,
// no operation). Target: p99.9 ≤ 50 ms.
//
//   1. src: RANGEBENCH_SIZE of random data (sequential 1 MiB writes); dst: empty.
//   2. C: 256 MiB, loaded by fio 4K randread QD32, plus the FLUSH probe. (A read load: under a write load
//      a FLUSH waits for the write path's own commits, which measures the write path, not the operation.)
//   3. Windows: control; reflink src → dst at offset 0 (whole map leaves line up: shared a subtree at
//      a time); reflink src → dst one chunk further (no leaf lines up: shared chunk by chunk); dedupe of
//      dst's copy against src (reads both, compares, re-shares).
//
//   RANGEBENCH_SIZE   bytes in src (default 16G)
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChildProcess } from 'node:child_process';
import { apiOk, fio, fioUntilStopped, fix, fmtBytes, maxOf, parseSizeEnv, percentile, PY, ROOT, runMain, spawnTracked, startShoal, systemHeader, tempDir, type Shoal } from './lib.js';

const MiB = 1024 ** 2;
const K4 = 4096;

// QD1 probe: a 4 KiB write at a random offset then a FLUSH, every ~5 ms until stdin closes; then
// prints "wall_start_s flush_latency_s" per FLUSH.
const PROBE_PY = `
import nbd, os, random, sys, threading, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
blocks = h.get_size() // 4096
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
out = []
print("ready", flush=True)
while not stop.is_set():
    h.pwrite(os.urandom(4096), random.randrange(blocks) * 4096)
    t0 = time.time()
    h.flush()
    out.append((t0, time.time() - t0))
    time.sleep(0.005)
h.shutdown()
sys.stdout.write("\\n".join("%.6f %.6f" % r for r in out) + "\\n")
`;

interface Probe {
  proc: ChildProcess;
  stop(): Promise<Array<[number, number]>>;
}

async function startProbe(uri: string): Promise<Probe> {
  const proc = spawnTracked(PY, ['-c', PROBE_PY, uri]);
  let out = '';
  proc.stdout!.on('data', (d) => (out += d.toString()));
  while (!out.includes('ready')) await sleep(20);
  return {
    proc,
    async stop() {
      const done = new Promise((r) => proc.once('exit', r));
      proc.stdin!.end();
      await done;
      return out
        .split('\n')
        .filter((l) => /^\d/.test(l))
        .map((l) => l.split(' ').map(Number) as [number, number]);
    },
  };
}

/** FLUSH latencies (ms) of the probe samples that started within [from, to] (epoch ms). */
function within(samples: Array<[number, number]>, from: number, to: number): number[] {
  return samples.filter(([t]) => t * 1000 >= from && t * 1000 <= to).map(([, l]) => l * 1000);
}

runMain(async () => {
  const size = Math.round(parseSizeEnv('RANGEBENCH_SIZE', '16G') / MiB) * MiB;
  const header = systemHeader();
  console.log(header);
  const tmp = tempDir('shoal-range-bench-');
  const s: Shoal = await startShoal('1G');
  await s.createVolume('src', size);
  await s.createVolume('dst', size + MiB);
  await s.createVolume('C', 256 * MiB);
  let t0 = performance.now();
  await fio({ uri: s.unixUri('src'), rw: 'write', bs: '1M', iodepth: 8, size }, tmp);
  const fill = `fill src: ${fmtBytes(size)} in ${fix((performance.now() - t0) / 1000, 1)} s`;
  console.log(fill);
  await fio({ uri: s.unixUri('C'), rw: 'write', bs: '1M', iodepth: 8, size: 256 * MiB }, tmp);
  await apiOk(s, 'POST', '/v1/fsck'); // reclaim settled, everything committed

  const windows: Array<{ name: string; ms: number; flush: number[]; fioIops: number; note: string }> = [];
  /** Runs `op` (or sleeps `ms` for the control) under the load; records the probe's FLUSHes. */
  const measure = async (name: string, op: (() => Promise<string>) | number) => {
    const probe = await startProbe(s.unixUri('C'));
    const load = fioUntilStopped({ uri: s.unixUri('C'), rw: 'randread', bs: '4k', iodepth: 32 }, tmp);
    await sleep(2000);
    const from = Date.now();
    let note = '';
    if (typeof op === 'number') await sleep(op);
    else note = await op();
    const to = Date.now();
    const samples = await probe.stop();
    const r = await load.stop();
    const flush = within(samples, from, to);
    windows.push({ name, ms: to - from, flush, fioIops: r.iops, note });
    console.log(`${name}: ${fix((to - from) / 1000, 1)} s, ${flush.length} FLUSHes, p99.9 ${fix(percentile(flush, 99.9), 1)} ms, max ${fix(maxOf(flush), 1)} ms ${note}`);
  };
  const timed = (path: string, body: Record<string, unknown>) => async () => {
    t0 = performance.now();
    const r = await apiOk(s, 'POST', path, body);
    return `(${JSON.stringify(r)})`;
  };

  await measure('reflink, leaves aligned', timed('/v1/volumes/dst/reflink', { source: 'src', sourceOffset: 0, offset: 0, length: size }));
  await measure('reflink, one chunk off', timed('/v1/volumes/dst/reflink', { source: 'src', sourceOffset: 0, offset: K4, length: size }));
  await measure('dedupe', timed('/v1/volumes/dst/dedupe', { source: 'src', sourceOffset: 0, offset: K4, length: size }));
  const longest = Math.max(...windows.map((w) => w.ms));
  await measure('control (no operation)', Math.min(longest, 120_000));

  const lines = [
    `| window | duration s | FLUSHes | p50 ms | p99 ms | p99.9 ms | max ms | fio IOPS on C | verdict (p99.9 ≤ 50 ms) |`,
    `|---|---:|---:|---:|---:|---:|---:|---:|---|`,
    ...windows.map(
      (w) =>
        `| ${w.name} | ${fix(w.ms / 1000, 1)} | ${w.flush.length} | ${fix(percentile(w.flush, 50), 1)} | ${fix(percentile(w.flush, 99), 1)} | ${fix(percentile(w.flush, 99.9), 1)} | ${fix(maxOf(w.flush), 1)} | ${fix(w.fioIops)} | ${percentile(w.flush, 99.9) <= 50 ? 'OK' : 'MISSED'} |`,
    ),
  ];
  console.log('\n' + lines.join('\n'));
  const md = ['# range-op-flush', '', header, '', `- ${fill}; shoal --cache-size 1G; C: 256 MiB under fio 4K randread QD32 and a QD1 write+FLUSH probe`, '', ...lines, ''];
  for (const w of windows) if (w.note) md.push(`- ${w.name}: ${w.note}`);
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'range-op-flush-latest.md'), md.join('\n') + '\n');
  console.log('\nwritten to bench/results/range-op-flush-latest.md');
});
