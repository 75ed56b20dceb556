// A real kernel block device on a machine without the nbd driver: nbdfuse exposes an NBD export as a
// file inside a FUSE mount, and losetup turns that file into /dev/loopN. Needs root (loop devices, mount).
// Tools: nbdfuse, losetup, fusermount3 (call needTools(t, ...KERNEL_DEVICE_TOOLS) first).
import { spawn, type ChildProcess } from 'node:child_process';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import type { TestContext } from 'node:test';
import { PATH_WITH_USR_BIN, needTools, run } from './tools.js';
import { setTimeout as sleep } from 'node:timers/promises';

export const KERNEL_DEVICE_TOOLS = ['nbdfuse', 'losetup', 'fusermount3'];
/** Tools for a filesystem on the device. */
export const FILESYSTEM_TOOLS = ['mkfs.ext4', 'fsck.ext4', 'mount', 'umount'];

export interface KernelDevice {
  /** /dev/loopN */
  dev: string;
  /** The nbdfuse file backing the loop device. */
  file: string;
  /** Directory nbdfuse is mounted on. */
  fuseDir: string;
  /** Detaches the loop device, unmounts the FUSE file and stops nbdfuse. Safe to call twice. */
  detach(): Promise<void>;
}

export interface AttachOptions {
  readOnly?: boolean;
  /** nbdfuse --connections N (multi-conn). Default: nbdfuse's own default. */
  connections?: number;
  /** Milliseconds to wait for the nbdfuse file to appear. Default 15 s. */
  timeoutMs?: number;
}

function isRoot(): boolean {
  return typeof process.getuid === 'function' && process.getuid() === 0;
}

/** Why a kernel device cannot be made here, or null if it can (root, /dev/fuse, loop control). */
export function kernelDeviceUnavailable(): string | null {
  if (!isRoot()) return 'needs root for losetup/mount';
  if (!existsSync('/dev/fuse')) return 'no /dev/fuse';
  if (!existsSync('/dev/loop-control')) return 'no /dev/loop-control';
  return null;
}

/** A timeout for Promise.race that does not keep the process alive once the race is won. */
const raceTimeout = (ms: number) => new Promise((r) => setTimeout(r, ms).unref());

/**
 * Exposes `uri` as a kernel block device. Throws (after cleaning up whatever it set up) if nbdfuse
 * or losetup fails.
 */
export async function attachKernelDevice(uri: string, opts: AttachOptions = {}): Promise<KernelDevice> {
  const fuseDir = mkdtempSync(join(tmpdir(), 'shoal-fuse-'));
  const mnt = join(fuseDir, 'mnt');
  mkdirSync(mnt);
  const file = join(mnt, 'nbd');
  const pidFile = join(fuseDir, 'nbdfuse.pid');
  const args: string[] = ['-P', pidFile];
  if (opts.readOnly) args.push('-r');
  if (opts.connections) args.push('-C', String(opts.connections));
  args.push(file, uri);
  let log = '';
  const proc: ChildProcess = spawn('nbdfuse', args, { env: { ...process.env, PATH: PATH_WITH_USR_BIN }, stdio: ['ignore', 'pipe', 'pipe'] });
  proc.stdout!.on('data', (d) => (log += d));
  proc.stderr!.on('data', (d) => (log += d));
  let exited = false;
  const exitP = new Promise<void>((r) => proc.once('close', () => ((exited = true), r())));
  proc.once('error', (e) => (log += String(e)));

  let dev = '';
  let detached = false;
  const detach = async () => {
    if (detached) return;
    detached = true;
    const errors: string[] = [];
    if (dev) {
      // A just-unmounted filesystem may keep the loop busy for a moment: retry.
      for (let i = 0; i < 20; i++) {
        const r = await run('losetup', ['-d', dev]);
        if (r.status === 0) break;
        if (i === 19) errors.push(`losetup -d ${dev}: ${r.stderr.trim()}`);
        await sleep(250);
      }
    }
    if (!exited) {
      const r = await run('fusermount3', ['-u', mnt]);
      if (r.status !== 0) await run('umount', ['-l', mnt]);
      await Promise.race([exitP, raceTimeout(5000)]);
      if (!exited) {
        proc.kill('SIGKILL');
        await Promise.race([exitP, raceTimeout(5000)]);
        await run('umount', ['-l', mnt]);
      }
    }
    rmSync(fuseDir, { recursive: true, force: true });
    if (errors.length) throw new Error(errors.join('; '));
  };

  try {
    const deadline = Date.now() + (opts.timeoutMs ?? 15_000);
    // nbdfuse writes the pid file once it is serving.
    for (;;) {
      if (exited) throw new Error(`nbdfuse exited before serving ${uri}: ${log}`);
      if (existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '' && existsSync(file)) break;
      if (Date.now() > deadline) throw new Error(`nbdfuse did not expose ${file} in time: ${log}`);
      await sleep(50);
    }
    if (!statSync(file).isFile()) throw new Error(`${file} is not a file`);
    const la = ['--find', '--show', '--direct-io=off'];
    if (opts.readOnly) la.push('--read-only');
    la.push(file);
    let lastErr = '';
    for (let i = 0; i < 10 && !dev; i++) {
      // --find races with other tests grabbing loop devices; losetup retries internally, and so do we.
      const r = await run('losetup', la);
      if (r.status === 0) dev = r.stdout.trim();
      else {
        lastErr = r.stderr.trim();
        await sleep(200);
      }
    }
    if (!dev.startsWith('/dev/loop')) throw new Error(`losetup ${la.join(' ')}: ${lastErr || dev}`);
  } catch (e) {
    await detach().catch(() => {});
    throw e;
  }
  return { dev, file, fuseDir, detach };
}

