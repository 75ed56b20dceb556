// The shared chunk cache, end to end (issue: shared cache, items 3-6): a real daemon, real NBD
// clients (nbdcopy, libnbd), figures read back from GET /v1/stats and GET /metrics.
//   a) a scan bigger than the cache does not push out a working set being read repeatedly;
//   b) concurrent misses on one chunk cause one store read (the others are coalesced);
//   c) NBD_CMD_CACHE loads a range; reading it afterwards only hits;
//   d) sequential streams are read ahead;
//   e) never stale: chunk ids freed and reused never serve old bytes, through several volumes;
//   f) the metrics exist, and the sharing factor counts the volumes reading each cached chunk.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { join } from 'node:path';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, nbdPython, runOk, run } from '../helpers/tools.js';
import { expectFsckClean, MiB } from '../helpers/volume-io.js';

const CS = 4096;
// Big temporary files go on a real disk, not a small /tmp.
const tmp = mkdtempSync(join(existsSync('/var/tmp') ? '/var/tmp' : '/tmp', 'shoal-cache-e2e-'));
const daemons: Daemon[] = [];
after(async () => {
  for (const d of daemons) await d.dispose().catch(() => {});
  rmSync(tmp, { recursive: true, force: true });
});

async function daemon(args: string[] = ['--cache-size', '64M']): Promise<Daemon> {
  const d = await startDaemon({ args });
  daemons.push(d);
  return d;
}

interface CacheStats {
  capacityBytes: number;
  bytes: number;
  entries: number;
  hits: number;
  misses: number;
  evictions: number;
  coalesced: number;
  sharingFactor: number;
  servedBytes: number;
  readahead: number;
  storeReads: number;
  storeReadBytes: number;
  pinned: number;
}

async function cacheStats(d: Daemon): Promise<CacheStats> {
  const r = await d.api('GET', '/v1/stats');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.cache;
}

/** Chunks the volume's reads loaded from the store (its cache misses, readahead included). */
async function volumeLoads(d: Daemon, volume: string): Promise<number> {
  const r = await d.api('GET', `/v1/volumes/${volume}`);
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.equal(typeof r.body.cacheLoads, 'number', JSON.stringify(r.body));
  return r.body.cacheLoads;
}

function delta(a: CacheStats, b: CacheStats): Record<keyof CacheStats, number> {
  const out: any = {};
  for (const k of Object.keys(b) as (keyof CacheStats)[]) if (typeof b[k] === 'number') out[k] = (b[k] as number) - ((a[k] as number) ?? 0);
  return out;
}

/** Runs a libnbd Python script; its last stdout line is JSON. */
async function py(script: string, timeoutMs = 120_000): Promise<any> {
  const r = await nbdPython(script, { timeoutMs });
  if (r.status !== 0) throw new Error(`python failed (${r.status}):\n${r.stderr}\n${r.stdout}`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]);
}

