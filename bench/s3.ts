// Issue 14, item 9: the S3 store side by side with what bounds it, in one run against the single-node
// Ceph of scripts/ceph/cluster.sh (started if needed). Every copy is nbdcopy (libnbd, several connections,
// many requests in flight) through the daemon's Unix socket:
//
//   write, local store          a random image of BENCH_S3_MIB into a volume of the local store, FLUSH at the end
//   write, S3 --s3-sync async   the same into a volume on the bucket: the FLUSH waits for the local disk;
//                               then how long until the bucket holds it all (the upload delay, the uploads).
//                               These two, and the warm reads, run ROUNDS times interleaved: medians
//   write, S3 --s3-sync flush   the same, the FLUSH waiting for the bucket
//   cold read from S3           a new daemon on an empty data directory (restored from the bucket) reads it all
//                               (ROUNDS times, each followed by the plain GETs below: medians), with the
//                               defaults (an S3 store faults the RAM cache's memory in at start, at idle
//                               priority) and with --cache-prefault off
//   plain ranged GETs           the same pack objects read with the same SDK (S3Bucket), RANGE_MIB ranges,
//                               GETS_PARALLEL at a time: what the store gives without Shoal (target ≥ 0.8×)
//   warm read, S3 / local       the same volume read again (RAM cache), against the local store's:
//                               WARM_ROUNDS each, alternating which goes first, with each daemon's CPU
//   4K random writes + FLUSH/64 flush mode: 4 KiB writes at random places, 64 in flight, a FLUSH after each 64
//   clone storm                 16 clones of a snapshot read at once by 16 nbdcopy, cold: bytes downloaded
//                               against the image's pack bytes (each pack read once: ≈ 1×)
//
// Requests per GiB written and per GiB read come from shoal_s3_requests_total (what a cloud bill counts).
//
//   BENCH_S3_MIB    image size in MiB (default 1024)
//   SHOAL_CEPH_DIR  the cluster's directory (default /tmp/shoal-ceph)
//
// Run: npm run bench:s3   (writes bench/results/s3-latest.md)
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Daemon } from '../test/helpers/daemon.js';
import { s3Daemon } from '../test/helpers/s3-daemon.js';
import { startCeph, type CephS3 } from '../test/helpers/ceph.js';
import { createS3Client } from '../server/store/s3/s3-client.js';
import { S3Bucket } from '../server/store/s3/s3-bucket.js';
import { cpuSeconds, fix, median, numEnv, onCleanup, PY, randomFile, ROOT, run, runMain, runOk, systemHeader, tempDir } from './lib.js';

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const SIZE = numEnv('BENCH_S3_MIB', 1024) * MiB;
const RANGE_MIB = 2;
const GETS_PARALLEL = 16;
const CLONES = 16;
/** Rounds of the writes and the warm reads, interleaved between stores; medians are reported. */
const ROUNDS = 3;
const WARM_ROUNDS = 7;
const CACHE = `${Math.ceil((SIZE / MiB) * 1.5)}M`;

async function started(d: Daemon): Promise<Daemon> {
  await d.start();
  onCleanup(() => d.dispose());
  return d;
}

/** Seconds nbdcopy takes from `from` to `to`. */
async function copy(from: string, to: string, extra: string[] = []): Promise<number> {
  const t = performance.now();
  await runOk('nbdcopy', [...extra, from, to], { timeoutMs: 3_600_000 });
  return (performance.now() - t) / 1000;
}

/** shoal_s3_requests_total summed over results, by op, and the bytes moved. */
async function s3Counts(d: Daemon): Promise<{ requests: number; up: number; down: number }> {
  const text = (await d.api('GET', '/metrics')).body as string;
  let requests = 0;
  let up = 0;
  let down = 0;
  for (const line of text.split('\n')) {
    const v = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith('shoal_s3_requests_total{')) requests += v;
    else if (line.startsWith('shoal_s3_uploaded_bytes_total ')) up = v;
    else if (line.startsWith('shoal_s3_downloaded_bytes_total ')) down = v;
  }
  return { requests, up, down };
}

