// systemd socket activation: the daemon runs under systemd-socket-activate (systemd's own tool,
// which opens the sockets, waits for the first connection, then execs the daemon with LISTEN_FDS,
// LISTEN_PID and LISTEN_FDNAMES, as a socket unit does), serves NBD and the REST API on the passed
// sockets instead of the ones its flags name, and refuses a socket it does not know, having
// touched nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN, ROOT } from '../helpers/daemon.js';
import { freePort } from '../helpers/free-port.js';
import { needTools, run, runOk } from '../helpers/tools.js';
import { inheritedSockets } from '../../server/socket-activation.js';

const UNITS = ['shoal.socket', 'shoal-api.socket', 'shoal.service'].map((u) => join(ROOT, 'deploy', u));
/** FileDescriptorName= of a socket unit in deploy/. */
const fdName = (unit: string) => /^FileDescriptorName=(\S+)$/m.exec(readFileSync(join(ROOT, 'deploy', unit), 'utf8'))![1]!;

interface Activated {
  proc: ChildProcess;
  out: string;
  err: string;
  exited: Promise<number | null>;
}

/** systemd-socket-activate -l ADDR… [--fdname=…] node main.js serve ARGS. */
function activate(listen: string[], fdnames: string | null, serveArgs: string[]): Activated {
  const args = [...listen.flatMap((l) => ['-l', l]), ...(fdnames === null ? [] : [`--fdname=${fdnames}`]), process.execPath, MAIN, 'serve', ...serveArgs];
  const proc = spawn('systemd-socket-activate', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const a: Activated = { proc, out: '', err: '', exited: new Promise((r) => proc.once('exit', (code) => r(code))) };
  proc.stdout!.on('data', (d) => (a.out += d));
  proc.stderr!.on('data', (d) => (a.err += d));
  return a;
}

async function until(what: string, a: Activated, ok: () => boolean): Promise<void> {
  for (let i = 0; i < 300 && !ok(); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(ok(), `${what}:\n${a.out}\n${a.err}`);
}

/** Connects once to wake the socket up: systemd-socket-activate starts the daemon on the first connection. */
function poke(port: number): Promise<void> {
  return new Promise((resolve) => {
    const c = net.connect(port, '127.0.0.1', () => c.destroy());
    c.once('close', () => resolve());
    c.once('error', () => resolve());
  });
}

function readyLine(a: Activated): any {
  return a.out
    .split('\n')
    .map((l) => {
      try {
        return JSON.parse(l);
      } catch {
        return null;
      }
    })
    .find((r) => r?.msg === 'shoal ready');
}

async function stop(a: Activated): Promise<number | null> {
  if (a.proc.exitCode === null && a.proc.signalCode === null) a.proc.kill('SIGTERM');
  return a.exited;
}

/**
 * Runs `body` with the daemon under systemd-socket-activate, listening on what `setup` returns
 * for a fresh temporary directory (--data-dir DIR/data added), then stops it and removes the directory.
 */
async function withActivated(
  setup: (dir: string) => { listen: string[]; names: string | null; args: string[] },
  body: (a: Activated, dir: string) => Promise<void>,
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'shoal-sa-'));
  const { listen, names, args } = setup(dir);
  const a = activate(listen, names, ['--data-dir', join(dir, 'data'), ...args]);
  try {
    await until('systemd-socket-activate listens', a, () => a.err.includes(`as ${2 + listen.length}.`));
    await body(a, dir);
  } finally {
    await stop(a);
    rmSync(dir, { recursive: true, force: true });
  }
}

test('NBD over TCP and Unix and the REST API on the sockets systemd passes (nbd, nbd-unix, api)', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'systemd-socket-activate', 'nbdinfo')) return;
  const [nbdPort, apiPort] = [await freePort(), await freePort()];
  let sock = '';
  // The flags name other listeners: the passed sockets replace them.
  const setup = (dir: string) => {
    sock = join(dir, 'activated.sock');
    return {
      listen: [`127.0.0.1:${nbdPort}`, sock, `127.0.0.1:${apiPort}`],
      names: 'nbd:nbd-unix:api',
      args: ['--nbd', '127.0.0.1:0', '--nbd-socket', join(dir, 'flag.sock'), '--api', '127.0.0.1:0'],
    };
  };
  await withActivated(setup, async (a, dir) => {
    assert.equal(readyLine(a), undefined, 'nothing runs before the first connection');
    // The first client wakes the daemon up and waits in the socket's backlog until it serves.
    const list = await runOk('nbdinfo', ['--list', `nbd://127.0.0.1:${nbdPort}`]);
    assert.match(list, /newstyle-fixed/, 'the NBD handshake ran on the passed socket');

    // NBD is served as soon as its socket is taken; the ready line follows once every listener is up.
    await until('the daemon logs that it is ready', a, () => readyLine(a) !== undefined);
    const ready = readyLine(a);
    assert.ok(ready, a.out);
    assert.deepEqual([ready.nbd, ready.nbdSocket, ready.api], [`127.0.0.1:${nbdPort}`, sock, `http://127.0.0.1:${apiPort}`]);
    assert.equal(ready.pid, a.proc.pid, 'systemd-socket-activate exec()s the daemon: LISTEN_PID is its pid');
    assert.equal(existsSync(join(dir, 'flag.sock')), false, 'the Unix socket of --nbd-socket is not opened');

    const created = await fetch(`http://127.0.0.1:${apiPort}/v1/volumes`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'vol', size: 8 * 2 ** 20 }) });
    assert.equal(created.status, 201, await created.text());
    assert.equal((await (await fetch(`http://127.0.0.1:${apiPort}/healthz`)).json()).status, 'ok');

    for (const uri of [`nbd://127.0.0.1:${nbdPort}/vol`, `nbd+unix:///vol?socket=${sock}`]) {
      const info = JSON.parse(await runOk('nbdinfo', ['--json', uri]));
      assert.equal(info.exports[0]['export-size'], 8 * 2 ** 20, uri);
    }
    assert.equal(await stop(a), 0, `a graceful stop:\n${a.err}`);
  });
});

