// deploy/prometheus/shoal-rules.yml and deploy/grafana/shoal-dashboard.json against a real
// Prometheus: promtool checks the rules and runs their unit tests; then Prometheus (1 s scrapes,
// the rules loaded) watches a running Shoal under fio traffic, and every dashboard panel's query
// must return data through Prometheus's HTTP API, every rule must evaluate without error, and
// ShoalDown must go pending once the daemon stops.
//
// S3 tier: the dashboard's "S3 tier" row and the rule group "shoal-s3" query shoal_s3_* metrics,
// whose upload figures exist only while an S3 store runs; their data checks are skipped until the
// daemon exports shoal_s3_upload_lag_seconds (they are still parsed, checked by promtool, and
// unit-tested).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { ROOT, startDaemon } from '../helpers/daemon.js';
import { needTools, run, runOk } from '../helpers/tools.js';
import { Prometheus } from '../helpers/prometheus.js';

const RULES = join(ROOT, 'deploy', 'prometheus', 'shoal-rules.yml');
const RULE_TESTS = join(ROOT, 'deploy', 'prometheus', 'shoal-rules.test.yml');
const DASHBOARD = join(ROOT, 'deploy', 'grafana', 'shoal-dashboard.json');
const S3_ROW = /^S3 tier/;
const S3_GROUP = 'shoal-s3';
// What Grafana puts in place of the dashboard's variables: the instance variable's "All" value
// (its allValue), and a rate window of several 1 s scrapes.
const GRAFANA_VARIABLES: Record<string, string> = { $instance: '.+', $__rate_interval: '10s' };

interface Panel {
  type: string;
  title: string;
  panels?: Panel[];
  targets?: Array<{ expr: string; refId: string }>;
}
interface Query {
  where: string; // "panel «title» A"
  expr: string;
  s3: boolean;
}

/** Every panel query of the dashboard; a panel is S3's when it sits in the "S3 tier" row. */
function dashboardQueries(): Query[] {
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as { panels: Panel[] };
  const out: Query[] = [];
  const add = (p: Panel, row: Panel | null) => {
    assert.ok(p.targets?.length, `panel «${p.title}» has no query`);
    for (const t of p.targets) out.push({ where: `panel «${p.title}» ${t.refId}`, expr: t.expr, s3: S3_ROW.test(row?.title ?? '') });
  };
  let row: Panel | null = null;
  for (const p of dash.panels) {
    if (p.type !== 'row') add(p, row);
    else {
      row = p;
      for (const c of p.panels ?? []) add(c, p); // a collapsed row holds its panels
    }
  }
  return out;
}

interface Rule {
  alert: string;
  expr: string;
}
function ruleQueries(): Query[] {
  const doc = parseYaml(readFileSync(RULES, 'utf8')) as { groups: Array<{ name: string; rules: Rule[] }> };
  return doc.groups.flatMap((g) => g.rules.map((r) => ({ where: `rule ${r.alert}`, expr: r.expr, s3: g.name === S3_GROUP })));
}

const metricNames = (expr: string) => [...new Set(expr.match(/\bshoal_[a-z0-9_]+/g) ?? [])];

function substitute(expr: string): string {
  let out = expr;
  // Longest names first: $__rate_interval is not $__rate.
  for (const k of Object.keys(GRAFANA_VARIABLES).sort((a, b) => b.length - a.length)) out = out.split(k).join(GRAFANA_VARIABLES[k]!);
  assert.doesNotMatch(out, /\$/, `a dashboard variable the test does not know: ${expr}`);
  return out;
}

test('the S3 marks are honest: S3 panels and rules query only shoal_s3_ metrics, the others none', () => {
  for (const q of [...dashboardQueries(), ...ruleQueries()]) {
    const names = metricNames(q.expr);
    if (q.s3) assert.ok(names.length > 0 && names.every((n) => n.startsWith('shoal_s3_')), `${q.where} is marked S3: ${q.expr}`);
    else assert.ok(names.every((n) => !n.startsWith('shoal_s3_')), `${q.where} queries the S3 tier but is not marked so: ${q.expr}`);
  }
});

