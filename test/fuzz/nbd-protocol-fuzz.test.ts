// Protocol fuzzer: malformed handshake options and transmission requests (bad magics, lengths,
// flags, truncated messages, huge lengths, random bytes), in plaintext and over TLS, against the
// real daemon. Every few dozen cases: the daemon is alive, logged no internal error, and a
// well-behaved client (plaintext and TLS) reads an intact pattern from a volume the fuzzer never
// names. Every fuzzed connection must be closed by the server once the client has sent its FIN.
//
// SHOAL_FUZZ_SECONDS (default 50; `npm run fuzz` runs 600), SHOAL_FUZZ_SEED (default random,
// printed), SHOAL_FUZZ_CASE (replay one case of that seed).
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { randomInt } from 'node:crypto';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { haveGnutlsTools, makeTlsKeys, type TlsKeys } from '../helpers/tls-keys.js';
import { Raw, OPT, REP, CMD, goData, metaQuery } from '../nbd/raw.js';
import { tlsOptions, type Credentials } from '../tls/tls-daemon.js';
import { makeCase, type FuzzCase, type Target } from './nbd-fuzz-cases.js';

const SECONDS = Number(process.env.SHOAL_FUZZ_SECONDS ?? 50);
const SEED = process.env.SHOAL_FUZZ_SEED !== undefined ? Number(process.env.SHOAL_FUZZ_SEED) : randomInt(2 ** 31);
const ONLY = process.env.SHOAL_FUZZ_CASE !== undefined ? Number(process.env.SHOAL_FUZZ_CASE) : null;
const BATCH = 40; // cases between health checks
const PARALLEL = 8;
const CLOSE_TIMEOUT_MS = 10_000;

const TARGET: Target = { writable: 'fuzz', readOnly: 'pattern@snap', size: 64 * 1024 * 1024 };
const PATTERN = Buffer.alloc(256 * 1024);
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = (i * 31 + 7) & 0xff;
/** Log lines that mean a bug, not bad input: internal errors and exceptions the engine did not expect. */
const BUG_LINE = /"level":(?:5\d|60)|"msg":"nbd: (?:internal error|handshake error|request failed|observer failed)/;

interface Stats {
  cases: number;
  tls: number;
  /** Cases that completed the TLS handshake / reached transmission before their malformed messages. */
  tlsUp: number;
  transmission: number;
  messages: number;
  sent: number;
  received: number;
}