async function waitBacklog(d: Daemon): Promise<void> {
  for (;;) {
    const text = (await d.api('GET', '/metrics')).body as string;
    if (/^shoal_s3_upload_backlog_bytes 0$/m.test(text)) return;
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** Plain ranged GETs of every pack object under `prefix`: seconds and bytes. */
async function plainGets(ceph: CephS3, bucketName: string, prefix: string): Promise<{ seconds: number; bytes: number }> {
  const { client } = await createS3Client({ endpoint: ceph.endpoint, region: ceph.region, credentials: { accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey } });
  const bucket = new S3Bucket({ client, bucket: bucketName, timeoutMs: 60_000 });
  const ranges: Array<{ key: string; offset: number; length: number }> = [];
  for await (const o of bucket.list(`${prefix}packs/`)) for (let off = 0; off < o.size; off += RANGE_MIB * MiB) ranges.push({ key: o.key, offset: off, length: Math.min(RANGE_MIB * MiB, o.size - off) });
  let next = 0;
  let bytes = 0;
  const t = performance.now();
  await Promise.all(
    Array.from({ length: GETS_PARALLEL }, async () => {
      while (next < ranges.length) {
        const r = ranges[next++];
        const got = await bucket.get(r.key, { offset: r.offset, length: r.length });
        bytes += got!.body.length;
      }
    }),
  );
  return { seconds: (performance.now() - t) / 1000, bytes };
}

/** 4 KiB writes at random places, 64 in flight then a FLUSH, for `n` writes: writes per second. */
async function randomWrites(d: Daemon, name: string, n: number): Promise<number> {
  const script = `
import nbd, os, random, time, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
blocks = h.get_size() // 4096
buf = nbd.Buffer.from_bytearray(bytearray(os.urandom(4096)))
t = time.monotonic()
for i in range(${n} // 64):
    for k in range(64):
        h.aio_pwrite(buf, random.randrange(blocks) * 4096)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    h.flush()
print(${n} / (time.monotonic() - t))
`;
  const r = await run(PY, ['-c', script, d.unixUri(name)], { timeoutMs: 1_800_000 });
  if (r.status !== 0) throw new Error(`random writes failed: ${r.stderr}`);
  return Number(r.stdout.trim());
}

runMain(async () => {
  const ceph = await startCeph();
  const image = join(tempDir('shoal-bench-s3-'), 'image.raw');
  await randomFile(image, SIZE);
  const stamp = Date.now().toString(36);
  const bucketName = `shoal-bench-${stamp}`;
  const rows: string[] = [];
  const rate = (s: number, bytes = SIZE) => (bytes / MiB / s);
  const row = (what: string, seconds: number, note = '', bytes = SIZE) => {
    rows.push(`| ${what} | ${fix(seconds, 1)} s | ${fix(rate(seconds, bytes))} MiB/s | ${note} |`);
    console.error(rows[rows.length - 1]);
  };

  // Writes: the local store and the S3 store in async mode, in ROUNDS interleaved rounds (each a fresh
  // daemon, so no round dedups against another), medians reported. The last local daemon stays for the
  // warm reads, interleaved with the S3 store's.
  const localWrites: number[] = [];
  let warmLocal: Daemon | undefined;
  const asyncWrites: number[] = [];
  const lags: number[] = [];
  for (let r = 0; r < ROUNDS; r++) {
    const local = await started(new Daemon({ args: ['--cache-size', CACHE] }));
    await local.createVolume('img', SIZE);
    localWrites.push(await copy(image, local.unixUri('img'), ['--flush']));
    if (r < ROUNDS - 1) await local.dispose();
    else warmLocal = local;

    const asyncD = await started(s3Daemon(ceph, `s3://${bucketName}/async-${r}`, { args: ['--s3-sync', 'async', '--cache-size', CACHE] }));
    await asyncD.createVolume('img', SIZE);
    asyncWrites.push(await copy(image, asyncD.unixUri('img'), ['--flush']));
    const caughtUp = performance.now();
    await waitBacklog(asyncD);
    lags.push((performance.now() - caughtUp) / 1000);
    await asyncD.dispose();
  }
  const localWrite = median(localWrites);
  const asyncWrite = median(asyncWrites);
  row('write, local store', localWrite, `median of ${secondsList(localWrites)}`);
  row(
    'write, S3 `--s3-sync async`',
    asyncWrite,
    `${fix(localWrite / asyncWrite, 2)}× local (target ≥ 0.8×), median of ${secondsList(asyncWrites)}; the bucket held it all ${fix(median(lags), 1)} s after the FLUSH (\`--s3-upload-delay\` 5 s, then the uploads)`,
  );

  // S3, flush: writes, then requests per GiB written.
  const flushD = await started(s3Daemon(ceph, `s3://${bucketName}/flush`, { args: ['--cache-size', CACHE] }));
  await flushD.createVolume('img', SIZE);
  const before = await s3Counts(flushD);
  const flushWrite = await copy(image, flushD.unixUri('img'), ['--flush']);
  const written = await s3Counts(flushD);
  row('write, S3 `--s3-sync flush`', flushWrite, `${fix(localWrite / flushWrite, 2)}× local; ${fix(((written.requests - before.requests) / SIZE) * GiB)} requests per GiB written`);
  await flushD.createVolume('rand', 256 * MiB);
  const iops = await randomWrites(flushD, 'rand', 4096);
  rows.push(`| 4K random writes, a FLUSH every 64, flush mode | | ${fix(iops)} writes/s | ${fix(iops / 64, 1)} FLUSHes/s, each waiting for the bucket |`);
  console.error(rows[rows.length - 1]);
  assertOk((await flushD.api('POST', '/v1/volumes/img/snapshots', { name: 'gold' })).status === 201, 'snapshot');
  for (let i = 0; i < CLONES; i++) assertOk((await flushD.api('POST', '/v1/volumes', { name: `c${i}`, from: { volume: 'img', snapshot: 'gold' } })).status === 201, 'clone');
  await flushD.stop();

  // Cold: a new daemon on an empty data directory reads the volume from the bucket, then the same packs
  // are read by plain GETs; ROUNDS times, interleaved (the last daemon stays for the warm reads).
  // Each round also reads with --cache-prefault off (on by default for an S3 store): on a VM that charges
  // for the first touch of a page, that cost is then on the read's path.
  const colds: number[] = [];
  const lazy: number[] = [];
  const plains: number[] = [];
  let plainBytes = 0;
  let requestsPerGiB = 0;
  let cold: Daemon | undefined;
  for (let r = 0; r < ROUNDS; r++) {
    if (cold) await cold.dispose(); // one daemon on the prefix at a time (its lease)
    const off = await started(s3Daemon(ceph, `s3://${bucketName}/flush`, { args: ['--cache-size', CACHE, '--cache-prefault', 'off'] }));
    lazy.push(await copy(off.unixUri('img'), 'null:'));
    await off.dispose();
    cold = await started(s3Daemon(ceph, `s3://${bucketName}/flush`, { args: ['--cache-size', CACHE] }));
    const c0 = await s3Counts(cold);
    colds.push(await copy(cold.unixUri('img'), 'null:'));
    const c1 = await s3Counts(cold);
    requestsPerGiB = ((c1.requests - c0.requests) / SIZE) * GiB;
    const plain = await plainGets(ceph, bucketName, 'flush/');
    plains.push(plain.seconds);
    plainBytes = plain.bytes;
  }
  const coldRead = median(colds);
  const plainSeconds = median(plains);
  const vsPlain = (s: number) => fix(rate(s) / rate(plainSeconds, plainBytes), 2);
  row('cold read from S3 (restored daemon)', coldRead, `${vsPlain(coldRead)}× plain GETs (target ≥ 0.8×), median of ${secondsList(colds)}; ${fix(requestsPerGiB)} requests per GiB read`);
  row('cold read from S3, `--cache-prefault off`', median(lazy), `${vsPlain(median(lazy))}× plain GETs, median of ${secondsList(lazy)}`);
  row(`plain ranged GETs of the same packs (${RANGE_MIB} MiB, ${GETS_PARALLEL} in flight)`, plainSeconds, `median of ${secondsList(plains)}`, plainBytes);
  if (!cold) throw new Error('no cold daemon');
  if (!warmLocal) throw new Error('no local daemon');
  await copy(cold.unixUri('img'), 'null:');
  await copy(warmLocal.unixUri('img'), 'null:');
  // Warm reads take under a second each, so single samples swing with whatever else the two cores do:
  // WARM_ROUNDS of them, the order alternating, and each daemon's CPU for its read (what a busy machine
  // would feel) beside the time.
  const warms: number[] = [];
  const localWarms: number[] = [];
  const warmCpu: number[] = [];
  const localWarmCpu: number[] = [];
  const timedRead = async (d: Daemon, times: number[], cpu: number[]) => {
    const c0 = cpuSeconds(d.proc.pid!);
    times.push(await copy(d.unixUri('img'), 'null:'));
    cpu.push(cpuSeconds(d.proc.pid!) - c0);
  };
  for (let r = 0; r < WARM_ROUNDS; r++) {
    const s3First = r % 2 === 1;
    if (s3First) await timedRead(cold, warms, warmCpu);
    await timedRead(warmLocal, localWarms, localWarmCpu);
    if (!s3First) await timedRead(cold, warms, warmCpu);
  }
  await warmLocal.dispose();
  const warm = median(warms);
  const localWarm = median(localWarms);
  row(
    'warm read, S3 (RAM cache)',
    warm,
    `${fix(localWarm / warm, 2)}× the local store's warm read (${fix(rate(localWarm))} MiB/s), medians of ${WARM_ROUNDS}: ${secondsList(warms)} and ${secondsList(localWarms)}; daemon CPU ${fix(median(warmCpu), 2)} s against ${fix(median(localWarmCpu), 2)} s`,
  );
  await cold.stop();

  // Clone storm: 16 clones read at once by a fresh daemon: each pack downloaded once.
  const storm = await started(s3Daemon(ceph, `s3://${bucketName}/flush`, { args: ['--cache-size', CACHE] }));
  const s0 = await s3Counts(storm);
  const t = performance.now();
  await Promise.all(Array.from({ length: CLONES }, (_, i) => copy(storm.unixUri(`c${i}`), 'null:', ['--connections=1'])));
  const stormSeconds = (performance.now() - t) / 1000;
  const s1 = await s3Counts(storm);
  row(`clone storm: ${CLONES} clones read at once, cold`, stormSeconds, `${fix((s1.down - s0.down) / plainBytes, 2)}× the image's pack bytes downloaded (each pack once: ≈ 1×)`, SIZE * CLONES);

  const out = [
    `# S3 store (\`npm run bench:s3\`), ${SIZE / MiB} MiB image, single-node Ceph RGW on loopback`,
    '',
    systemHeader(),
    '',
    '| what | time | rate | note |',
    '|---|---|---|---|',
    ...rows,
    '',
  ].join('\n');
  writeFileSync(join(ROOT, 'bench', 'results', 's3-latest.md'), out);
  console.log(out);
});

function secondsList(xs: number[]): string {
  return xs.map((x) => `${fix(x, 2)}`).join(', ') + ' s';
}

function assertOk(ok: boolean, what: string): void {
  if (!ok) throw new Error(`${what} failed`);
}