/** Fills a volume with `mib` MiB of random bytes (a file written with dd, copied in by nbdcopy). */
async function fillRandom(d: Daemon, volume: string, mib: number): Promise<void> {
  const file = join(tmp, `${volume}.raw`);
  await runOk('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${mib}`, 'status=none', 'iflag=fullblock']);
  await runOk('nbdcopy', ['--flush', file, d.unixUri(volume)], { timeoutMs: 120_000 });
  rmSync(file, { force: true });
}

/** Reads [0, size) of the export in `req`-byte requests, in order, on one connection. */
async function readSequential(d: Daemon, exportName: string, size: number, req: number): Promise<void> {
  await py(`
import nbd, json
h = nbd.NBD()
h.connect_uri(${JSON.stringify(d.unixUri(exportName))})
for off in range(0, ${size}, ${req}):
    h.pread(min(${req}, ${size} - off), off)
h.shutdown()
print(json.dumps({"ok": True}))
`);
}

// ------------------------------------------------------------------ a) scan resistance

test('a scan larger than the cache does not push out a working set read repeatedly', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdcopy', 'nbdsh')) return;
  const d = await daemon(['--cache-size', '64M']);
  const WS = 16 * MiB;
  const SCAN = 256 * MiB;
  const frames = (64 * MiB) / CS; // 16384
  const scanChunks = SCAN / CS; // 65536, all distinct (random bytes)
  await d.createVolume('ws', WS);
  await d.createVolume('scan', SCAN);
  await fillRandom(d, 'ws', WS / MiB);
  await fillRandom(d, 'scan', SCAN / MiB);
  // Writes went through the cache: restart so it holds nothing of the scan volume.
  await d.restart();
  // Warm the working set: read it twice.
  await readSequential(d, 'ws', WS, 256 * 1024);
  await readSequential(d, 'ws', WS, 256 * 1024);
  const warm = await cacheStats(d);
  assert.ok(warm.entries >= WS / CS, `the working set should be cached after warming: ${JSON.stringify(warm)}`);

  // Client A reads the working set in passes, always in the same order. Between two passes it
  // waits until the scan has loaded at least one whole cache's worth of chunks (misses +
  // readahead grew by >= frames). So between two reads of any working-set chunk, more than
  // `frames` other chunks entered the cache: an LRU would have evicted the whole working set
  // before every pass after the first (its hit ratio over the scan would be about
  // 1 / passes <= 1/3), while a scan-resistant cache keeps it (> 90%).
  const stop = join(tmp, 'scan-done');
  const ready = join(tmp, 'ws-first-pass-done');
  rmSync(stop, { force: true });
  rmSync(ready, { force: true });
  const clientA = py(
    `
import nbd, json, os, time, urllib.request
def loads():
    s = json.load(urllib.request.urlopen(${JSON.stringify(d.apiUrl + '/v1/stats')}))['cache']
    return s['misses'] + s['readahead']
h = nbd.NBD()
h.connect_uri(${JSON.stringify(d.unixUri('ws'))})
REQ = 256 * 1024
accesses = 0
passes = 0
waits = []
while True:
    for off in range(0, ${WS}, REQ):
        h.pread(REQ, off)
        accesses += REQ // ${CS}
    passes += 1
    if passes == 1:
        open(${JSON.stringify(ready)}, "w").close()  # the scan starts now
    base = loads()
    while not os.path.exists(${JSON.stringify(stop)}) and loads() - base < ${frames}:
        time.sleep(0.002)
    if os.path.exists(${JSON.stringify(stop)}):
        break
    waits.append(loads() - base)
h.shutdown()
print(json.dumps({"accesses": accesses, "passes": passes, "waits": waits}))
`,
    110_000,
  );
  // Client B: one sequential read of the whole scan volume (a backup), with nbdcopy, started once
  // client A has made its first pass.
  const before = await cacheStats(d);
  for (let i = 0; !existsSync(ready); i++) {
    assert.ok(i < 3000, 'client A did not finish its first pass within 30 s');
    await sleep(10);
  }
  const wsLoads0 = await volumeLoads(d, 'ws'); // after A's first pass: the scan starts now
  const t0 = Date.now();
  const scan = await run('nbdcopy', [d.unixUri('scan'), 'null:'], { timeoutMs: 100_000 });
  const scanMs = Date.now() - t0;
  writeFileSync(stop, '');
  const a = await clientA;
  const during = await cacheStats(d);
  assert.equal(scan.status, 0, scan.stderr);
  const dd = delta(before, during);
  // Every chunk the working set's reads (or their readahead) had to load from the store is a
  // working-set miss: counted per volume by the daemon, exactly.
  const wsMissesDuring = (await volumeLoads(d, 'ws')) - wsLoads0;
  const accessesDuring = a.accesses - WS / CS; // the passes after the first
  const hitRatioDuring = 1 - wsMissesDuring / accessesDuring;
  t.diagnostic(`scan ${scanMs} ms; client A ${a.passes} passes, ${a.accesses} chunk reads, waits ${JSON.stringify(a.waits)}; Δ ${JSON.stringify(dd)}`);
  t.diagnostic(`working-set hit ratio during the scan ${hitRatioDuring.toFixed(4)} (${wsMissesDuring} loads for ${accessesDuring} reads)`);
  // The scan really was bigger than the cache and went through it.
  assert.ok(dd.evictions >= scanChunks - frames, `the scan should have evicted: ${JSON.stringify(dd)}`);
  assert.ok(during.bytes <= during.capacityBytes, `cache bytes ${during.bytes} > capacity ${during.capacityBytes}`);
  // The scan's own loads are charged to the scan volume: the per-volume count is real.
  assert.ok((await volumeLoads(d, 'scan')) >= scanChunks, 'every scanned chunk was loaded from the store once');
  // The pacing made this a test an LRU fails: at least two passes came after a full cache's worth of scan.
  assert.ok(a.waits.length >= 2, `client A should have waited out >= 2 cache-fulls of scan: ${JSON.stringify(a)}`);
  assert.ok(hitRatioDuring > 0.9, `working-set hit ratio during the scan ${hitRatioDuring} (${wsMissesDuring} loads for ${accessesDuring} reads)`);

  // After the scan: one more pass over the working set, alone.
  const l1 = await volumeLoads(d, 'ws');
  await readSequential(d, 'ws', WS, 256 * 1024);
  const wsMissesAfter = (await volumeLoads(d, 'ws')) - l1;
  const hitRatioAfter = 1 - wsMissesAfter / (WS / CS);
  t.diagnostic(`working-set hit ratio after the scan ${hitRatioAfter.toFixed(4)} (${wsMissesAfter} loads)`);
  assert.ok(hitRatioAfter > 0.9, `working-set hit ratio after the scan ${hitRatioAfter} (misses ${wsMissesAfter} of ${WS / CS})`);
  await expectFsckClean(d);
});

