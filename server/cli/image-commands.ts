// `shoal import NAME FILE` and `shoal export VOLUME[@SNAPSHOT] FILE`: disk images in and out of
// the daemon. The API says where the daemon serves NBD (GET /v1/endpoints); raw images are copied
// over NBD by the CLI itself (several connections, zeroes skipped, holes kept), qcow2/vmdk/vhdx by
// qemu-img. A progress line runs meanwhile. An import creates its volume marked incomplete and
// clears the mark only when every byte is written and flushed; if it fails or is interrupted, it
// deletes the volume, and if even that fails (the daemon died), the mark stays for
// `shoal volume list` to show. Exit codes: 0 done, 1 failed, 130 interrupted.
import { existsSync } from 'node:fs';
import { unlink } from 'node:fs/promises';
import { formatSize } from '../size.js';
import type { SnapshotInfo, VolumeInfo } from '../volume/control.js';
import type { NbdEndpoints } from '../../api/routes/system.js';
import { CliError, type ApiClient } from './api-client.js';
import { apiCommand, sizeArg } from './api-command.js';
import { UsageError, expectPositionals } from './args.js';
import { readCaFile } from './client-credentials.js';
import { print, type Ctx } from './command-context.js';
import type { ClientTls, NbdTarget } from './nbd/client-handshake.js';
import { NbdPool } from './nbd/nbd-pool.js';
import { chooseTarget, readPskFile } from './nbd/nbd-target.js';
import { formatRate, formatDuration } from './terminal.js';
import { detectFormat, formatArg, formatForName, type ImageFormat } from './transfer/image-format.js';
import { Interrupt } from './transfer/interrupt.js';
import { Progress, type Outcome } from './transfer/progress.js';
import { needQemuImg, qemuConvert, qemuTarget, virtualSize } from './transfer/qemu-img.js';
import { exportRaw, importRaw, type CopyResult } from './transfer/raw-copy.js';

/** NBD connections a raw copy opens when the daemon allows several (as nbdcopy does). */
const CONNECTIONS = 4;

const enc = encodeURIComponent;

/** The NBD target for `exportName`, from the daemon's endpoints and the TLS credentials given. */
async function nbdTarget(api: ApiClient, flags: { cacert?: string; 'tls-psk'?: string }, exportName: string): Promise<NbdTarget> {
  const ep = (await api.request<{ nbd: NbdEndpoints }>('GET', '/v1/endpoints')).body.nbd;
  const creds: ClientTls = {};
  if (flags.cacert !== undefined) creds.ca = readCaFile(flags.cacert);
  if (flags['tls-psk'] !== undefined) creds.psk = readPskFile(flags['tls-psk']);
  return chooseTarget(ep, api.baseUrl, exportName, creds);
}

interface Run<T> {
  /** What the copy produced (undefined for qemu-img, which does not say). */
  result: T;
  seconds: number;
}

/** Runs a transfer with a progress line and Ctrl-C handling; on failure or interrupt, `undo` cleans up first. */
async function transfer<T>(ctx: Ctx, progress: Progress, work: (signal: AbortSignal) => Promise<T>, undo: (outcome: Outcome) => Promise<string | null>): Promise<Run<T>> {
  const interrupt = new Interrupt();
  const t0 = performance.now();
  progress.start();
  try {
    const result = await work(interrupt.signal);
    progress.finish('done');
    return { result, seconds: (performance.now() - t0) / 1000 };
  } catch (e) {
    const outcome: Outcome = interrupt.signal.aborted ? 'interrupted' : 'failed';
    progress.finish(outcome);
    const note = await undo(outcome);
    if (note) ctx.err(`shoal: ${note}\n`);
    if (outcome === 'interrupted') throw new CliError('interrupted', 'interrupted');
    throw e;
  } finally {
    interrupt.dispose();
  }
}

