// Shared helpers for the benchmarks: process/temp-dir cleanup (also on Ctrl-C), starting Shoal and
// nbdkit on Unix sockets, running fio's nbd engine and parsing its JSON, and a system header line.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { connect, createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Daemon, MAIN, ROOT } from '../test/helpers/daemon.js';

export { ROOT };
export const PATH_WITH_USR_BIN = `/usr/bin:/usr/sbin:/sbin:/bin:${process.env.PATH ?? ''}`;
/** Debian's python has `import nbd` (python3-libnbd); the first python3 on PATH may not. */
export const PY = '/usr/bin/python3';

// ------------------------------------------------------------------ cleanup

const children = new Set<ChildProcess>();
const dirs = new Set<string>();
const disposers: (() => Promise<void>)[] = [];
const diagnostics: (() => string)[] = [];
let cleaning: Promise<void> | null = null;

export function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  dirs.add(d);
  return d;
}

export function onCleanup(fn: () => Promise<void>): void {
  disposers.push(fn);
}

export function cleanup(): Promise<void> {
  cleaning ??= (async () => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
    for (const fn of disposers.reverse()) await fn().catch((e) => console.error('cleanup:', e));
    await sleep(200);
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  })();
  return cleaning;
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    console.error(`\n${sig}: cleaning up…`);
    void cleanup().finally(() => process.exit(130));
  });
}

/** Runs main(), always cleans up, exits non-zero on error. */
export function runMain(main: () => Promise<void>): void {
  main()
    .then(() => cleanup())
    .catch(async (e) => {
      console.error(e instanceof Error ? e.stack : e);
      for (const d of diagnostics) console.error(d());
      await cleanup();
      process.exit(1);
    });
}