// ------------------------------------------------------------------ b, c, d: one daemon, restarted cold

/** Random bytes in a file, copied into the volume; returns the file (kept for comparisons). */
async function fillRandomKeep(d: Daemon, volume: string, mib: number): Promise<string> {
  const file = join(tmp, `${volume}.raw`);
  await runOk('dd', ['if=/dev/urandom', `of=${file}`, 'bs=1M', `count=${mib}`, 'status=none', 'iflag=fullblock']);
  await runOk('nbdcopy', ['--flush', file, d.unixUri(volume)], { timeoutMs: 120_000 });
  return file;
}

test('concurrent misses on one chunk cause one store read; the others wait for it', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'nbdcopy')) return;
  const d = await daemon(['--cache-size', '64M']);
  await d.createVolume('co', MiB);
  const file = await fillRandomKeep(d, 'co', 1);
  await d.restart(); // cold cache
  const N = 16;
  const PER = 2;
  const s0 = await cacheStats(d);
  // 16 connections, 2 reads of chunk 0 in flight on each, all sent before any reply is awaited.
  const out = await py(`
import nbd, json, hashlib
hs = []
for i in range(${N}):
    h = nbd.NBD()
    h.connect_uri(${JSON.stringify(d.unixUri('co'))})
    hs.append(h)
bufs = []
for h in hs:
    for k in range(${PER}):
        b = nbd.Buffer(${CS})
        h.aio_pread(b, 0)
        bufs.append(b)
for h in hs:
    while h.aio_in_flight() > 0:
        h.poll(-1)
digests = sorted(set(hashlib.sha256(b.to_bytearray()).hexdigest() for b in bufs))
for h in hs:
    h.shutdown()
print(json.dumps({"digests": digests}))
`);
  const s1 = await cacheStats(d);
  const dd = delta(s0, s1);
  t.diagnostic(`${N * PER} concurrent reads of one cold chunk: Δ ${JSON.stringify(dd)}`);
  const want = createHash('sha256').update(readFileSync(file).subarray(0, CS)).digest('hex');
  assert.deepEqual(out.digests, [want], 'every reader gets the chunk’s bytes');
  assert.equal(dd.misses, 1, `one miss: ${JSON.stringify(dd)}`);
  assert.equal(dd.storeReads, 1, `one store read: ${JSON.stringify(dd)}`);
  assert.equal(dd.storeReadBytes, CS, `one chunk read from the store: ${JSON.stringify(dd)}`);
  assert.ok(dd.coalesced >= 1, `the other misses were coalesced: ${JSON.stringify(dd)}`);
  // Each read is one lookup, counted once: a hit, a miss, or a miss that joined a load in flight.
  // (Counting the copy after a load as a hit too would inflate the hit ratio and mark every cold
  // chunk as re-used, which defeats scan resistance.)
  assert.equal(dd.hits + dd.misses + dd.coalesced, N * PER, `each of the ${N * PER} reads counted once: ${JSON.stringify(dd)}`);
  const metrics = (await d.api('GET', '/metrics')).body as string;
  const m = /^shoal_cache_coalesced_total (\d+)/m.exec(metrics);
  assert.ok(m, 'shoal_cache_coalesced_total is exported');
  assert.ok(Number(m[1]) >= s1.coalesced, `metric ${m[1]} vs stats ${s1.coalesced}`);
});

