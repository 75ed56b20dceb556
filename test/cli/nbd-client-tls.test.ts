// The CLI's NBD client and its qemu-img path over TLS, against nbdkit --tls=require (a real TLS
// NBD server; keys made by certtool and psktool): X.509 with the CA given as --cacert would give
// it, PSK from a psktool file, and the sentences for a certificate nobody vouched for and for a
// server that wants TLS the client was not told about. The daemon's own NBD TLS plugs into the same
// client through GET /v1/endpoints ("tls": "require").
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, readFileSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { makeTestPki } from '../helpers/certificates.js';
import { freePort } from '../helpers/free-port.js';
import { needTools, run, runOk, PATH_WITH_USR_BIN } from '../helpers/tools.js';
import { MiB } from '../helpers/volume-io.js';
import { NbdPool } from '../../server/cli/nbd/nbd-pool.js';
import { readPskFile } from '../../server/cli/nbd/nbd-target.js';
import type { NbdTarget } from '../../server/cli/nbd/client-handshake.js';
import { exportRaw, importRaw } from '../../server/cli/transfer/raw-copy.js';
import { Progress } from '../../server/cli/transfer/progress.js';
import { qemuConvert, qemuTarget } from '../../server/cli/transfer/qemu-img.js';

const quiet = (total: number) => new Progress({ label: 'test', total, out: { isTTY: false, write: () => true }, fields: {} });
const opts = (total: number) => ({ signal: new AbortController().signal, progress: quiet(total) });

/** nbdkit serving a 64 MiB memory disk with TLS required, on a free 127.0.0.1 port. */
async function nbdkitTls(tlsArgs: string[]): Promise<{ port: number; proc: ChildProcess; stop: () => Promise<void> }> {
  const port = await freePort();
  // Ready once nbdkit writes its pid file (it does so after it listens). A probe connection instead left
  // "reading initial client flags: Connection reset by peer" in its log now and then, which stop() takes
  // for a real error.
  const pidFile = join(mkdtempSync(join(tmpdir(), 'nbdkit-pid-')), 'pid');
  const proc = spawn('nbdkit', ['-f', '--exit-with-parent', '-P', pidFile, '-i', '127.0.0.1', '-p', String(port), '--tls=require', ...tlsArgs, 'memory', '64M'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, PATH: PATH_WITH_USR_BIN },
  });
  let err = '';
  proc.stderr!.on('data', (b) => (err += b));
  for (let i = 0; i < 200 && !existsSync(pidFile); i++) await new Promise((res) => setTimeout(res, 50));
  return {
    port,
    proc,
    stop: async () => {
      const exited = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await exited;
      rmSync(dirname(pidFile), { recursive: true, force: true });
      if (/error/i.test(err) && !/TLS|handshake|certificate|gnutls/i.test(err)) throw new Error(`nbdkit: ${err}`);
    },
  };
}

