// A real Prometheus (Debian's `prometheus` package) for a test: 127.0.0.1 on a free port, its own
// temporary storage, the configuration the test gives, stopped and removed by stop().
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from './free-port.js';

export interface PromSample {
  metric: Record<string, string>;
  values?: Array<[number, string]>;
  value?: [number, string];
}

export class Prometheus {
  private proc: ChildProcess | null = null;
  private readonly dir = mkdtempSync(join(tmpdir(), 'shoal-prom-'));
  url = '';
  log = '';

  /** Starts Prometheus with this configuration (YAML text) and waits until it is ready. */
  async start(config: string): Promise<this> {
    const configFile = join(this.dir, 'prometheus.yml');
    writeFileSync(configFile, config);
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      this.url = `http://127.0.0.1:${port}`;
      this.log = '';
      const proc = spawn('prometheus', [`--config.file=${configFile}`, `--storage.tsdb.path=${join(this.dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      this.proc = proc;
      proc.stdout!.on('data', (d) => (this.log += d));
      proc.stderr!.on('data', (d) => (this.log += d));
      if (await this.ready(proc)) return this;
      await this.stop(false);
      // The port was taken between freePort() and Prometheus binding it: try another.
      if (attempt >= 3 || !/address already in use/.test(this.log)) throw new Error(`prometheus did not start:\n${this.log}`);
    }
  }

  private async ready(proc: ChildProcess): Promise<boolean> {
    const deadline = Date.now() + 20_000;
    while (Date.now() < deadline && proc.exitCode === null) {
      try {
        if ((await fetch(`${this.url}/-/ready`)).ok) return true;
      } catch {
        /* not listening yet */
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  }

  /** GET /api/v1/PATH with query parameters; throws unless Prometheus answers status "success". */
  async api<T = any>(path: string, params: Record<string, string | number> = {}): Promise<T> {
    const qs = new URLSearchParams(Object.entries(params).map(([k, v]) => [k, String(v)]));
    const res = await fetch(`${this.url}/api/v1/${path}?${qs}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`prometheus ${path} ${JSON.stringify(params)}: ${body.error ?? res.status}`);
    return body.data;
  }

  /** An instant query's series. */
  async query(expr: string): Promise<PromSample[]> {
    return (await this.api<{ result: PromSample[] }>('query', { query: expr })).result;
  }

  /** A range query's series, one point per second from `start` to `end` (Unix seconds). */
  async queryRange(expr: string, start: number, end: number): Promise<PromSample[]> {
    return (await this.api<{ result: PromSample[] }>('query_range', { query: expr, start, end, step: 1 })).result;
  }

  /** Stops Prometheus (SIGTERM, then SIGKILL after 10 s) and, unless told not to, removes its storage. */
  async stop(removeDir = true): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (p && p.exitCode === null && p.signalCode === null) {
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      const t = setTimeout(() => p.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(t);
    }
    if (removeDir) rmSync(this.dir, { recursive: true, force: true });
  }
}
