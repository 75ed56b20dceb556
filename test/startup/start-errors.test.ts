// Every error the daemon can meet at start prints one sentence and exits non-zero, never a stack
// trace: a socket path taken by a file, an NBD or API address in use, a data directory that is a
// file or that the daemon may not use, a bad flag, a test-only hook outside tests. Each is started for real (the compiled daemon).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MAIN } from '../helpers/daemon.js';
import { hasTool, run } from '../helpers/tools.js';

const dir = mkdtempSync(join(tmpdir(), 'shoal-start-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

/** Runs `shoal serve ARGS`; asserts the exit code and one line "shoal: <sentence>" on stderr, no stack. */
async function refuses(args: string[], code: number, sentence: RegExp, opts: { asNobody?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<void> {
  const cmd = opts.asNobody ? 'setpriv' : process.execPath;
  const argv = opts.asNobody ? ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, MAIN, 'serve', ...args] : [MAIN, 'serve', ...args];
  const r = await run(cmd, argv, { timeoutMs: 30_000, env: opts.env });
  assert.equal(r.status, code, `exit code for ${args.join(' ')}:\n${r.stderr}`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line, not:\n${r.stderr}`);
  assert.match(lines[0]!, /^shoal: /);
  assert.match(lines[0]!, sentence);
  assert.doesNotMatch(r.stderr, /\n\s+at |Error:/, 'no stack trace');
  assert.equal(r.stdout.includes('shoal ready'), false);
}

const base = (name: string) => ['--data-dir', join(dir, name), '--api', '127.0.0.1:0', '--nbd', '127.0.0.1:0'];

test('a file where the NBD Unix socket goes', async () => {
  const path = join(dir, 'not-a-socket');
  writeFileSync(path, 'precious');
  await refuses([...base('d1'), '--nbd-socket', path], 1, /NBD socket path .*not-a-socket exists and is not a socket/);
});

test('an NBD address or an API address already in use', async () => {
  const taken = net.createServer().listen(0, '127.0.0.1');
  await new Promise((r) => taken.once('listening', r));
  const port = (taken.address() as net.AddressInfo).port;
  try {
    await refuses(['--data-dir', join(dir, 'd2'), '--api', '127.0.0.1:0', '--nbd', `127.0.0.1:${port}`], 1, new RegExp(`cannot listen for NBD on 127\\.0\\.0\\.1:${port}: the address is already in use`));
    await refuses(['--data-dir', join(dir, 'd3'), '--nbd', '127.0.0.1:0', '--api', `127.0.0.1:${port}`], 1, new RegExp(`cannot listen for the REST API on 127\\.0\\.0\\.1:${port}: the address is already in use`));
  } finally {
    taken.close();
  }
});

test('a data directory that is a file, or one the daemon may not use', async (t) => {
  const file = join(dir, 'a-file');
  writeFileSync(file, '');
  await refuses(['--data-dir', file, '--api', '127.0.0.1:0', '--nbd', '127.0.0.1:0'], 1, /cannot use the data directory .*a-file: it, or a part of its path, exists and is not a directory/);
  if (process.getuid?.() !== 0 || !hasTool('setpriv')) return t.diagnostic('not root, or no setpriv: the permission case needs another user');
  const privateDir = join(dir, 'root-only');
  mkdirSync(privateDir);
  chmodSync(privateDir, 0o700);
  chmodSync(dir, 0o755);
  await refuses(['--data-dir', join(privateDir, 'data'), '--api', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--nbd-socket', 'none'], 1, /cannot use the data directory .*: permission denied/, { asNobody: true });
});

test('a bad flag or value is a usage error (exit 2)', async () => {
  await refuses(['--bogus', '1'], 2, /unknown flag "--bogus"/);
  await refuses(['--cache-size', 'lots'], 2, /--cache-size/);
  await refuses(['--nbd', 'nowhere'], 2, /is not a listen address/);
});

test('a test-only hook outside a test, refused once the store is open: the sentence, no crash of the background work started by then', async () => {
  // Refused after the metadata store and the fingerprint index are open: the index's filter fill, started
  // in the background, once read the closed store and ended the process with a stack trace.
  await refuses(base('d4'), 1, /SHOAL_TEST_COMMIT_INTERVAL_MS is a test-only hook and needs NODE_ENV=test/, { env: { NODE_ENV: 'production', SHOAL_TEST_COMMIT_INTERVAL_MS: '1000' } });
});