describe('NBD protocol fuzzer', { timeout: (SECONDS + 300) * 1000 }, () => {
  let d: Daemon;
  let keys: TlsKeys | undefined;
  let creds: Credentials | undefined;

  before(async () => {
    if (haveGnutlsTools()) {
      keys = await makeTlsKeys();
      creds = { psk: { file: keys.psk, identity: 'alice' } };
    }
    const tlsArgs = keys ? ['--tls', 'on', '--tls-psk', keys.psk, '--tls-admins', 'alice'] : []; // alice sees every volume
    d = await startDaemon({ args: ['--cache-size', '64M', ...tlsArgs], env: { NODE_ENV: 'test', SHOAL_TEST_HANDSHAKE_TIMEOUT_MS: '5000' } });
    await d.createVolume('fuzz', TARGET.size);
    await d.createVolume('pattern', TARGET.size);
    const c = await Raw.connect(d.nbdPort);
    await c.handshake('pattern');
    c.request(CMD.WRITE, 1n, 0, PATTERN.length, 1, PATTERN);
    assert.equal((await c.simpleReply()).error, 0);
    c.destroy();
    assert.equal((await d.api('POST', '/v1/volumes/pattern/snapshots', { name: 'snap' })).status, 201);
  });
  after(async () => {
    await d?.dispose();
    keys?.dispose();
  });

  async function wellBehavedRead(exportName: string, tls: boolean): Promise<void> {
    const c = await Raw.connect(d.nbdPort);
    try {
      await c.greet(3);
      if (tls) {
        c.sendOption(OPT.STARTTLS);
        assert.equal((await c.optionReply()).type, REP.ACK);
        await c.startTls(tlsOptions(creds!));
      }
      await c.handshake(exportName, { greeted: true });
      c.request(CMD.READ, 9n, 0, PATTERN.length + 4096);
      const r = await c.simpleReply(PATTERN.length + 4096);
      assert.equal(r.error, 0);
      assert.ok(r.data.subarray(0, PATTERN.length).equals(PATTERN), `${exportName}: pattern intact`);
      assert.ok(r.data.subarray(PATTERN.length).equals(Buffer.alloc(4096)), `${exportName}: nothing written after it`);
    } finally {
      c.destroy();
    }
  }

  let logChecked = 0;
  async function healthy(where: string): Promise<void> {
    assert.equal(d.proc.exitCode, null, `daemon exited (${where}):\n${d.log.slice(-3000)}`);
    const started = Date.now();
    await wellBehavedRead('pattern', false);
    await wellBehavedRead('pattern@snap', !!creds);
    const took = Date.now() - started;
    assert.ok(took < 5000, `a well-behaved client waited ${took} ms (${where})`);
    const fresh = d.log.slice(logChecked);
    logChecked = d.log.length;
    const bug = fresh.split('\n').find((l) => BUG_LINE.test(l));
    assert.equal(bug, undefined, `${where}: the daemon logged a bug`);
  }

  /** Runs one case; resolves once the server has closed the connection after the client's FIN. */
  async function runCase(fc: FuzzCase, stats: Stats): Promise<void> {
    const c = await Raw.connect(d.nbdPort);
    const send = (b: Buffer) => {
      stats.sent += b.length;
      c.write(b);
    };
    try {
      if (fc.preGreeting) send(fc.preGreeting);
      await c.read(18, 3000);
      send(fc.clientFlags);
      if (fc.tls && creds) {
        c.sendOption(OPT.STARTTLS);
        const ack = await c.optionReply();
        if (ack.type === REP.ACK) {
          if (fc.tlsGarbage) send(fc.tlsGarbage);
          else {
            await c.startTls(tlsOptions(creds));
            stats.tlsUp++;
          }
        }
      }
      if (fc.go && !fc.tlsGarbage) {
        if (fc.go.structured) {
          c.sendOption(OPT.STRUCTURED_REPLY);
          await c.optionReply();
        }
        if (fc.go.meta) {
          c.sendOption(OPT.SET_META, metaQuery(fc.go.exportName, ['base:allocation']));
          await c.optionReplies();
        }
        c.sendOption(OPT.GO, goData(fc.go.exportName));
        if ((await c.optionReplies()).at(-1)!.type === REP.ACK) stats.transmission++;
      }
    } catch {
      // The server may refuse or close at any point; what matters is how it ends.
    }
    const received = c.discardIncoming();
    for (const m of fc.messages) {
      if (c.closed) break;
      // Some cases split a message across writes, or wait for replies between messages.
      if (fc.interleave && m.length > 1) {
        const cut = 1 + (m.length >> 1);
        send(m.subarray(0, cut));
        await new Promise((r) => setImmediate(r));
        send(m.subarray(cut));
        await new Promise((r) => setTimeout(r, 1));
      } else send(m);
      stats.messages++;
    }
    c.sock.end();
    const closed = await c.waitClosed(CLOSE_TIMEOUT_MS);
    stats.received += received();
    c.destroy();
    assert.ok(closed, `case ${fc.index} (seed ${SEED}): the server kept the connection open ${CLOSE_TIMEOUT_MS} ms after the client's FIN`);
  }

  it(`survives malformed traffic for ${SECONDS} s, plaintext and TLS`, async (t) => {
    t.diagnostic(`fuzz seed ${SEED} (replay: SHOAL_FUZZ_SEED=${SEED}${ONLY !== null ? ` SHOAL_FUZZ_CASE=${ONLY}` : ''})`);
    console.log(`NBD fuzz seed: ${SEED}`);
    if (!creds) t.diagnostic('certtool/psktool missing: plaintext only');
    const stats: Stats = { cases: 0, tls: 0, tlsUp: 0, transmission: 0, messages: 0, sent: 0, received: 0 };
    const deadline = Date.now() + SECONDS * 1000;
    let next = ONLY ?? 0;
    await healthy('before fuzzing');
    while (ONLY !== null ? next === ONLY : Date.now() < deadline) {
      const first = next;
      const batch = Array.from({ length: ONLY !== null ? 1 : BATCH }, () => makeCase(SEED, next++, TARGET));
      let i = 0;
      const worker = async () => {
        while (i < batch.length) {
          const fc = batch[i++]!;
          stats.cases++;
          if (fc.tls && creds) stats.tls++;
          await runCase(fc, stats);
        }
      };
      await Promise.all(Array.from({ length: PARALLEL }, worker));
      await healthy(`after cases ${first}-${next - 1} of seed ${SEED} (replay one with SHOAL_FUZZ_SEED=${SEED} SHOAL_FUZZ_CASE=N)`);
    }
    const rss = Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${d.proc.pid}/status`, 'utf8'))![1]) * 1024;
    const summary = `${stats.cases} cases (${stats.tls} over TLS, ${stats.tlsUp} with the TLS handshake done; ${stats.transmission} in transmission), ${stats.messages} malformed messages, ${(stats.sent / 1048576).toFixed(1)} MiB sent, ${(stats.received / 1048576).toFixed(1)} MiB of replies; daemon RSS ${(rss / 1048576).toFixed(0)} MiB`;
    t.diagnostic(summary);
    console.log(`NBD fuzz (seed ${SEED}): ${summary}`);
    if (ONLY === null) assert.ok(stats.messages >= SECONDS * 150, `only ${stats.messages} messages in ${SECONDS} s`);
    assert.ok(rss < 1024 * 1024 * 1024, `daemon RSS ${rss} bytes`);
  });
});
