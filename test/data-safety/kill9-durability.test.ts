// Invariant 2: after the reply to a FLUSH, or to a FUA write, the data survives `kill -9` of the daemon.
// Three libnbd clients (one connection each) write self-describing patterns to interleaved regions of one
// volume, with FUA now and then and a FLUSH every few dozen writes, and print which generations became
// durable. The daemon is killed with SIGKILL mid-stream, restarted on the same data directory, and every
// durable generation must read back (or a later one); then fsck must find exact refcounts. Three cycles.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, statSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { PY, needTools, run, runOk } from '../helpers/tools.js';
import { setTimeout as sleep } from 'node:timers/promises';

const SCRIPT = join(dirname(fileURLToPath(import.meta.url)), 'durability.py');
const WRITERS = 3;

/** Parses the writers' "D region gen" lines into durable[region] = highest durable gen. */
function parseDurable(stdout: string, into: Map<number, number>): number {
  let lines = 0;
  for (const line of stdout.split('\n')) {
    const m = /^D (\d+) (\d+)$/.exec(line);
    if (!m) continue;
    lines++;
    const r = Number(m[1]);
    const g = Number(m[2]);
    if ((into.get(r) ?? -1) < g) into.set(r, g);
  }
  return lines;
}

async function verify(d: Daemon, vol: string, durable: Map<number, number>) {
  const input = JSON.stringify(Object.fromEntries(durable));
  const out = await runOk(PY, [SCRIPT, 'verify', d.unixUri(vol), String(WRITERS)], { input, timeoutMs: 60_000 });
  return JSON.parse(out) as { errors: string[]; errorCount: number; durableRegions: number; patternSectors: number };
}

test('FLUSHed and FUA writes survive kill -9, three times over', { timeout: 240_000 }, async (t) => {
  await killCycles(t, {});
});

// The same with no background commit in the cycle: every acknowledged FLUSH and FUA write lives only
// in the flush journal when the daemon dies, and the restart must replay it.
test('FLUSHed and FUA writes survive kill -9 from the flush journal alone (no commit since they were made)', { timeout: 240_000 }, async (t) => {
  await killCycles(t, { NODE_ENV: 'test', SHOAL_TEST_COMMIT_INTERVAL_MS: '600000' }, true);
});