/** mount(8) wrapper that returns an unmount function which retries while the filesystem is busy. */
export async function mountDevice(dev: string, dir: string, options: string[] = []): Promise<() => Promise<void>> {
  const args = options.length ? ['-o', options.join(','), dev, dir] : [dev, dir];
  const r = await run('mount', args);
  if (r.status !== 0) throw new Error(`mount ${args.join(' ')}: ${r.stderr.trim()}`);
  let mounted = true;
  return async () => {
    if (!mounted) return;
    for (let i = 0; i < 20; i++) {
      const u = await run('umount', [dir]);
      if (u.status === 0) {
        mounted = false;
        return;
      }
      if (i === 19) {
        await run('umount', ['-l', dir]);
        mounted = false;
        throw new Error(`umount ${dir}: ${u.stderr.trim()}`);
      }
      await sleep(250);
    }
  };
}

/**
 * Call at the top of a kernel-device test: checks the clients and that this machine can make a
 * loop device over FUSE. Skips the test (fails it under CI=true) when it cannot.
 */
export function needKernelDevice(t: TestContext, ...extraTools: string[]): boolean {
  if (!needTools(t, ...KERNEL_DEVICE_TOOLS, ...FILESYSTEM_TOOLS, ...extraTools)) return false;
  const why = kernelDeviceUnavailable();
  if (!why) return true;
  if (process.env.CI === 'true') throw new Error(`kernel block device unavailable: ${why}`);
  t.skip(why);
  return false;
}

/** `fsck.ext4 -f -n` must find the filesystem clean. */
export async function expectFsckExt4(dev: string, what = dev, timeoutMs = 60_000): Promise<void> {
  const r = await run('fsck.ext4', ['-f', '-n', dev], { timeoutMs });
  assert.equal(r.status, 0, `fsck.ext4 -f -n on ${what} (${dev}) exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
}

/** sha256 and size of every file, the target of every symlink, and every directory under dir. */
export function fileManifest(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const ent of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, ent.name);
      const rel = relative(dir, p);
      if (rel === 'lost+found') continue;
      if (ent.isDirectory()) {
        out.set(rel + '/', 'dir');
        walk(p);
      } else if (ent.isSymbolicLink()) out.set(rel, 'link:' + readlinkSync(p));
      else out.set(rel, createHash('sha256').update(readFileSync(p)).digest('hex') + ':' + statSync(p).size);
    }
  };
  walk(dir);
  return out;
}