test('promtool: the rules are valid and their unit tests pass', async (t) => {
  if (!needTools(t, 'promtool')) return;
  await runOk('promtool', ['check', 'rules', RULES]);
  const r = await run('promtool', ['test', 'rules', RULE_TESTS]);
  assert.equal(r.status, 0, `promtool test rules:\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /SUCCESS/);
});

test('a real Prometheus scraping Shoal under fio load: every panel returns data, every rule evaluates, ShoalDown goes pending', { timeout: 120_000 }, async (t) => {
  if (!needTools(t, 'prometheus', 'fio')) return;
  const d = await startDaemon({ args: ['--cache-size', '64M'] });
  const prom = new Prometheus();
  try {
    // A golden image, a snapshot and two clones: reads of the clones share cached chunks.
    await d.createVolume('golden', 64 * 2 ** 20);
    await runOk('fio', ['--ioengine=nbd', `--uri=${d.unixUri('golden')}`, '--name=fill', '--rw=write', '--bs=1m', '--size=64m', '--end_fsync=1'], { cwd: tmpdir() });
    assert.equal((await d.api('POST', '/v1/volumes/golden/snapshots', { name: 'v1' })).status, 201);
    for (const vm of ['vm1', 'vm2']) assert.equal((await d.api('POST', '/v1/volumes', { name: vm, from: { volume: 'golden', snapshot: 'v1' } })).status, 201);

    const target = new URL(d.apiUrl).host;
    await prom.start(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [${JSON.stringify(RULES)}]
scrape_configs:
  - job_name: shoal
    static_configs: [{ targets: [${JSON.stringify(target)}] }]
`);
    const start = Math.floor(Date.now() / 1000);
    // 12 s of traffic: random reads of one clone, reads, writes and flushes on the other.
    const common = ['--ioengine=nbd', '--time_based', '--runtime=12', '--bs=4k', '--iodepth=8', '--rate_iops=1500', '--output-format=json'];
    await runOk(
      'fio',
      [...common, '--name=reader', `--uri=${d.unixUri('vm1')}`, '--rw=randread', '--name=writer', `--uri=${d.unixUri('vm2')}`, '--rw=randrw', '--fsync=32'],
      { cwd: tmpdir(), timeoutMs: 60_000 },
    );
    await new Promise((r) => setTimeout(r, 2000)); // the last scrapes after the load
    const end = Math.floor(Date.now() / 1000);

    const exposition = (await d.api('GET', '/metrics')).body as string;
    const exported = new Set([...exposition.matchAll(/^(shoal_[a-z0-9_]+)[{ ]/gm)].map((m) => m[1]!));
    const s3Running = exported.has('shoal_s3_upload_lag_seconds');
    const checked = (q: Query) => !q.s3 || s3Running;

    // The dashboard's instance variable finds the daemon.
    const instances = await prom.api<string[]>('label/instance/values', { 'match[]': 'shoal_cache_capacity_bytes' });
    assert.deepEqual(instances, [target]);

    const panels = dashboardQueries();
    assert.ok(panels.filter(checked).length >= 30, 'the dashboard covers cache, dedup, NBD, volumes, backlog, process');
    const empty: string[] = [];
    for (const q of panels.filter(checked)) {
      for (const n of metricNames(q.expr)) assert.ok(exported.has(n), `${q.where}: Shoal exports no ${n}`);
      const series = await prom.queryRange(substitute(q.expr), start, end);
      const finite = series.some((s) => s.values!.some(([, v]) => Number.isFinite(Number(v))));
      if (!finite) empty.push(`${q.where}: ${q.expr} → ${JSON.stringify(series).slice(0, 200)}`);
    }
    assert.deepEqual(empty, [], 'every panel query returns data');

    // Traffic really went through: the IOPS panel shows reads, writes and flushes.
    const ops = await prom.query(`sum by (op) (increase(shoal_nbd_requests_total[${end - start}s]))`);
    for (const op of ['read', 'write', 'flush']) {
      const s = ops.find((x) => x.metric.op === op);
      assert.ok(s && Number(s.value![1]) > 0, `${op} requests counted: ${JSON.stringify(ops)}`);
    }

    // Prometheus loaded every rule of the file and evaluates it without error.
    const rules = ruleQueries();
    for (const q of rules.filter(checked)) for (const n of metricNames(q.expr)) assert.ok(exported.has(n), `${q.where}: Shoal exports no ${n}`);
    const loaded = (await prom.api<{ groups: Array<{ name: string; rules: Array<{ name: string; health: string; lastError?: string }> }> }>('rules')).groups.flatMap((g) => g.rules);
    assert.deepEqual(loaded.map((r) => r.name).sort(), rules.map((q) => q.where.slice('rule '.length)).sort());
    for (const r of loaded) assert.equal(r.health, 'ok', `rule ${r.name}: ${r.lastError}`);
    assert.deepEqual(await prom.api<{ alerts: unknown[] }>('alerts').then((a) => a.alerts.filter((x: any) => x.labels.alertname === 'ShoalDown')), [], 'ShoalDown is quiet while Shoal runs');

    // Stop Shoal: the failed scrapes make ShoalDown pending (it fires after its 1 minute).
    await d.stop();
    let down: any;
    for (let i = 0; i < 100 && !down; i++) {
      await new Promise((r) => setTimeout(r, 200));
      down = (await prom.api<{ alerts: any[] }>('alerts')).alerts.find((a) => a.labels.alertname === 'ShoalDown');
    }
    assert.ok(down, 'ShoalDown is raised when the daemon stops');
    assert.equal(down.labels.instance, target);
    assert.equal(down.state, 'pending');
  } finally {
    await prom.stop();
    await d.dispose();
  }
});