async function killCycles(t: TestContext, env: Record<string, string>, fromJournal = false): Promise<void> {
  if (!needTools(t, 'nbdsh')) return;
  const d = await startDaemon({ env });
  const writers: ReturnType<typeof run>[] = [];
  try {
    const vol = 'dur';
    await d.createVolume(vol, 16 * 2 ** 20);
    const durable = new Map<number, number>();
    let directWrites = 0;
    let stagedWrites = 0;
    let direct = false;
    for (let cycle = 1; cycle <= 3; cycle++) {
      // Writers: two over the Unix socket, one over TCP; generations above every earlier cycle's.
      writers.length = 0;
      // Kill at a random moment once the writers have had enough durable acknowledgements to
      // make the check meaningful (a fixed delay proves nothing on a slow, loaded machine).
      const acks = new Array(WRITERS).fill(0);
      const started = Date.now();
      for (let w = 0; w < WRITERS; w++) {
        const uri = w === 2 ? d.uri(vol) : d.unixUri(vol);
        const seed = cycle * 100 + w + Math.floor(Math.random() * 1e6) * 1000;
        const count = (chunk: string) => (acks[w] += (chunk.match(/^D /gm) ?? []).length);
        writers.push(run(PY, [SCRIPT, 'write', uri, String(w), String(WRITERS), String(cycle * 1_000_000), String(seed)], { timeoutMs: 90_000, onStdout: count }));
      }
      // Every writer connected and had some writes made durable.
      while (Math.min(...acks) < 10 && Date.now() - started < 45_000) await sleep(50);
      await sleep(Math.floor(Math.random() * 1500));
      const store = (await d.api('GET', '/v1/stats')).body.store;
      directWrites += store.directWrites ?? 0;
      stagedWrites += store.stagedWrites ?? 0;
      direct = store.direct;
      const killAfter = Date.now() - started;
      const pid = d.proc.pid;
      await d.kill9();
      assert.equal(d.proc.signalCode, 'SIGKILL', `daemon ${pid} was killed by SIGKILL`);
      const results = await Promise.all(writers);
      let dLines = 0;
      const before = durable.size;
      for (const [w, r] of results.entries()) {
        assert.ok(!/Traceback/.test(r.stderr), `writer ${w} crashed in cycle ${cycle}:\n${r.stderr}`);
        dLines += parseDurable(r.stdout, durable);
        // Each writer must have been cut off by the kill (not have stopped by itself).
        assert.match(r.stdout, /^E /m, `writer ${w} should end on a connection error after kill -9; stdout tail: ${r.stdout.slice(-300)} stderr: ${r.stderr}`);
      }
      t.diagnostic(`cycle ${cycle}: killed after ${killAfter} ms, ${dLines} durable acknowledgements, ${durable.size - before} new durable regions`);
      // Without acknowledged flushes the test would prove nothing.
      assert.ok(dLines >= 10, `cycle ${cycle}: only ${dLines} durable acknowledgements before the kill — daemon too slow, or FLUSH/FUA never answered`);

      // The stale Unix socket left behind by kill -9 must not stop the restart.
      await d.start();
      if (fromJournal) {
        const replayed = (await d.api('GET', '/v1/stats')).body.flushJournal.replayed;
        t.diagnostic(`cycle ${cycle}: ${replayed} operations replayed from the flush journal`);
        assert.ok(replayed > 0, `cycle ${cycle}: nothing was replayed, so the test proved nothing about the journal`);
      }
      const v = await verify(d, vol, durable);
      assert.equal(v.errorCount, 0, `cycle ${cycle}: ${v.errorCount} sectors lost durable data after kill -9:\n${v.errors.join('\n')}`);
      assert.equal(v.durableRegions, durable.size);
      const fsck = await d.api('POST', '/v1/fsck');
      assert.equal(fsck.status, 200, JSON.stringify(fsck.body));
      assert.equal(fsck.body.ok, true, `cycle ${cycle}: fsck after kill -9: ${JSON.stringify(fsck.body.errors)}`);
    }
    // The 256 KiB regions' chunks went to the chunk file past the page cache, where it takes O_DIRECT.
    if (direct) assert.ok(directWrites > 0, 'no chunk was written past the page cache: the direct path went untested');
    // Overwrites reuse freed slots inside the chunk file: held in memory until a FLUSH's commit writes them.
    if (direct) assert.ok(stagedWrites > 0, 'no write was staged: the staged path went untested');
    t.diagnostic(`${directWrites} runs of chunks written past the page cache, ${stagedWrites} writes staged (O_DIRECT ${direct})`);
  } finally {
    await d.kill9().catch(() => {});
    await Promise.allSettled(writers);
    await d.dispose();
  }
}

test('a stale Unix socket left by kill -9 does not prevent a restart', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'nbdinfo', 'nbdsh')) return;
  const d = await startDaemon();
  try {
    await d.createVolume('s', 2 ** 20);
    await runOk(PY, ['-c', `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(d.unixUri('s'))})\nh.pwrite(b'\\x5a' * 4096, 8192, nbd.CMD_FLAG_FUA)\nh.shutdown()`]);
    const sock = d.nbdSocket;
    assert.ok(sock, 'daemon reported its Unix socket');
    await d.kill9();
    assert.ok(existsSync(sock) && statSync(sock).isSocket(), 'kill -9 leaves the socket file behind (the situation under test)');
    await d.start();
    assert.equal(d.nbdSocket, sock, 'restarted on the same socket path');
    // The path now answers: list exports and read the FUA write back over it.
    const info = JSON.parse(await runOk('nbdinfo', ['--json', d.unixUri('s')]));
    assert.equal(info.exports[0]['export-size'], 2 ** 20);
    const out = await runOk(PY, ['-c', `import nbd\nh = nbd.NBD()\nh.connect_uri(${JSON.stringify(d.unixUri('s'))})\nprint(h.pread(4096, 8192).hex())`]);
    assert.equal(out.trim(), '5a'.repeat(4096));
  } finally {
    await d.dispose();
  }
});