test('the names deploy/shoal.socket and shoal-api.socket give (TCP and Unix both nbd, api) are served as such', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'systemd-socket-activate', 'nbdinfo')) return;
  const [nbdPort, apiPort] = [await freePort(), await freePort()];
  const names = [fdName('shoal.socket'), fdName('shoal.socket'), fdName('shoal-api.socket')].join(':');
  await withActivated(
    (dir) => ({ listen: [`127.0.0.1:${nbdPort}`, join(dir, 'nbd.sock'), `127.0.0.1:${apiPort}`], names, args: [] }),
    async (a, dir) => {
      await runOk('nbdinfo', ['--list', `nbd+unix:///?socket=${join(dir, 'nbd.sock')}`]);
      await until('the daemon logs that it is ready', a, () => readyLine(a) !== undefined);
      const ready = readyLine(a);
      assert.deepEqual([ready.nbd, ready.nbdSocket, ready.api], [`127.0.0.1:${nbdPort}`, join(dir, 'nbd.sock'), `http://127.0.0.1:${apiPort}`]);
      await runOk('nbdinfo', ['--list', `nbd://127.0.0.1:${nbdPort}`]);
    },
  );
});

test('a socket passed without a name serves NBD; the API stays on --api', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'systemd-socket-activate', 'nbdinfo')) return;
  const nbdPort = await freePort();
  await withActivated(
    () => ({ listen: [`127.0.0.1:${nbdPort}`], names: null, args: ['--nbd-socket', 'none', '--api', '127.0.0.1:0'] }),
    async (a) => {
      await runOk('nbdinfo', ['--list', `nbd://127.0.0.1:${nbdPort}`]);
      await until('the daemon logs that it is ready', a, () => readyLine(a) !== undefined);
      const ready = readyLine(a);
      assert.equal(ready.nbd, `127.0.0.1:${nbdPort}`);
      assert.equal(ready.nbdSocket, null);
      assert.match(ready.api, /^http:\/\/127\.0\.0\.1:\d+$/);
      assert.equal((await fetch(`${ready.api}/healthz`)).status, 200);
    },
  );
});

test('a passed socket with a name Shoal does not know: one sentence, non-zero exit, nothing created', { timeout: 60_000 }, async (t) => {
  if (!needTools(t, 'systemd-socket-activate')) return;
  const port = await freePort();
  await withActivated(
    () => ({ listen: [`127.0.0.1:${port}`], names: 'metrics', args: ['--nbd-socket', 'none', '--api', '127.0.0.1:0'] }),
    async (a, dir) => {
      await poke(port);
      assert.notEqual(await a.exited, 0);
      assert.match(a.err, /shoal: systemd passed a socket named "metrics"; Shoal takes sockets named nbd, nbd-unix and api/);
      assert.doesNotMatch(a.err, /\n\s+at /, 'a sentence, not a stack trace');
      assert.equal(existsSync(join(dir, 'data')), false, 'the data directory was not created');
    },
  );
});

test('the unit files pass systemd-analyze verify without a warning', async (t) => {
  if (!needTools(t, 'systemd-analyze')) return;
  const r = await run('systemd-analyze', ['verify', ...UNITS]);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr.trim(), '', 'no unknown keys or bad values');
});

test('LISTEN_* variables: only for this pid, checked, and unset once taken', () => {
  const other = { LISTEN_PID: String(process.pid + 1), LISTEN_FDS: '1' };
  assert.deepEqual(inheritedSockets(other), [], 'sockets meant for another process are not taken');
  assert.equal(other.LISTEN_FDS, '1', 'nor their variables touched');

  const env: NodeJS.ProcessEnv = { LISTEN_PID: String(process.pid), LISTEN_FDS: '3', LISTEN_FDNAMES: 'nbd-unix:api:unknown' };
  assert.deepEqual(
    inheritedSockets(env).map((s) => [s.fd, s.role]),
    [[3, 'nbd'], [4, 'api'], [5, 'nbd']],
  );
  assert.deepEqual(env, {}, 'unset: a process the daemon starts takes none of them');

  const bad = (vars: Record<string, string>, re: RegExp) => assert.throws(() => inheritedSockets({ LISTEN_PID: String(process.pid), ...vars }), (e: any) => e.code === 'invalid_request' && re.test(e.message));
  bad({ LISTEN_FDS: 'two' }, /LISTEN_FDS "two" is not a number of sockets/);
  bad({ LISTEN_FDS: '2', LISTEN_FDNAMES: 'nbd' }, /names 1 sockets but LISTEN_FDS passes 2/);
  bad({ LISTEN_FDS: '2', LISTEN_FDNAMES: 'api:api' }, /more than one socket named "api"/);
  bad({ LISTEN_FDS: '1', LISTEN_FDNAMES: 'metrics' }, /socket named "metrics"/);
});
