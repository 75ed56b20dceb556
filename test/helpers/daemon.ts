// Starts a real Shoal daemon (the compiled dist/, as users run it) for a test, on ephemeral
// loopback ports and a Unix socket inside a fresh temporary data directory.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const MAIN = join(ROOT, 'dist', 'server', 'main.js');

export interface DaemonOptions {
  dataDir?: string;
  args?: string[];
  env?: Record<string, string>;
}

export class Daemon {
  proc!: ChildProcess;
  nbdPort = 0;
  nbdSocket = '';
  apiUrl = '';
  log = '';
  private ownsDir: boolean;
  readonly dataDir: string;

  constructor(private opts: DaemonOptions = {}) {
    this.ownsDir = !opts.dataDir;
    this.dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'shoal-test-'));
  }

  /** Starts the daemon and waits for its ready line. */
  async start(): Promise<this> {
    const args = [MAIN, 'serve', '--data-dir', this.dataDir, '--nbd', '127.0.0.1:0', '--nbd-socket', join(this.dataDir, 'nbd.sock'), '--api', '127.0.0.1:0', ...(this.opts.args ?? [])];
    this.proc = spawn(process.execPath, args, { env: { ...process.env, ...(this.opts.env ?? {}) }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.log = '';
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      const onData = (d: Buffer) => {
        buf += d.toString();
        this.log += d.toString();
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          try {
            const rec = JSON.parse(line);
            if (rec.msg === 'shoal ready') {
              this.nbdPort = Number(String(rec.nbd).split(':').pop());
              this.nbdSocket = rec.nbdSocket;
              this.apiUrl = rec.api;
              resolve();
            }
          } catch {
            /* not JSON */
          }
        }
      };
      this.proc.stdout!.on('data', onData);
      this.proc.stderr!.on('data', (d) => (this.log += d.toString()));
      this.proc.once('exit', (code, sig) => reject(new Error(`daemon exited (${code ?? sig}) before ready:\n${this.log}`)));
      setTimeout(() => reject(new Error(`daemon not ready after 30 s:\n${this.log}`)), 30_000).unref();
    });
    return this;
  }

  /** nbd:// URI for libnbd tools over TCP. */
  uri(exportName: string): string {
    return `nbd://127.0.0.1:${this.nbdPort}/${encodeURIComponent(exportName)}`;
  }
  /** nbd+unix:// URI for libnbd tools over the Unix socket. */
  unixUri(exportName: string): string {
    return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${this.nbdSocket}`;
  }

  async api<T = any>(method: string, path: string, body?: unknown): Promise<{ status: number; body: T }> {
    const res = await fetch(this.apiUrl + path, {
      method,
      headers: body === undefined ? {} : { 'content-type': 'application/json' },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await res.text();
    let parsed: any = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      /* plain text (metrics) */
    }
    return { status: res.status, body: parsed };
  }

  /** Creates a volume through REST and fails loudly if it cannot. */
  async createVolume(name: string, size: number, extra: Record<string, unknown> = {}): Promise<void> {
    const r = await this.api('POST', '/v1/volumes', { name, size, ...extra });
    if (r.status !== 201) throw new Error(`create ${name}: ${r.status} ${JSON.stringify(r.body)}`);
  }

  /** Waits until the daemon's output matches (lines reach this process through a pipe, a little after the fact). */
  async waitForLog(what: RegExp | ((log: string) => boolean), timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(typeof what === 'function' ? what(this.log) : what.test(this.log))) {
      if (Date.now() > deadline) throw new Error(`no log line for ${what} in:\n${this.log.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Bytes of the RAM cache's arena faulted in so far (--cache-prefault), from /v1/stats. */
  async prefaultedBytes(): Promise<number> {
    return ((await this.api('GET', '/v1/stats')).body as { cache: { prefaultedBytes: number } }).cache.prefaultedBytes;
  }

  /** Polls prefaultedBytes() until it reaches `bytes` or `timeoutMs` passes; returns the last figure. */
  async waitPrefaulted(bytes: number, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    let got = await this.prefaultedBytes();
    while (got < bytes && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
      got = await this.prefaultedBytes();
    }
    return got;
  }

  /** Graceful stop (SIGTERM), waits for exit. */
  async stop(): Promise<void> {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 15_000);
    await exited;
    clearTimeout(t);
  }

  /** kill -9: no chance to flush anything. */
  async kill9(): Promise<void> {
    if (!this.proc || this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    const exited = new Promise((r) => this.proc.once('exit', r));
    this.proc.kill('SIGKILL');
    await exited;
  }

  async restart(): Promise<this> {
    await this.stop();
    return this.start();
  }

  /** Stops the daemon and removes its data directory if the test did not give one. */
  async dispose(): Promise<void> {
    await this.stop();
    if (this.ownsDir) rmSync(this.dataDir, { recursive: true, force: true });
  }
}

export async function startDaemon(opts: DaemonOptions = {}): Promise<Daemon> {
  return new Daemon(opts).start();
}