test('NBD_CMD_CACHE loads the requested range; reading it afterwards causes no miss', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'nbdcopy')) return;
  const d = await daemon(['--cache-size', '64M']);
  await d.createVolume('pf', 16 * MiB);
  await fillRandomKeep(d, 'pf', 16);
  await d.restart(); // cold cache
  const RANGE = 8 * MiB;
  const s0 = await cacheStats(d);
  assert.equal(s0.entries, 0, 'cold after a restart');
  const can = await py(`
import nbd, json
h = nbd.NBD()
h.connect_uri(${JSON.stringify(d.unixUri('pf'))})
can = h.can_cache()
if can:
    h.cache(${RANGE}, 0)
h.shutdown()
print(json.dumps({"can": can}))
`);
  assert.equal(can.can, true, 'the export advertises NBD_FLAG_SEND_CACHE');
  const s1 = await cacheStats(d);
  const dc = delta(s0, s1);
  t.diagnostic(`after CACHE of ${RANGE} bytes: Δ ${JSON.stringify(dc)}`);
  assert.equal(dc.entries, RANGE / CS, `the range's chunks are cached: ${JSON.stringify(dc)}`);
  assert.equal(dc.bytes, RANGE);
  assert.equal(dc.storeReadBytes, RANGE, 'loaded once from the store');
  // Read the range back, 1 MiB at a time, last MiB first (never sequential: no readahead).
  await py(`
import nbd, json
h = nbd.NBD()
h.connect_uri(${JSON.stringify(d.unixUri('pf'))})
for off in reversed(range(0, ${RANGE}, ${MiB})):
    h.pread(${MiB}, off)
h.shutdown()
print(json.dumps({}))
`);
  const s2 = await cacheStats(d);
  const dr = delta(s1, s2);
  t.diagnostic(`reading the cached range: Δ ${JSON.stringify(dr)}`);
  assert.equal(dr.misses, 0, `no misses: ${JSON.stringify(dr)}`);
  assert.equal(dr.storeReadBytes, 0, `no store reads: ${JSON.stringify(dr)}`);
  assert.equal(dr.hits, RANGE / CS, `one hit per chunk: ${JSON.stringify(dr)}`);
});

test('a sequential stream is read ahead', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'nbdsh', 'nbdcopy')) return;
  const d = await daemon(['--cache-size', '64M']);
  const SIZE = 32 * MiB;
  await d.createVolume('ra', SIZE);
  const file = await fillRandomKeep(d, 'ra', SIZE / MiB);
  await d.restart(); // cold cache
  const s0 = await cacheStats(d);
  const out = await py(`
import nbd, json, hashlib
h = nbd.NBD()
h.connect_uri(${JSON.stringify(d.unixUri('ra'))})
sha = hashlib.sha256()
for off in range(0, ${SIZE}, ${MiB}):
    sha.update(h.pread(${MiB}, off))
h.shutdown()
print(json.dumps({"sha": sha.hexdigest()}))
`);
  const s1 = await cacheStats(d);
  const dd = delta(s0, s1);
  const chunks = SIZE / CS;
  t.diagnostic(`sequential 1 MiB reads of ${chunks} chunks: Δ ${JSON.stringify(dd)}`);
  assert.equal(out.sha, createHash('sha256').update(readFileSync(file)).digest('hex'), 'the bytes read are the bytes written');
  assert.ok(dd.readahead > 0, `chunks were read ahead: ${JSON.stringify(dd)}`);
  assert.ok(dd.misses < chunks / 2, `most chunks were loaded before they were asked for: ${dd.misses} misses of ${chunks}`);
  assert.ok(dd.storeReadBytes <= SIZE + 4 * MiB, `each chunk loaded about once: ${dd.storeReadBytes}`);
});

// ------------------------------------------------------------------ e) never stale