// ------------------------------------------------------------------ processes

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion; tracked, so Ctrl-C kills it. */
export function run(cmd: string, args: string[], opts: { input?: string; timeoutMs?: number; env?: Record<string, string> } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: { ...process.env, PATH: PATH_WITH_USR_BIN, ...(opts.env ?? {}) }, stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d) => out.push(d));
    child.stderr!.on('data', (d) => err.push(d));
    const timer = opts.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs) : null;
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      children.delete(child);
      reject(e);
    });
    child.on('close', (status) => {
      if (timer) clearTimeout(timer);
      children.delete(child);
      resolve({ status, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

export async function runOk(cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

/** Starts a long-running child (tracked for cleanup). */
export function spawnTracked(cmd: string, args: string[], env: Record<string, string> = {}): ChildProcess {
  const child = spawn(cmd, args, { env: { ...process.env, PATH: PATH_WITH_USR_BIN, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

async function waitForFile(path: string, ms: number, proc?: ChildProcess, what = path): Promise<void> {
  const end = Date.now() + ms;
  while (!existsSync(path)) {
    if (proc && (proc.exitCode !== null || proc.signalCode !== null)) throw new Error(`${what} exited before creating ${path}`);
    if (Date.now() > end) throw new Error(`${what}: ${path} did not appear within ${ms} ms`);
    await sleep(20);
  }
}

// ------------------------------------------------------------------ Shoal

export interface Shoal {
  dataDir: string;
  nbdSocket: string;
  /** NBD over TCP on 127.0.0.1. */
  nbdPort: number;
  apiUrl: string;
  pid: number;
  unixUri(exportName: string): string;
  api<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }>;
  createVolume(name: string, size: number, extra?: Record<string, unknown>): Promise<void>;
  dispose(): Promise<void>;
}

/** BENCH_DAEMON_NODE_OPTIONS: node flags for the daemon only (--cpu-prof, a diagnostic --import), as its env. */
export function daemonNodeEnv(): NodeJS.ProcessEnv {
  const nodeOptions = process.env.BENCH_DAEMON_NODE_OPTIONS;
  return nodeOptions ? { NODE_OPTIONS: nodeOptions } : {};
}

/**
 * Starts the real daemon (dist/server/main.js, via test/helpers/daemon.ts) on ephemeral loopback ports and
 * a Unix socket in its own temporary data directory.
 */
export async function startShoal(cacheSize = '1G', extraArgs: string[] = []): Promise<Shoal> {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} does not exist: build first (npm run build)`);
  // Keep the log level at info: Daemon waits for the "shoal ready" line, which is logged at info.
  const d = new Daemon({ args: ['--cache-size', cacheSize, ...extraArgs], env: daemonNodeEnv() });
  let stopping = false;
  const dispose = () => {
    stopping = true;
    return d.dispose();
  };
  onCleanup(dispose);
  diagnostics.push(() => `--- shoal daemon log (last 6000 chars) ---\n${d.log.slice(-6000)}`);
  await d.start();
  const shoal: Shoal = {
    dataDir: d.dataDir,
    nbdSocket: d.nbdSocket,
    nbdPort: d.nbdPort,
    apiUrl: d.apiUrl,
    pid: d.proc.pid!,
    unixUri: (e) => d.unixUri(e),
    api: (m, p, b) => d.api(m, p, b),
    createVolume: (n, s, x) => d.createVolume(n, s, x),
    dispose,
  };
  d.proc.on('exit', (code, sig) => {
    if (!cleaning && !stopping) console.error(`!! shoal daemon exited unexpectedly (${code ?? sig})\n${d.log.slice(-4000)}`);
  });
  return shoal;
}


/** Fails loudly on a non-2xx reply. */
export async function apiOk<T = any>(s: Shoal, method: string, path: string, body?: unknown): Promise<T> {
  const r = await s.api<T>(method, path, body);
  if (r.status < 200 || r.status > 299) throw new Error(`${method} ${path} ${JSON.stringify(body ?? '')}: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

// ------------------------------------------------------------------ nbdkit

export interface NbdServer {
  uri: string;
  proc: ChildProcess;
  stop(): Promise<void>;
}

/**
 * Another NBD server (nbdkit, qemu-nbd) in the foreground, listening on the Unix socket `socket` or on
 * TCP 127.0.0.1:port; stopped at cleanup.
 */
export async function startNbdServer(cmd: string, args: string[], socket: string | { port: number }): Promise<NbdServer> {
  if (typeof socket === 'string') rmSync(socket, { force: true });
  const proc = spawnTracked(cmd, args);
  let log = '';
  proc.stdout!.on('data', (d) => (log += d.toString()));
  proc.stderr!.on('data', (d) => (log += d.toString()));
  try {
    if (typeof socket === 'string') await waitForFile(socket, 20_000, proc, cmd);
    else await waitForPort(socket.port, 20_000, proc, cmd);
  } catch (e) {
    throw new Error(`${(e as Error).message}\n${log}`, { cause: e });
  }
  const stop = async () => {
    if (proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    await exited;
  };
  onCleanup(stop);
  const uri = typeof socket === 'string' ? `nbd+unix:///?socket=${socket}` : `nbd://127.0.0.1:${socket.port}/`;
  return { uri, proc, stop };
}

async function waitForPort(port: number, ms: number, proc: ChildProcess, what: string): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const c = connect({ port, host: '127.0.0.1' }, () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (up) return;
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`${what} exited before listening on port ${port}`);
    if (Date.now() > end) throw new Error(`${what}: port ${port} not listening within ${ms} ms`);
    await sleep(20);
  }
}

/** nbdkit on a Unix socket, e.g. startNbdkit(dir, 'memory', ['1G']). */
export function startNbdkit(dir: string, plugin: string, pluginArgs: string[]): Promise<NbdServer> {
  const socket = join(dir, `nbdkit-${plugin}.sock`);
  return startNbdServer('nbdkit', ['-f', '--exit-with-parent', '-U', socket, plugin, ...pluginArgs], socket);
}

// ------------------------------------------------------------------ fio

export interface FioResult {
  iops: number;
  bwBytes: number; // bytes/s
  clatP50Us: number;
  clatP99Us: number;
  clatP9999Us: number;
  clatMaxUs: number;
  clatMeanUs: number;
  ios: number;
  errors: number;
  /** FLUSH latency percentiles when the job ran with --fsync (fio's "sync" section); 0 otherwise. */
  syncP50Us: number;
  syncP99Us: number;
  raw: any;
}

export interface FioJob {
  uri: string;
  rw: 'randread' | 'randwrite' | 'read' | 'write' | 'randrw';
  bs: string;
  iodepth: number;
  size?: number;
  runtimeSec?: number; // time_based when given
  rampSec?: number;
  extra?: string[];
  /**
   * Run fio with this HOME (as user nobody when we are root): libnbd then takes TLS certificates from
   * HOME/.pki/libnbd, since fio's uri may not name local files (tls-certificates=). The directory
   * must be writable by that user; fio's report goes there.
   */
  tlsHome?: string;
}

/** Runs one fio job with the nbd engine; the JSON report goes to a file (fio prints chatter on stdout). */
export async function fio(job: FioJob, outDir: string): Promise<FioResult> {
  const { args, out } = fioArgs(job, outDir);
  // TLS through libnbd's default certificate directory: libnbd refuses tls-certificates= in a URI
  // from fio, but reads $HOME/.pki/libnbd; as root it would not, so fio runs as nobody then.
  const asNobody = job.tlsHome && process.getuid?.() === 0 ? ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'] : [];
  const r = job.tlsHome ? await run(asNobody[0] ?? 'env', [...asNobody.slice(1), 'env', `HOME=${job.tlsHome}`, 'fio', ...args]) : await run('fio', args);
  if (r.status !== 0 || !existsSync(out)) throw new Error(`fio ${args.join(' ')} exited ${r.status}:\n${r.stderr}\n${r.stdout}`);
  return parseFio(readFileSync(out, 'utf8'));
}

/** A fio job left running (time-based, up to an hour) until stop(): load for as long as something else takes. */
export function fioUntilStopped(job: Omit<FioJob, 'runtimeSec'>, outDir: string): { stop(): Promise<FioResult> } {
  const { args, out } = fioArgs({ ...job, runtimeSec: 3600 }, outDir);
  const proc = spawnTracked('fio', args);
  let err = '';
  proc.stderr!.on('data', (d) => (err += d.toString()));
  const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
  return {
    async stop() {
      proc.kill('SIGINT'); // fio ends its jobs and writes its report
      const code = await exited;
      if (!existsSync(out)) throw new Error(`fio ${args.join(' ')} exited ${code} without a report:\n${err}`);
      return parseFio(readFileSync(out, 'utf8'));
    },
  };
}

function fioArgs(job: FioJob, outDir: string): { args: string[]; out: string } {
  const out = join(job.tlsHome ?? outDir, `fio-${process.hrtime.bigint()}.json`);
  const args = [
    '--name=bench',
    '--ioengine=nbd',
    `--uri=${job.uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.iodepth}`,
    '--numjobs=1',
    '--output-format=json',
    `--output=${out}`,
  ];
  if (job.size !== undefined) args.push(`--size=${job.size}`);
  if (job.runtimeSec !== undefined) args.push('--time_based', `--runtime=${job.runtimeSec}`);
  if (job.rampSec) args.push(`--ramp_time=${job.rampSec}`);
  // Fresh random bytes per write, and per run: no dedup advantage. fio seeds its generators alike in
  // every run unless told (randrepeat=1 by default), so refill_buffers alone wrote the same bytes in
  // every run, and every write workload started the same stream: from the second run on (and in the
  // 1 MiB rows, after the 4K rows) Shoal met its own earlier data, dedup hits and stale index entries.
  // A job that asks for repeatable randomness in `extra` gets it (fio takes the last setting).
  if (job.rw.includes('write')) args.push('--refill_buffers', '--randrepeat=0');
  args.push(...(job.extra ?? []));
  return { args, out };
}

export function parseFio(text: string): FioResult {
  const j = JSON.parse(text.slice(text.indexOf('{')));
  const job = j.jobs[0];
  const side = job.read.io_bytes >= job.write.io_bytes ? job.read : job.write;
  const pct = side.clat_ns.percentile ?? {};
  const syncPct = job.sync?.lat_ns?.percentile ?? {};
  return {
    iops: side.iops,
    bwBytes: side.bw_bytes,
    clatP50Us: (pct['50.000000'] ?? 0) / 1000,
    clatP99Us: (pct['99.000000'] ?? 0) / 1000,
    clatP9999Us: (pct['99.990000'] ?? 0) / 1000,
    clatMaxUs: side.clat_ns.max / 1000,
    clatMeanUs: side.clat_ns.mean / 1000,
    ios: side.total_ios,
    errors: job.error,
    syncP50Us: (syncPct['50.000000'] ?? 0) / 1000,
    syncP99Us: (syncPct['99.000000'] ?? 0) / 1000,
    raw: job,
  };
}

// ------------------------------------------------------------------ misc

/** A TCP port on 127.0.0.1 that was free a moment ago (for servers that cannot report an ephemeral one). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}

/** CPU seconds (user + system) a process has used so far, from /proc. */
export function cpuSeconds(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime + stime in clock ticks (USER_HZ = 100)
}

/**
 * Bytes written so far to the block device that holds `path` (/proc/diskstats, sectors of 512 bytes).
 * What reaches the disk, after the page cache: a process's write_bytes counts whole large folios when a
 * 4 KiB write dirties one, here 2.3 GB for 2,000 writes of 4 KiB that put 47 MiB on the disk.
 */
export function diskWrittenBytes(path: string): number {
  const dev = statSync(path).dev;
  const major = Math.floor(dev / 256) & 0xfff;
  const minor = (dev & 0xff) | ((dev >> 12) & 0xfff00);
  for (const line of readFileSync('/proc/diskstats', 'utf8').split('\n')) {
    const f = line.trim().split(/\s+/);
    if (Number(f[0]) === major && Number(f[1]) === minor) return Number(f[9]) * 512;
  }
  return NaN;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Largest of `xs` (0 when empty); a loop, since Math.max(...xs) overflows the stack past ~100k values. */
export function maxOf(xs: number[]): number {
  let m = 0;
  for (const x of xs) if (x > m) m = x;
  return m;
}

/**
 * Waits until the daemon has moved every logged fingerprint into its on-disk index (dedupLogEntries 0),
 * plus 1 s for the commit of the last batch, and returns the seconds it took. New data is indexed in the
 * background once writes pause; a measurement taken meanwhile measures that work too.
 */
export async function waitDedupIndexed(stats: () => Promise<{ dedupLogEntries: number }>, maxMs = 600_000): Promise<number> {
  const t0 = performance.now();
  while ((await stats()).dedupLogEntries > 0) {
    if (performance.now() - t0 > maxMs) throw new Error(`the dedup log was not indexed within ${Math.round(maxMs / 1000)} s`);
    await sleep(200);
  }
  await sleep(1000);
  return (performance.now() - t0) / 1000;
}

export function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))];
}

export function parseSizeEnv(name: string, def: string): number {
  const v = (process.env[name] ?? def).trim();
  const m = /^(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?$/i.exec(v);
  if (!m) throw new Error(`${name}=${v}: expected a size like 1G, 512M or a byte count`);
  const mult = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[m[2].toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  return Math.floor(Number(m[1]) * mult);
}

export function numEnv(name: string, def: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name}=${v}: expected a positive number`);
  return n;
}

export function fmtBytes(n: number): string {
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return `${Number.isInteger(n) ? n : n.toFixed(2)} ${u[i]}`;
}

function firstLine(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env: { ...process.env, PATH: PATH_WITH_USR_BIN } });
  return (r.stdout ?? '').split('\n')[0].trim() || '?';
}

/** One header line: date, nproc, CPU model, kernel, node, fio version. */
export function systemHeader(): string {
  let model = cpus()[0]?.model ?? '?';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) model = m[1].trim();
  } catch {
    /* not Linux */
  }
  return [
    `date: ${new Date().toISOString()}`,
    `nproc: ${firstLine('nproc', [])}`,
    `cpu: ${model}`,
    `kernel: ${firstLine('uname', ['-sr'])}`,
    `node: ${process.version}`,
    `fio: ${firstLine('fio', ['--version'])}`,
    `nbdkit: ${firstLine('nbdkit', ['--version'])}`,
    `loadavg at start: ${loadavg().map((x) => x.toFixed(2)).join(' ')}`,
  ].join(' · ');
}

/** Writes a file of `size` random bytes (for fills). */
export async function randomFile(path: string, size: number): Promise<void> {
  const mib = Math.ceil(size / (1 << 20));
  await runOk('dd', ['if=/dev/urandom', `of=${path}`, 'bs=1M', `count=${mib}`, 'status=none', 'iflag=fullblock']);
  if (mib * (1 << 20) !== size) await runOk('truncate', ['-s', String(size), path]);
}

export const fix = (n: number, d = 0): string => (Number.isFinite(n) ? n.toFixed(d) : '—');
