// qcow2, vmdk and vhdx images go through `qemu-img convert`, which speaks NBD itself: it reads or
// writes the daemon's export directly (no temporary file), skips zeroes (--target-is-zero on a new
// volume; the export's block status when reading), and reports its progress with -p, which is
// turned into the same progress line as a raw copy. With NBD over TLS, the CLI's credentials
// (--cacert or --tls-psk) go into a private temporary directory as qemu's tls-creds object wants them.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CliError } from '../api-client.js';
import type { NbdTarget } from '../nbd/client-handshake.js';
import type { ImageFormat } from './image-format.js';
import type { Progress } from './progress.js';

let found: boolean | undefined;
function hasQemuImg(): boolean {
  found ??= spawnSync('qemu-img', ['--version'], { stdio: 'ignore' }).status === 0;
  return found;
}

export function needQemuImg(format: ImageFormat, path: string): void {
  if (hasQemuImg()) return;
  throw new CliError(
    `${path} is a ${format} image, which shoal converts with qemu-img, and qemu-img is not installed: install it (Debian and Ubuntu: apt-get install qemu-utils; Fedora: dnf install qemu-img), or convert the image to raw first`,
  );
}

/** qemu's option syntax doubles a comma inside a value. */
const q = (v: string) => v.replace(/,/g, ',,');

/** What qemu-img is given to reach the export: --object arguments and the image options. */
export interface QemuTarget {
  objectArgs: string[];
  imageOpts: string;
  cleanup(): Promise<void>;
}

export async function qemuTarget(t: NbdTarget): Promise<QemuTarget> {
  const server = 'path' in t.address ? `server.type=unix,server.path=${q(t.address.path)}` : `server.type=inet,server.host=${q(t.address.host)},server.port=${t.address.port}`;
  const base = `driver=nbd,${server},export=${q(t.exportName)}`;
  if (!t.tls) return { objectArgs: [], imageOpts: base, cleanup: async () => {} };
  const dir = await mkdtemp(join(tmpdir(), 'shoal-qemu-tls-')); // mode 0700
  const cleanup = () => rm(dir, { recursive: true, force: true });
  try {
    let object: string;
    if (t.tls.psk) {
      await writeFile(join(dir, 'keys.psk'), `${t.tls.psk.identity}:${t.tls.psk.key.toString('hex')}\n`, { mode: 0o600 });
      object = `tls-creds-psk,id=shoaltls,endpoint=client,dir=${q(dir)},username=${q(t.tls.psk.identity)}`;
    } else {
      if (!t.tls.ca) throw new CliError('the daemon requires TLS for NBD, and qemu-img needs the CA that signed its certificate: give it with --cacert FILE');
      await writeFile(join(dir, 'ca-cert.pem'), t.tls.ca, { mode: 0o600 });
      object = `tls-creds-x509,id=shoaltls,endpoint=client,dir=${q(dir)}`;
    }
    const hostname = 'host' in t.address ? `,tls-hostname=${q(t.address.host)}` : '';
    return { objectArgs: ['--object', object], imageOpts: `${base},tls-creds=shoaltls${hostname}`, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** The virtual size of an image (what the volume must hold). */
export async function virtualSize(path: string, format: ImageFormat): Promise<number> {
  const r = await runQemuImg(['info', '--output=json', '-f', format, path]);
  try {
    const size = (JSON.parse(r) as { 'virtual-size'?: unknown })['virtual-size'];
    if (typeof size === 'number' && Number.isSafeInteger(size) && size > 0) return size;
  } catch {
    /* fall through */
  }
  throw new CliError(`qemu-img info did not say how big ${path} is`);
}

function runQemuImg(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', (e) => reject(new CliError(`cannot run qemu-img (${e.message})`)));
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new CliError(`qemu-img ${args[0]} failed: ${lastLine(err) || `exit ${code}`}`))));
  });
}

const lastLine = (s: string) => s.trim().split('\n').at(-1)?.replace(/^qemu-img: /, '') ?? '';

/**
 * Runs `qemu-img convert -p ARGS`; its "(42.00/100%)" reports become `progress` of `total`
 * bytes. Abort stops it (SIGTERM).
 */
export function qemuConvert(args: string[], total: number, progress: Progress, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('qemu-img', ['convert', '-p', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    let tail = '';
    child.stdout.on('data', (d: Buffer) => {
      tail += d.toString('latin1');
      const all = [...tail.matchAll(/\((\d+(?:\.\d+)?)\/100%\)/g)];
      if (all.length > 0) progress.set(Math.floor((Number(all.at(-1)![1]) / 100) * total));
      tail = tail.slice(-64);
    });
    child.stderr.on('data', (d) => (err += d));
    const stop = () => child.kill('SIGTERM');
    signal.addEventListener('abort', stop, { once: true });
    child.on('error', (e) => reject(new CliError(`cannot run qemu-img (${e.message})`)));
    child.on('close', (code, sig) => {
      signal.removeEventListener('abort', stop);
      if (signal.aborted) reject(new CliError('interrupted'));
      else if (code === 0) resolve();
      else reject(new CliError(`qemu-img convert failed: ${lastLine(err) || (sig ? `killed by ${sig}` : `exit ${code}`)}`));
    });
  });
}
