// A real Prometheus scrapes /metrics of a daemon that has --api-tokens, with a reader token in a
// credentials file (as the README shows); the same target without the token is down with a 401.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, MAIN } from '../helpers/daemon.js';
import { needTools, run, PATH_WITH_USR_BIN } from '../helpers/tools.js';

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

test('Prometheus scrapes /metrics with a reader token; without one the target is down with 401', async (t) => {
  if (!needTools(t, 'prometheus')) return;
  const dir = mkdtempSync(join(tmpdir(), 'shoal-prom-'));
  const tokens = join(dir, 'api-tokens.json');
  const made = await run(process.execPath, [MAIN, 'token', 'create', 'prometheus', '--role', 'reader', '--tokens-file', tokens]);
  assert.equal(made.status, 0, made.stderr);
  writeFileSync(join(dir, 'reader.token'), made.stdout, { mode: 0o600 });
  const d = await startDaemon({ args: ['--api-tokens', tokens] });
  const target = d.apiUrl.replace(/^http:\/\//, '');
  writeFileSync(
    join(dir, 'prometheus.yml'),
    `global:
  scrape_interval: 1s
scrape_configs:
  - job_name: shoal
    authorization:
      credentials_file: ${join(dir, 'reader.token')}
    static_configs: [{ targets: ['${target}'] }]
  - job_name: shoal-without-token
    static_configs: [{ targets: ['${target}'] }]
`,
  );
  const port = await freePort();
  const prom = spawn('prometheus', [`--config.file=${join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${port}`], {
    env: { ...process.env, PATH: PATH_WITH_USR_BIN },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let promLog = '';
  prom.stderr!.on('data', (b) => (promLog += b.toString()));
  try {
    // Both targets scraped at least once, read from Prometheus' own API.
    const t0 = Date.now();
    let targets: any[] = [];
    while (Date.now() - t0 < 30_000) {
      try {
        const res = await fetch(`http://127.0.0.1:${port}/api/v1/targets`);
        targets = (await res.json()).data.activeTargets;
        if (targets.length === 2 && targets.every((x) => x.health !== 'unknown')) break;
      } catch {
        /* not up yet */
      }
      await new Promise((r) => setTimeout(r, 250));
    }
    const by = Object.fromEntries(targets.map((x) => [x.labels.job, x]));
    assert.equal(by.shoal?.health, 'up', `with the token: ${JSON.stringify(by.shoal)}\n${promLog}`);
    assert.equal(by['shoal-without-token']?.health, 'down');
    assert.match(by['shoal-without-token'].lastError, /401/);
    // And the figures arrive.
    const q = await (await fetch(`http://127.0.0.1:${port}/api/v1/query?query=shoal_cache_capacity_bytes`)).json();
    assert.equal(Number(q.data.result[0]?.value[1]), 2 ** 30);
  } finally {
    const exited = new Promise((r) => prom.once('exit', r));
    prom.kill('SIGTERM');
    await exited;
    await d.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});