test('never stale: chunk ids freed and reused never serve old bytes, through several volumes', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const d = await daemon(['--cache-size', '64M']);
  const SIZE = 2 * MiB;
  const ITER = Number(process.env.SHOAL_STALE_ITER ?? 30);
  await d.createVolume('x', SIZE);
  const out = await py(
    `
import nbd, json, os, random, urllib.request, hashlib
API = ${JSON.stringify(d.apiUrl)}
SOCK = ${JSON.stringify(d.nbdSocket)}
SIZE = ${SIZE}
CS = ${CS}
rnd = random.Random(1234)

def api(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(API + path, data=data, method=method, headers={"content-type": "application/json"} if body is not None else {})
    try:
        with urllib.request.urlopen(req) as r:
            t = r.read()
            return r.status, (json.loads(t) if t else None)
    except urllib.error.HTTPError as e:
        raise SystemExit(f"{method} {path} -> {e.code} {e.read().decode()}")

def connect(name):
    h = nbd.NBD()
    h.connect_uri("nbd+unix:///" + urllib.parse.quote(name, safe="") + "?socket=" + SOCK)
    return h

import urllib.parse
expected = {"x": bytearray(SIZE)}
reads = 0

def write_random(name, pieces, aligned_only=False):
    h = connect(name)
    buf = expected[name]
    for _ in range(pieces):
        if aligned_only or rnd.random() < 0.7:
            n = rnd.randint(1, 16) * CS
            off = rnd.randrange(0, SIZE - n + 1, CS)
        else:  # sub-chunk, unaligned: read-modify-write of a cached chunk
            n = rnd.randint(1, 3 * CS)
            off = rnd.randrange(0, SIZE - n + 1)
        data = os.urandom(n)
        h.pwrite(data, off)
        buf[off:off + n] = data
    h.flush()
    h.shutdown()

def rewrite_all(name):
    h = connect(name)
    data = os.urandom(SIZE)
    for off in range(0, SIZE, 256 * 1024):
        h.pwrite(data[off:off + 256 * 1024], off)
    h.flush()
    h.shutdown()
    expected[name][:] = data

def check(name, exp):
    global reads
    h = connect(name)
    got = bytearray()
    for off in range(0, SIZE, 256 * 1024):
        got += h.pread(256 * 1024, off)
    # and some 4 KiB reads (the single-chunk path)
    for _ in range(32):
        off = rnd.randrange(0, SIZE, CS)
        if h.pread(CS, off) != exp[off:off + CS]:
            raise SystemExit(f"STALE: {name} 4 KiB read at {off} differs from the last bytes written")
    h.shutdown()
    reads += 1
    if got != exp:
        bad = next(i for i in range(0, SIZE, CS) if got[i:i + CS] != exp[i:i + CS])
        raise SystemExit(f"STALE: {name} differs from the last bytes written at offset {bad}")

for it in range(${ITER}):
    write_random("x", 24)
    api("POST", "/v1/volumes/x/snapshots", {"name": f"s{it}"})
    api("POST", "/v1/volumes", {"name": f"a{it}", "from": {"volume": "x", "snapshot": f"s{it}"}})
    api("POST", "/v1/volumes", {"name": f"b{it}", "from": {"volume": "x"}})
    snap = bytes(expected["x"])
    expected[f"a{it}"] = bytearray(snap)
    expected[f"b{it}"] = bytearray(snap)
    write_random(f"a{it}", 8)
    # Everyone reads: the cache now holds these chunks, shared by up to four volumes.
    for name in ["x", f"a{it}", f"b{it}"]:
        check(name, expected[name])
    check(f"x@s{it}", snap)
    # The volume moves on, then the snapshot and the clones go: their chunks are freed.
    write_random("x", 64, aligned_only=True)
    api("DELETE", f"/v1/volumes/a{it}")
    del expected[f"a{it}"]
    # b goes while a client still has sequential reads (and so readahead loads) in flight.
    hb = connect(f"b{it}")
    bufs = [nbd.Buffer(128 * 1024) for k in range(16)]
    for k in range(16):
        hb.aio_pread(bufs[k], k * 128 * 1024)
    api("DELETE", f"/v1/volumes/b{it}?force=true")
    del expected[f"b{it}"]
    try:
        while hb.aio_in_flight() > 0:
            hb.poll(-1)
    except nbd.Error:
        pass  # disconnected by the forced delete
    del hb
    api("DELETE", f"/v1/volumes/x/snapshots/s{it}")
    if it > 0:
        api("DELETE", f"/v1/volumes/f{it - 1}")
        del expected[f"f{it - 1}"]
    if it % 3 == 0:
        st, rep = api("POST", "/v1/fsck")  # also drains the background collector
        if not rep["ok"]:
            raise SystemExit("fsck: " + json.dumps(rep))
    # New bytes land in reused slots; read them back through the volume and a fresh clone.
    rewrite_all("x")
    check("x", expected["x"])
    api("POST", "/v1/volumes", {"name": f"f{it}", "from": {"volume": "x"}})
    expected[f"f{it}"] = bytearray(expected["x"])
    write_random(f"f{it}", 4)
    check(f"f{it}", expected[f"f{it}"])
    check("x", expected["x"])

print(json.dumps({"reads": reads, "iterations": ${ITER}}))
`,
    110_000,
  );
  t.diagnostic(`${out.iterations} iterations, ${out.reads} full-volume checks`);
  // Slots really were reused: the chunk file stayed far smaller than everything written.
  const findChunks = (dir: string): string | undefined => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) {
        const f = findChunks(p);
        if (f) return f;
      } else if (e.name === 'chunks.dat') return p;
    }
    return undefined;
  };
  const chunksFile = findChunks(d.dataDir);
  assert.ok(chunksFile, 'chunks.dat in the data directory');
  const fileBytes = statSync(chunksFile).size;
  const written = ITER * (SIZE + 24 * 16 * CS + 64 * 16 * CS); // an upper bound on chunk bytes written to x alone
  t.diagnostic(`chunks.dat is ${(fileBytes / MiB).toFixed(1)} MiB after writing up to ${(written / MiB).toFixed(0)} MiB`);
  assert.ok(fileBytes < written / 3, `freed slots should have been reused (chunks.dat ${fileBytes} bytes)`);
  const st = await cacheStats(d);
  assert.ok(st.hits > 0 && st.entries > 0);
  await expectFsckClean(d);
});