function progressFor(ctx: Ctx, op: 'import' | 'export', volume: string, file: string, total: number): Progress {
  return new Progress({ label: `${op} ${volume}`, total, out: ctx.opts.terminal ?? process.stderr, fields: { operation: op, volume, file } });
}

function summary(r: CopyResult | undefined, seconds: number, size: number): string {
  const figures = r ? `: ${formatSize(r.dataBytes)} of data, ${formatSize(r.zeroBytes)} of zeroes skipped` : '';
  return `${figures} in ${formatDuration(seconds)} (${formatRate(size / Math.max(seconds, 0.001))})`;
}

export async function importCommand(ctx: Ctx, args: string[]): Promise<number> {
  const { flags, api } = apiCommand(ctx, 'import', ['size', 'tenant', 'format', 'tls-psk'], { nbdToo: true });
  const [name, file] = expectPositionals(args, 'import', ['NAME', 'FILE']);
  const requested = flags.size === undefined ? undefined : sizeArg(flags.size, '--size', true);
  const detected = await detectFormat(file!);
  const format = formatArg(flags.format) ?? detected.format;
  if (format !== 'raw') needQemuImg(format, file!);
  const imageSize = format === 'raw' ? detected.size : await virtualSize(file!, format);
  if (imageSize === 0) throw new CliError(`${file} is empty: there is nothing to import`);
  // A volume is a whole number of 512-byte sectors; a raw image's odd tail reads as zeroes after it.
  const size = requested ?? Math.ceil(imageSize / 512) * 512;
  if (size < imageSize) throw new UsageError(`--size ${flags.size} is smaller than the image (${imageSize} bytes)`);

  const body: Record<string, unknown> = { name, size, incomplete: true, ...(flags.tenant !== undefined ? { tenant: flags.tenant } : {}) };
  // Both at once: the command's fixed cost counts against the copy's speed on small images.
  const [endpoint, created] = await Promise.allSettled([nbdTarget(api(), flags, name!), api().request<VolumeInfo>('POST', '/v1/volumes', body)]);
  if (endpoint.status === 'rejected') {
    if (created.status === 'fulfilled') await api().request('DELETE', `/v1/volumes/${enc(name!)}`).catch(() => {});
    throw endpoint.reason;
  }
  const target = endpoint.value;
  let volume: VolumeInfo;
  try {
    if (created.status === 'rejected') throw created.reason;
    volume = created.value.body;
  } catch (e) {
    if (e instanceof CliError && e.code === 'volume_exists') {
      const old = await api()
        .request<VolumeInfo>('GET', `/v1/volumes/${enc(name!)}`)
        .then((r) => r.body)
        .catch(() => null);
      if (old?.incomplete) throw new CliError(`volume ${name} already exists, left incomplete by an import that did not finish: delete it first (shoal volume delete ${name} --force)`, e.code);
    }
    throw e;
  }

  const progress = progressFor(ctx, 'import', name!, file!, imageSize);
  const undo = async (): Promise<string | null> => {
    try {
      await api().request('DELETE', `/v1/volumes/${enc(name!)}?force=true`);
      return `deleted the half-imported volume ${name}`;
    } catch (e) {
      return `volume ${name} is left marked incomplete (deleting it failed: ${(e as Error).message}): delete it with \`shoal volume delete ${name} --force\``;
    }
  };
  const run = await transfer(
    ctx,
    progress,
    async (signal) => {
      if (format === 'raw') return copyWithPool(target, signal, (pool) => importRaw(file!, pool, volume.chunkSize, { signal, progress }));
      const qt = await qemuTarget(target);
      try {
        // -n: the volume exists; --target-is-zero: it reads as zeroes, so zeroes need not be written; -W: writes in any order.
        await qemuConvert([...qt.objectArgs, '-n', '--target-is-zero', '-W', '-f', format, file!, '--target-image-opts', qt.imageOpts], imageSize, progress, signal);
      } finally {
        await qt.cleanup();
      }
      return undefined;
    },
    undo,
  );
  await api().request('POST', `/v1/volumes/${enc(name!)}/complete`);
  const r = run.result;
  return print(ctx, { volume: name, file, format, imageBytes: imageSize, ...(r ?? {}), seconds: Math.round(run.seconds * 1000) / 1000 }, () =>
    `imported ${file} (${format}, ${formatSize(imageSize)}) into volume ${name}${summary(r, run.seconds, imageSize)}\n`,
  );
}

