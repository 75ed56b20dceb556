// `npm run bench:connections`: does a crowd of idle clients, plus one that stalls in the middle of a
// request, slow down a busy one? fio (nbd engine, 4K randread QD32) against a cached volume, with
// and without 1,000 idle connections (handshake done, then silent, as attached block devices are)
// and one client that sent a WRITE header and half its payload, then nothing. Runs alternate
// (quiet, crowded, quiet, crowded…) so the machine's drift hits both alike. Goal: crowded ≥ 0.9×.
//
//   BENCH_SIZE     volume size, filled with random data and read twice first (default 512M)
//   BENCH_RUNTIME  seconds per fio run (default 10, plus a 1 s ramp)
//   BENCH_REPEAT   runs of each kind; medians are compared (default 3)
//   BENCH_IDLE     idle connections (default 1000)
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Raw, CMD } from '../test/nbd/raw.js';
import { cpuSeconds, fio, fix, fmtBytes, median, numEnv, parseSizeEnv, randomFile, ROOT, runMain, runOk, startShoal, systemHeader, tempDir, waitDedupIndexed, type FioResult } from './lib.js';

const GOAL = 0.9;

function rssBytes(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;
}

runMain(async () => {
  const size = parseSizeEnv('BENCH_SIZE', '512M');
  const runtime = numEnv('BENCH_RUNTIME', 10);
  const reps = Math.round(numEnv('BENCH_REPEAT', 3));
  const idle = Math.round(numEnv('BENCH_IDLE', 1000));
  const header = systemHeader();
  console.log(header);

  const tmp = tempDir('shoal-conn-bench-');
  const fill = join(tmp, 'fill.img');
  await randomFile(fill, size);
  const shoal = await startShoal('1G');
  await shoal.createVolume('bench', size);
  await shoal.createVolume('other', 64 * 1024 * 1024);
  const uri = shoal.unixUri('bench');
  await runOk('nbdcopy', [fill, uri]);
  await waitDedupIndexed(async () => (await shoal.api('GET', '/v1/stats')).body, 300_000);
  for (let i = 0; i < 2; i++) await runOk('nbdcopy', [uri, 'null:']);

  const crowd: Raw[] = [];
  let crowdSetupSec = 0;
  const rssQuiet = rssBytes(shoal.pid);
  async function gather(): Promise<void> {
    const t0 = performance.now();
    for (let i = 0; i < idle; i++) {
      const c = await Raw.connectUnix(shoal.nbdSocket);
      await c.handshake(i % 2 ? 'bench' : 'other');
      crowd.push(c);
    }
    // The staller: a 64 KiB WRITE header and 32 KiB of its payload, then silence.
    const s = await Raw.connectUnix(shoal.nbdSocket);
    await s.handshake('other');
    const h = Buffer.alloc(28);
    h.writeUInt32BE(0x25609513, 0);
    h.writeUInt16BE(CMD.WRITE, 6);
    h.writeUInt32BE(65536, 24);
    s.write(Buffer.concat([h, Buffer.alloc(32768, 0x5a)]));
    crowd.push(s);
    crowdSetupSec = (performance.now() - t0) / 1000;
  }
  function disperse(): void {
    for (const c of crowd.splice(0)) c.destroy();
  }
  const connections = async () => Number(/^shoal_nbd_connections (\d+)$/m.exec((await shoal.api('GET', '/metrics')).body)![1]);

  const runs: Record<'quiet' | 'crowded', { res: FioResult; cpuPerReqUs: number }[]> = { quiet: [], crowded: [] };
  let rssCrowded = 0;
  let crowdSeen = 0;
  for (let r = 0; r < reps; r++) {
    for (const kind of ['quiet', 'crowded'] as const) {
      if (kind === 'crowded') {
        await gather();
        crowdSeen = await connections();
        rssCrowded = Math.max(rssCrowded, rssBytes(shoal.pid));
      }
      const cpu0 = cpuSeconds(shoal.pid);
      const res = await fio({ uri, rw: 'randread', bs: '4k', iodepth: 32, size, runtimeSec: runtime, rampSec: 1 }, tmp);
      const cpuPerReqUs = ((cpuSeconds(shoal.pid) - cpu0) / res.ios) * 1e6;
      runs[kind].push({ res, cpuPerReqUs });
      console.log(`  run ${r + 1}/${reps} ${kind.padEnd(7)}: ${fix(res.iops).padStart(7)} IOPS  p99 ${fix(res.clatP99Us)} µs  max ${fix(res.clatMaxUs)} µs  daemon CPU ${fix(cpuPerReqUs, 1)} µs/request${kind === 'crowded' ? `  (${crowdSeen} connections open)` : ''}`);
      if (kind === 'crowded') disperse();
    }
  }

  const m = (k: 'quiet' | 'crowded') => ({
    iops: median(runs[k].map((x) => x.res.iops)),
    p99: median(runs[k].map((x) => x.res.clatP99Us)),
    max: Math.max(...runs[k].map((x) => x.res.clatMaxUs)),
    cpu: median(runs[k].map((x) => x.cpuPerReqUs)),
    each: runs[k].map((x) => fix(x.res.iops)).join(', '),
  });
  const q = m('quiet');
  const c = m('crowded');
  const ratio = c.iops / q.iops;
  const lines = [
    '| fio client (4K randread QD32) | IOPS (median) | each run | p99 clat µs | max clat µs | daemon CPU µs/request |',
    '|---|---:|---|---:|---:|---:|',
    `| alone | ${fix(q.iops)} | ${q.each} | ${fix(q.p99)} | ${fix(q.max)} | ${fix(q.cpu, 1)} |`,
    `| beside ${idle} idle connections + 1 stalled mid-write | ${fix(c.iops)} | ${c.each} | ${fix(c.p99)} | ${fix(c.max)} | ${fix(c.cpu, 1)} |`,
  ];
  const verdict = `crowded/alone = ${fix(ratio, 2)} → ${ratio >= GOAL ? 'OK' : 'BELOW'} (goal ≥ ${GOAL})`;
  const notes = `${crowdSeen} connections open during the crowded runs (opened in ${fix(crowdSetupSec, 1)} s); daemon RSS ${fmtBytes(rssQuiet)} alone, ${fmtBytes(rssCrowded)} with the crowd`;
  const md = ['# idle-connections', '', header, '', `volume ${fmtBytes(size)}, cached; fio --ioengine=nbd over the Unix socket, ${runtime} s + 1 s ramp, median of ${reps}`, '', ...lines, '', `- ${verdict}`, `- ${notes}`, ''].join('\n');
  console.log('\n' + lines.join('\n') + `\n\n- ${verdict}\n- ${notes}`);
  const outDir = join(ROOT, 'bench', 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'idle-connections-latest.md'), md);
  console.log('\nwritten to bench/results/idle-connections-latest.md');
});