test('raw import and export over TLS with X.509 (--cacert) and PSK, and the sentences when trust fails', async (t) => {
  if (!needTools(t, 'nbdkit', 'certtool', 'psktool', 'nbdcopy')) return;
  const dir = mkdtempSync(join(tmpdir(), 'shoal-tls-client-'));
  try {
    const pki = await makeTestPki(dir);
    const img = join(dir, 'img.raw');
    const bytes = Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(2 * MiB), randomBytes(MiB)]);
    writeFileSync(img, bytes);

    const x509 = await nbdkitTls([`--tls-certificates=${dir}`]);
    try {
      const target: NbdTarget = { address: { host: '127.0.0.1', port: x509.port }, exportName: '', tls: { ca: readFileSync(pki.caCert) } };
      const pool = await NbdPool.open(target, 4);
      const r = await importRaw(img, pool, 4096, opts(bytes.length));
      await pool.close();
      assert.deepEqual(r, { dataBytes: 4 * MiB, zeroBytes: 2 * MiB });
      // libnbd over TLS reads back what the client wrote.
      const back = join(dir, 'back.raw');
      await runOk('nbdcopy', [`nbds://127.0.0.1:${x509.port}/?tls-certificates=${dir}`, back]);
      assert.ok(readFileSync(back).subarray(0, bytes.length).equals(bytes));
      // And the client's own export over TLS.
      const out = join(dir, 'out.raw');
      const pool2 = await NbdPool.open(target, 2);
      await exportRaw(out, pool2, false, opts(64 * MiB), () => {});
      await pool2.close();
      assert.ok(readFileSync(out).subarray(0, bytes.length).equals(bytes));

      // Without the CA: the certificate is not trusted, and the sentence says what to give.
      await assert.rejects(NbdPool.open({ ...target, tls: {} }, 1), /TLS with the NBD server at 127\.0\.0\.1:\d+ failed \(.*\): give the CA that signed its certificate with --cacert FILE/);
      // Not told to use TLS: the server's refusal becomes a sentence.
      await assert.rejects(NbdPool.open({ ...target, tls: null }, 1), /the NBD server at 127\.0\.0\.1:\d+ requires TLS, and the daemon did not say so/);
    } finally {
      await x509.stop();
    }

    const pskFile = join(dir, 'keys.psk');
    await runOk('psktool', ['-u', 'alice', '-p', pskFile]);
    const psk = await nbdkitTls([`--tls-psk=${pskFile}`]);
    try {
      const target: NbdTarget = { address: { host: '127.0.0.1', port: psk.port }, exportName: '', tls: { psk: readPskFile(pskFile) } };
      const pool = await NbdPool.open(target, 4);
      await importRaw(img, pool, 4096, opts(bytes.length));
      await pool.close();
      const back = join(dir, 'back-psk.raw');
      await runOk('nbdcopy', [`nbds://alice@127.0.0.1:${psk.port}/?tls-psk-file=${pskFile}`, back]);
      assert.ok(readFileSync(back).subarray(0, bytes.length).equals(bytes));
      // A wrong key is refused.
      writeFileSync(join(dir, 'wrong.psk'), `alice:${randomBytes(32).toString('hex')}\n`);
      await assert.rejects(NbdPool.open({ ...target, tls: { psk: readPskFile(join(dir, 'wrong.psk')) } }, 1), /TLS with the NBD server at 127\.0\.0\.1:\d+ failed|closed the connection/);
      assert.throws(() => readPskFile(img), /is not a PSK file: its first line should be IDENTITY:HEXKEY/);
    } finally {
      await psk.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('qemu-img writes a qcow2 image into a TLS export with the CLI credentials', async (t) => {
  if (!needTools(t, 'nbdkit', 'certtool', 'qemu-img', 'qemu-io')) return;
  const dir = mkdtempSync(join(tmpdir(), 'shoal-tls-qemu-'));
  try {
    const pki = await makeTestPki(dir);
    const src = join(dir, 'src.qcow2');
    await runOk('qemu-img', ['create', '-q', '-f', 'qcow2', src, '64M']);
    await runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x3c 5M 1M', src]);
    const srv = await nbdkitTls([`--tls-certificates=${dir}`]);
    try {
      const target: NbdTarget = { address: { host: '127.0.0.1', port: srv.port }, exportName: '', tls: { ca: readFileSync(pki.caCert) } };
      const qt = await qemuTarget(target);
      const progress = quiet(64 * MiB);
      try {
        await qemuConvert([...qt.objectArgs, '-n', '--target-is-zero', '-f', 'qcow2', src, '--target-image-opts', qt.imageOpts], 64 * MiB, progress, new AbortController().signal);
      } finally {
        await qt.cleanup();
      }
      assert.equal(progress.bytesDone, 64 * MiB, 'qemu-img -p reported 100%');
      const r = await run('qemu-io', ['--object', `tls-creds-x509,id=t0,endpoint=client,dir=${dir}`, '--image-opts', `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${srv.port},tls-creds=t0`, '-c', 'read -P 0x3c 5M 1M', '-c', 'read -P 0 0 5M']);
      assert.equal(r.status, 0, r.stderr);
      assert.doesNotMatch(r.stdout, /verification failed/);
    } finally {
      await srv.stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