/** Opens the connections, runs the copy, closes them (at once, if it failed). */
async function copyWithPool<T>(target: NbdTarget, signal: AbortSignal, copy: (pool: NbdPool) => Promise<T>): Promise<T> {
  const pool = await NbdPool.open(target, CONNECTIONS);
  const stop = () => pool.destroy();
  signal.addEventListener('abort', stop, { once: true });
  try {
    const r = await copy(pool);
    // Everything is flushed: the sessions end politely while the command goes on (their sockets keep the process alive until then).
    void pool.close();
    return r;
  } catch (e) {
    pool.destroy();
    throw e;
  } finally {
    signal.removeEventListener('abort', stop);
  }
}

/** "vol" or "vol@snap" and its size, through the API (which also answers for tenants). */
async function exportSize(api: ApiClient, ref: string): Promise<number> {
  const at = ref.indexOf('@');
  if (at < 0) return (await api.request<VolumeInfo>('GET', `/v1/volumes/${enc(ref)}`)).body.size;
  const [volume, snap] = [ref.slice(0, at), ref.slice(at + 1)];
  if (volume === '' || snap === '' || snap.includes('@')) throw new UsageError(`"${ref}" must be VOLUME or VOLUME@SNAPSHOT`);
  const snaps = (await api.request<{ snapshots: SnapshotInfo[] }>('GET', `/v1/volumes/${enc(volume)}/snapshots`)).body.snapshots;
  const s = snaps.find((x) => x.name === snap);
  if (!s) throw new CliError(`volume ${volume} has no snapshot ${JSON.stringify(snap)}`, 'snapshot_not_found');
  return s.size;
}

export async function exportCommand(ctx: Ctx, args: string[]): Promise<number> {
  const { flags, api } = apiCommand(ctx, 'export', ['format', 'force', 'tls-psk'], { nbdToo: true });
  const [ref, file] = expectPositionals(args, 'export', ['VOLUME[@SNAPSHOT]', 'FILE']);
  const format: ImageFormat = formatForName(file!, formatArg(flags.format));
  if (format !== 'raw') needQemuImg(format, file!);
  if (!flags.force && existsSync(file!)) throw new CliError(`${file} already exists: remove it, or give --force to replace it`);
  const size = await exportSize(api(), ref!);
  const target = await nbdTarget(api(), flags, ref!);
  const progress = progressFor(ctx, 'export', ref!, file!, size);
  // The file is ours to remove only once we have started writing it.
  let started = false;
  const undo = async (): Promise<string | null> => {
    if (!started) return null;
    await unlink(file!).catch(() => {});
    return `removed the unfinished ${file}`;
  };
  const run = await transfer(
    ctx,
    progress,
    async (signal) => {
      if (format === 'raw') {
        return copyWithPool(target, signal, (pool) => exportRaw(file!, pool, flags.force === true, { signal, progress }, () => (started = true)));
      }
      const qt = await qemuTarget(target);
      try {
        started = true;
        await qemuConvert([...qt.objectArgs, '--image-opts', qt.imageOpts, '-O', format, file!], size, progress, signal);
      } finally {
        await qt.cleanup();
      }
      return undefined;
    },
    undo,
  );
  return print(ctx, { export: ref, file, format, sizeBytes: size, ...(run.result ?? {}), seconds: Math.round(run.seconds * 1000) / 1000 }, () =>
    `exported ${ref} (${formatSize(size)}) to ${file} (${format})${summary(run.result, run.seconds, size)}\n`,
  );
}