// ------------------------------------------------------------------ f) metrics and sharing factor

test('cache metrics are exported; the sharing factor counts the volumes reading each cached chunk', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'nbdcopy')) return;
  const d = await daemon(['--cache-size', '64M']);
  const SIZE = 8 * MiB;
  const N = 4;
  await d.createVolume('gold', SIZE);
  await fillRandomKeep(d, 'gold', SIZE / MiB);
  assert.equal((await d.api('POST', '/v1/volumes/gold/snapshots', { name: 'v1' })).status, 201);
  for (let i = 0; i < N; i++) {
    const c = await d.api('POST', '/v1/volumes', { name: `clone${i}`, from: { volume: 'gold', snapshot: 'v1' } });
    assert.equal(c.status, 201, JSON.stringify(c.body));
  }
  await d.restart(); // cold cache: every cached chunk is there because a clone read it
  // Each clone read in full by its own client, all at once.
  await Promise.all(Array.from({ length: N }, (_, i) => runOk('nbdcopy', [d.unixUri(`clone${i}`), 'null:'])));
  const s = await cacheStats(d);
  t.diagnostic(`after ${N} clones read ${SIZE} bytes each: ${JSON.stringify(s)}`);
  // One copy in the cache, not N.
  assert.ok(s.bytes <= SIZE + 4 * MiB, `cache holds ${s.bytes} bytes for ${N} clones of ${SIZE} bytes`);
  assert.ok(s.storeReadBytes <= SIZE + 4 * MiB, `store read ${s.storeReadBytes} bytes for ${N} clones of ${SIZE} bytes`);
  assert.ok(s.sharingFactor >= N - 0.5, `sharing factor ${s.sharingFactor} with ${N} clones reading the same chunks`);

  const metrics = (await d.api('GET', '/metrics')).body as string;
  const value = (name: string): number => {
    const m = new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(metrics);
    assert.ok(m, `/metrics has ${name}`);
    return Number(m[1]);
  };
  for (const name of ['shoal_cache_hits_total', 'shoal_cache_misses_total', 'shoal_cache_evictions_total', 'shoal_cache_coalesced_total']) {
    assert.match(metrics, new RegExp(`^# TYPE ${name} counter$`, 'm'), `${name} is a counter`);
    value(name);
  }
  for (const name of ['shoal_cache_bytes', 'shoal_cache_capacity_bytes', 'shoal_cache_sharing_factor']) {
    assert.match(metrics, new RegExp(`^# TYPE ${name} gauge$`, 'm'), `${name} is a gauge`);
  }
  assert.equal(value('shoal_cache_capacity_bytes'), s.capacityBytes);
  assert.equal(value('shoal_cache_capacity_bytes'), 64 * MiB);
  assert.ok(value('shoal_cache_hits_total') >= s.hits);
  assert.ok(value('shoal_cache_misses_total') >= s.misses);
  assert.ok(Math.abs(value('shoal_cache_bytes') - s.bytes) <= MiB);
  assert.ok(value('shoal_cache_sharing_factor') >= N - 0.5, 'the sharing factor gauge');
  // The hits are what the clones saved: N × SIZE read, about SIZE of it from the store.
  assert.ok(s.hits + s.misses + s.readahead + s.coalesced >= (N * SIZE) / CS - 16, 'every chunk read was counted');
  await expectFsckClean(d);
});
