// Real NBD clients used by the tests. With CI=true a missing client fails the test instead of skipping it.
import { spawnSync, spawn, type SpawnOptions } from 'node:child_process';
import type { TestContext } from 'node:test';

// nbdsh is python3-libnbd: call Debian's python, not whatever python3 comes first on PATH.
export const PY = '/usr/bin/python3';
export const PATH_WITH_USR_BIN = `/usr/bin:/usr/sbin:/sbin:/bin:${process.env.PATH ?? ''}`;

const found = new Map<string, boolean>();
export function hasTool(name: string): boolean {
  if (!found.has(name)) {
    let ok: boolean;
    if (name === 'nbdsh') ok = spawnSync(PY, ['-c', 'import nbd'], { stdio: 'ignore' }).status === 0;
    else ok = spawnSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore', env: { ...process.env, PATH: PATH_WITH_USR_BIN } }).status === 0;
    found.set(name, ok);
  }
  return found.get(name)!;
}

/** Call at the top of a test: skips it (or fails it under CI=true) when a client is missing. */
export function needTools(t: TestContext, ...names: string[]): boolean {
  const missing = names.filter((n) => !hasTool(n));
  if (missing.length === 0) return true;
  const msg = `missing client(s): ${missing.join(', ')}`;
  if (process.env.CI === 'true') throw new Error(`${msg} (CI=true: install them in .ci/run)`);
  t.skip(msg);
  return false;
}

/** Call at the top of a test that mounts or makes loop devices: skips it (fails it under CI=true) unless root. */
export function needRoot(t: TestContext, what: string): boolean {
  if (process.getuid?.() === 0) return true;
  if (process.env.CI === 'true') throw new Error(`${what} needs root (CI=true: run the tests as root)`);
  t.skip(`${what} needs root`);
  return false;
}

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion (async, so the daemon in this process—if any—keeps running). */
export function run(cmd: string, args: string[], opts: SpawnOptions & { input?: string | Buffer; timeoutMs?: number; onStdout?: (chunk: string) => void } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, env: { ...process.env, PATH: PATH_WITH_USR_BIN, ...(opts.env ?? {}) }, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d) => {
      out.push(d);
      opts.onStdout?.(d.toString());
    });
    child.stderr!.on('data', (d) => err.push(d));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (status) => {
      clearTimeout(timer);
      resolve({ status, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() });
    });
    if (opts.input !== undefined) child.stdin!.end(opts.input);
    else child.stdin!.end();
  });
}

/** Like run, but throws with the command's stderr when it exits non-zero. */
export async function runOk(cmd: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} exited ${r.status}: ${r.stderr || r.stdout}`);
  return r.stdout;
}

/** Runs a Python snippet with libnbd (what nbdsh is made of). `h` is not pre-made. */
export function nbdPython(script: string, opts: Parameters<typeof run>[2] = {}): Promise<RunResult> {
  return run(PY, ['-c', script], opts);
}
