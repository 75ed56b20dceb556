// The REST routing and validation layer, against an in-memory VolumeControl (no daemon, no bytes):
// every bad-input class gets {error: {code, message}} with the right status, the OpenAPI document lists
// every route, and /metrics exposes every contract metric with the right TYPE.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../api/app.js';
import { Metrics } from '../../api/metrics.js';
import { FakeControl } from './fake-control.js';
import { ShoalError } from '../../server/errors.js';

let app: FastifyInstance;
let control: FakeControl;
let metrics: Metrics;

before(async () => {
  control = new FakeControl();
  metrics = new Metrics({ control, defaultMetrics: false });
  app = await buildApi({ control, metrics });
  await app.ready();
});
after(() => app.close());

async function call(method: string, url: string, payload?: unknown, headers: Record<string, string> = {}) {
  const res = await app.inject({
    method: method as any,
    url,
    payload: payload === undefined ? undefined : typeof payload === 'string' ? payload : JSON.stringify(payload),
    headers: payload === undefined ? headers : { 'content-type': 'application/json', ...headers },
  });
  let body: any = res.body;
  try {
    body = res.body === '' ? undefined : JSON.parse(res.body);
  } catch {
    /* text */
  }
  return { status: res.statusCode, body, headers: res.headers };
}

const lastCall = (method: string) => control.calls.filter((c) => c.method === method).at(-1);

/** Asserts the error shape, status and code; returns the message. */
function assertError(r: { status: number; body: any }, status: number, code: string, re?: RegExp): string {
  assert.equal(r.status, status, JSON.stringify(r.body));
  assert.deepEqual(Object.keys(r.body), ['error'], JSON.stringify(r.body));
  assert.deepEqual(Object.keys(r.body.error).sort(), ['code', 'message']);
  assert.equal(r.body.error.code, code, r.body.error.message);
  assert.equal(typeof r.body.error.message, 'string');
  assert.ok(r.body.error.message.length > 10, r.body.error.message);
  if (re) assert.match(r.body.error.message, re);
  return r.body.error.message;
}

test('create, list, show, resize, delete a volume', async () => {
  let r = await call('POST', '/v1/volumes', { name: 'golden', size: '16T' });
  assert.equal(r.status, 201);
  assert.equal(r.body.name, 'golden');
  assert.equal(r.body.size, 16 * 2 ** 40);
  assert.equal(r.headers.location, '/v1/volumes/golden');
  assert.deepEqual(control.calls.at(-1), { method: 'createVolume', args: [{ name: 'golden', size: 16 * 2 ** 40 }] });

  r = await call('POST', '/v1/volumes', { name: 'dom.vol_1-a', size: 1048576, domain: 'tenant-a' });
  assert.equal(r.status, 201);
  assert.equal(r.body.domain, 'tenant-a');

  r = await call('GET', '/v1/volumes');
  assert.equal(r.status, 200);
  assert.deepEqual(r.body.volumes.map((v: any) => v.name), ['golden', 'dom.vol_1-a']);

  r = await call('GET', '/v1/volumes/golden');
  assert.equal(r.status, 200);
  assert.equal(r.body.origin, null);

  r = await call('PATCH', '/v1/volumes/dom.vol_1-a', { size: '2M' });
  assert.equal(r.status, 200);
  assert.equal(r.body.size, 2 * 2 ** 20);

  r = await call('DELETE', '/v1/volumes/dom.vol_1-a');
  assert.equal(r.status, 204);
  assert.equal(r.body, undefined);
  assertError(await call('GET', '/v1/volumes/dom.vol_1-a'), 404, 'volume_not_found');
});

test('clones, from a volume or a snapshot', async () => {
  await call('POST', '/v1/volumes', { name: 'base', size: 4096 });
  assert.equal((await call('POST', '/v1/volumes/base/snapshots', { name: 'v1' })).status, 201);
  let r = await call('POST', '/v1/volumes', { name: 'c1', from: { volume: 'base' } });
  assert.equal(r.status, 201);
  assert.deepEqual(r.body.origin, { volume: 'base' });
  r = await call('POST', '/v1/volumes', { name: 'c2', from: { volume: 'base', snapshot: 'v1' } });
  assert.equal(r.status, 201);
  assert.deepEqual(control.calls.at(-1), { method: 'cloneVolume', args: [{ name: 'c2', from: { volume: 'base', snapshot: 'v1' } }] });
  assertError(await call('POST', '/v1/volumes', { name: 'c3', from: { volume: 'base', snapshot: 'nope' } }), 404, 'snapshot_not_found');
  assertError(await call('POST', '/v1/volumes', { name: 'c3', from: { volume: 'nope' } }), 404, 'volume_not_found');
  assertError(await call('POST', '/v1/volumes', { name: 'c3', size: 1, from: { volume: 'base' } }), 400, 'invalid_request', /either "size".* or "from"/);
  assertError(await call('POST', '/v1/volumes', { name: 'c3', from: { volume: 'base@v1' } }), 400, 'invalid_name', /"base@v1" is not a valid volume name/);
  assertError(await call('POST', '/v1/volumes', { name: 'c3', from: { volume: 'base', extra: 1 } }), 400, 'invalid_request', /unknown field "from.extra"/);
});

test('snapshots: create, list, show, delete, rollback', async () => {
  await call('POST', '/v1/volumes', { name: 'sv', size: 8192 });
  let r = await call('POST', '/v1/volumes/sv/snapshots', { name: 's1' });
  assert.equal(r.status, 201);
  assert.equal(r.body.exportName, 'sv@s1');
  assertError(await call('POST', '/v1/volumes/sv/snapshots', { name: 's1' }), 409, 'snapshot_exists');
  assertError(await call('POST', '/v1/volumes/sv/snapshots', { name: 's@1' }), 400, 'invalid_name', /not a valid snapshot name/);
  assertError(await call('POST', '/v1/volumes/nope/snapshots', { name: 's1' }), 404, 'volume_not_found');
  r = await call('GET', '/v1/volumes/sv/snapshots');
  assert.deepEqual(r.body.snapshots.map((s: any) => s.name), ['s1']);
  r = await call('GET', '/v1/volumes/sv/snapshots/s1');
  assert.equal(r.body.exportName, 'sv@s1');
  assertError(await call('GET', '/v1/volumes/sv/snapshots/s9'), 404, 'snapshot_not_found');

  r = await call('POST', '/v1/volumes/sv/rollback', { snapshot: 's1' });
  assert.equal(r.status, 200);
  assert.deepEqual(lastCall('rollback')!.args, ['sv', 's1', { force: false }]);
  r = await call('POST', '/v1/volumes/sv/rollback', { snapshot: 's1', force: true });
  assert.equal(r.status, 200);
  assert.deepEqual(lastCall('rollback')!.args, ['sv', 's1', { force: true }]);
  assertError(await call('POST', '/v1/volumes/sv/rollback', {}), 400, 'invalid_request', /missing "snapshot"/);
  assertError(await call('POST', '/v1/volumes/sv/rollback', { snapshot: 's1', force: 'yes' }), 400, 'invalid_request', /force/);

  r = await call('DELETE', '/v1/volumes/sv/snapshots/s1?force=1');
  assert.equal(r.status, 204);
  assert.deepEqual(lastCall('deleteSnapshot')!.args, ['sv', 's1', { force: true }]);
  assertError(await call('DELETE', '/v1/volumes/sv/snapshots/s1'), 404, 'snapshot_not_found');
});

test('delete refuses a busy volume (409) unless force=true', async () => {
  await call('POST', '/v1/volumes', { name: 'busy', size: 4096 });
  control.volumes.get('busy')!.connections = 2;
  assertError(await call('DELETE', '/v1/volumes/busy'), 409, 'volume_busy');
  assertError(await call('DELETE', '/v1/volumes/busy?force=false'), 409, 'volume_busy');
  assertError(await call('DELETE', '/v1/volumes/busy?force=maybe'), 400, 'invalid_request', /"force" in the query string must be one of true, false/);
  assert.equal((await call('DELETE', '/v1/volumes/busy?force=true')).status, 204);
  assert.deepEqual(lastCall('deleteVolume')!.args, ['busy', { force: true, recursive: false }]);
});

test('409 when the volume exists, 404 when it does not', async () => {
  await call('POST', '/v1/volumes', { name: 'twice', size: 4096 });
  assertError(await call('POST', '/v1/volumes', { name: 'twice', size: 4096 }), 409, 'volume_exists', /twice/);
  for (const [m, u, b] of [
    ['GET', '/v1/volumes/ghost'],
    ['PATCH', '/v1/volumes/ghost', { size: 4096 }],
    ['DELETE', '/v1/volumes/ghost'],
    ['GET', '/v1/volumes/ghost/snapshots'],
    ['POST', '/v1/volumes/ghost/reflink', { source: 'twice', sourceOffset: 0, offset: 0, length: 1 }],
  ] as const) {
    assertError(await call(m, u, b), 404, 'volume_not_found', /ghost/);
  }
});

test('malformed JSON → 400 invalid_json; not JSON → 415; too large → 413', async () => {
  assertError(await call('POST', '/v1/volumes', '{"name": "x", '), 400, 'invalid_json', /not valid JSON/);
  assertError(await call('POST', '/v1/volumes', "{'name': 'x'}"), 400, 'invalid_json');
  assertError(await call('POST', '/v1/volumes', 'name=x', { 'content-type': 'application/x-www-form-urlencoded' }), 415, 'unsupported_media_type');
  assertError(await call('POST', '/v1/volumes', 'x', { 'content-type': 'text/plain' }), 415, 'unsupported_media_type');
  assertError(await call('POST', '/v1/volumes', JSON.stringify({ name: 'big', size: 1, domain: 'x'.repeat(200_000) })), 413, 'body_too_large');
  // An empty body with a JSON content-type is no body, not a parse error.
  assertError(await call('POST', '/v1/volumes', ''), 400, 'invalid_request', /must be a JSON object/);
  assert.equal((await call('POST', '/v1/fsck', '')).status, 200);
});

test('missing fields, wrong types, unknown fields → 400 invalid_request', async () => {
  assertError(await call('POST', '/v1/volumes'), 400, 'invalid_request', /JSON object/);
  assertError(await call('POST', '/v1/volumes', []), 400, 'invalid_request', /JSON object/);
  assertError(await call('POST', '/v1/volumes', 'null'), 400, 'invalid_request', /JSON object/);
  assertError(await call('POST', '/v1/volumes', { size: 4096 }), 400, 'invalid_request', /missing "name"/);
  assertError(await call('POST', '/v1/volumes', { name: 'nosize' }), 400, 'invalid_request', /needs "size"/);
  assertError(await call('POST', '/v1/volumes', { name: 'x', size: 4096, colour: 'red' }), 400, 'invalid_request', /unknown field "colour"/);
  assertError(await call('PATCH', '/v1/volumes/golden', {}), 400, 'invalid_request', /missing "size"/);
  assertError(await call('POST', '/v1/volumes/golden/snapshots', {}), 400, 'invalid_request', /missing "name"/);
  assertError(await call('POST', '/v1/volumes/golden/reflink', { source: 'golden', offset: 0, length: 1 }), 400, 'invalid_request', /missing "sourceOffset"/);
  assertError(await call('POST', '/v1/volumes/golden/reflink', { source: 'golden', sourceOffset: -1, offset: 0, length: 1 }), 400, 'invalid_request', /"sourceOffset".*>= 0/);
  assertError(await call('POST', '/v1/volumes/golden/reflink', { source: 'golden', sourceOffset: 0, offset: '0', length: 1 }), 400, 'invalid_request', /"offset".*whole number/);
  assertError(await call('POST', '/v1/volumes/golden/dedupe', { source: 'golden', sourceOffset: 0, offset: 0, length: 0 }), 400, 'invalid_request', /"length"/);
  assertError(await call('POST', '/v1/volumes/golden/dedupe', { source: 'golden', sourceOffset: 0.5, offset: 0, length: 1 }), 400, 'invalid_request');
});

test('bad names → 400 invalid_name, in bodies and in URLs', async () => {
  const bad = ['', 'a@b', 'a/b', '-lead', '.hidden', 'sp ace', 'x'.repeat(129), 'ünï', 'a\nb'];
  for (const name of bad) {
    assertError(await call('POST', '/v1/volumes', { name, size: 4096 }), 400, 'invalid_name', /not a valid volume name/);
  }
  assert.equal((await call('POST', '/v1/volumes', { name: 'x'.repeat(128), size: 4096 })).status, 201);
  assertError(await call('POST', '/v1/volumes', { name: 7, size: 4096 }), 400, 'invalid_name', /must be a string/);
  assertError(await call('POST', '/v1/volumes', { name: 'okname', size: 4096, domain: 'bad domain' }), 400, 'invalid_name', /domain name/);
  assertError(await call('GET', '/v1/volumes/a%40b'), 400, 'invalid_name', /"a@b"/);
  assertError(await call('GET', '/v1/volumes/a%2Fb'), 400, 'invalid_name', /"a\/b"/);
  assertError(await call('GET', `/v1/volumes/${'y'.repeat(129)}`), 400, 'invalid_name');
  assertError(await call('GET', `/v1/volumes/${'y'.repeat(1000)}`), 400, 'invalid_name', /too long/);
  assert.equal((await call('GET', `/v1/volumes/${'x'.repeat(128)}`)).status, 200);
  assertError(await call('GET', '/v1/volumes/a%zzb'), 400, 'invalid_request', /malformed/);
  assertError(await call('DELETE', '/v1/volumes/golden/snapshots/-x'), 400, 'invalid_name', /snapshot name/);
  assertError(await call('POST', '/v1/volumes/golden/reflink', { source: 'a@b@c', sourceOffset: 0, offset: 0, length: 1 }), 400, 'invalid_name', /VOLUME@SNAPSHOT/);
  // A ShoalError from the control layer keeps its code.
  control.failNext = new ShoalError('invalid_name', 'reserved name.');
  assertError(await call('GET', '/v1/volumes/golden'), 400, 'invalid_name', /reserved/);
});

test('bad sizes → 400 invalid_size', async () => {
  for (const size of [-1, 0, 1.5, '0', '-5G', 'lots', '1.2.3', true, null, [], {}, '9P', 2 ** 53]) {
    assertError(await call('POST', '/v1/volumes', { name: 'sz', size }), 400, 'invalid_size', undefined);
    assertError(await call('PATCH', '/v1/volumes/golden', { size }), 400, 'invalid_size');
  }
  assert.equal((await call('POST', '/v1/volumes', { name: 'sz', size: '1.5K' })).body.size, 1536);
});

test('unknown routes → 404 not_found; unexpected errors → 500 internal', async () => {
  assertError(await call('GET', '/nope'), 404, 'not_found', /GET \/nope/);
  assertError(await call('GET', '/v2/volumes'), 404, 'not_found');
  assertError(await call('PUT', '/v1/volumes/golden', { size: 1 }), 404, 'not_found');
  assertError(await call('GET', '/v1/volumes/golden/bogus'), 404, 'not_found');
  control.failNext = new TypeError('cannot read properties of undefined');
  assertError(await call('GET', '/v1/volumes'), 500, 'internal', /internal error/);
  control.failNext = new ShoalError('volume_busy', 'volume "golden" is busy.');
  assertError(await call('POST', '/v1/volumes/golden/snapshots', { name: 'b' }), 409, 'volume_busy');
});

test('reflink and dedupe pass the range through', async () => {
  await call('POST', '/v1/volumes', { name: 'dst', size: 1 << 20 });
  const body = { source: 'golden', sourceOffset: 65536, offset: 0, length: 131072 };
  let r = await call('POST', '/v1/volumes/dst/reflink', body);
  assert.equal(r.status, 200);
  assert.deepEqual(r.body, { sharedBytes: 131072, copiedBytes: 0 });
  assert.deepEqual(lastCall('reflink')!.args, ['dst', body]);
  r = await call('POST', '/v1/volumes/dst/dedupe', { ...body, source: 'golden@snap' });
  assert.equal(r.status, 200);
  assert.deepEqual(r.body, { sharedBytes: 0, differentBytes: 131072 });
  assert.deepEqual(lastCall('dedupe')!.args, ['dst', { ...body, source: 'golden@snap' }]);
});

test('changes: the query string reaches the volume layer as numbers; bad paging arguments are refused', async () => {
  await call('POST', '/v1/volumes', { name: 'cbt', size: 1 << 20 });
  let r = await call('GET', '/v1/volumes/cbt/changes?since=s1&until=s2&offset=8192&limit=10');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(r.body, { extents: [{ offset: 0, length: 4096 }], next: 8192 });
  assert.deepEqual(lastCall('changes')!.args, ['cbt', { since: 's1', until: 's2', offset: 8192, limit: 10 }]);
  r = await call('GET', '/v1/volumes/cbt/changes?since=golden@v1');
  assert.equal(r.status, 200, JSON.stringify(r.body));
  assert.deepEqual(lastCall('changes')!.args, ['cbt', { since: 'golden@v1', until: undefined, offset: undefined, limit: undefined }]);
  const before = control.calls.length;
  assertError(await call('GET', '/v1/volumes/cbt/changes'), 400, 'invalid_request', /since/);
  assertError(await call('GET', '/v1/volumes/cbt/changes?since=a/b'), 400, 'invalid_name');
  assertError(await call('GET', '/v1/volumes/cbt/changes?since=s1&until=x@y'), 400, 'invalid_name');
  assertError(await call('GET', '/v1/volumes/cbt/changes?since=s1&offset=-4096'), 400, 'invalid_request', /offset/);
  assertError(await call('GET', '/v1/volumes/cbt/changes?since=s1&limit=ten'), 400, 'invalid_request', /limit/);
  assertError(await call('GET', '/v1/volumes/cbt/changes?since=s1&cursor=3'), 400, 'invalid_request', /cursor/);
  assert.equal(control.calls.length, before, 'refused before reaching the volume layer');
  assertError(await call('GET', '/v1/volumes/nope/changes?since=s1'), 404, 'volume_not_found');
});

test('stats, fsck, healthz', async () => {
  let r = await call('GET', '/v1/stats');
  assert.equal(r.status, 200);
  for (const k of ['logicalBytes', 'physicalBytes', 'dedupRatio']) assert.equal(typeof r.body[k], 'number');
  for (const k of ['capacityBytes', 'bytes', 'hits', 'misses', 'evictions', 'coalesced', 'sharingFactor']) assert.equal(typeof r.body.cache[k], 'number');
  r = await call('POST', '/v1/fsck');
  assert.equal(r.status, 200);
  assert.equal(r.body.ok, true);
  control.fsckErrors = ['chunk 7 has refcount 2 but 1 reference.'];
  r = await call('POST', '/v1/fsck');
  assert.equal(r.status, 200);
  assert.equal(r.body.ok, false);
  assert.deepEqual(r.body.errors, ['chunk 7 has refcount 2 but 1 reference.']);
  control.fsckErrors = [];
  r = await call('GET', '/healthz');
  assert.deepEqual(r.body, { status: 'ok' });
});

test('OpenAPI at /docs/json lists every route; /docs serves the UI', async () => {
  const r = await call('GET', '/docs/json');
  assert.equal(r.status, 200);
  assert.match(r.body.openapi, /^3\./);
  const expected: Record<string, string[]> = {
    '/v1/volumes': ['get', 'post'],
    '/v1/volumes/{name}': ['delete', 'get', 'patch'],
    '/v1/volumes/{name}/snapshots': ['get', 'post'],
    '/v1/volumes/{name}/snapshots/{snap}': ['delete', 'get'],
    '/v1/volumes/{name}/rollback': ['post'],
    '/v1/volumes/{name}/reflink': ['post'],
    '/v1/volumes/{name}/dedupe': ['post'],
    '/v1/volumes/{name}/changes': ['get'],
    '/v1/stats': ['get'],
    '/v1/fsck': ['post'],
    '/v1/activity': ['get'],
    '/v1/volumes/{name}/complete': ['post'],
    '/v1/endpoints': ['get'],
    '/healthz': ['get'],
    '/metrics': ['get'],
  };
  assert.deepEqual(Object.keys(r.body.paths).sort(), Object.keys(expected).sort());
  for (const [path, methods] of Object.entries(expected)) {
    assert.deepEqual(Object.keys(r.body.paths[path]).sort(), methods, path);
    for (const m of methods) {
      const op = r.body.paths[path][m];
      assert.ok(op.summary, `${m} ${path} has a summary`);
      assert.ok(op.responses['4XX'] && op.responses['5XX'], `${m} ${path} documents its errors`);
    }
  }
  const create = r.body.paths['/v1/volumes'].post;
  const schema = create.requestBody.content['application/json'].schema;
  assert.deepEqual(Object.keys(schema.properties).sort(), ['domain', 'from', 'incomplete', 'name', 'size', 'tenant']);
  assert.equal(schema.properties.name.pattern, '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$');
  // The change list documents its paging.
  const changes = r.body.paths['/v1/volumes/{name}/changes'].get;
  assert.deepEqual(changes.parameters.filter((p: any) => p.in === 'query').map((p: any) => p.name).sort(), ['limit', 'offset', 'since', 'until']);
  assert.ok(changes.parameters.find((p: any) => p.name === 'since').required);
  assert.deepEqual(Object.keys(changes.responses['200'].content['application/json'].schema.properties).sort(), ['extents', 'next']);
  const ui = await app.inject({ method: 'GET', url: '/docs' });
  assert.ok([200, 302].includes(ui.statusCode), String(ui.statusCode));
});

test('/metrics exposes every contract metric with the right TYPE', async () => {
  metrics.connectionOpened();
  metrics.request('read', 'golden@snap', 4096, 0.00007, true);
  metrics.request('write', 'golden', 8192, 0.0003, true);
  metrics.request('write', 'golden', 8192, 0.0003, false);
  const res = await app.inject({ method: 'GET', url: '/metrics' });
  assert.equal(res.statusCode, 200);
  assert.match(res.headers['content-type'] as string, /^text\/plain/);
  const text = res.body;
  const types = new Map([...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
  const expected: Record<string, string> = {
    shoal_cache_hits_total: 'counter',
    shoal_cache_misses_total: 'counter',
    shoal_cache_bytes: 'gauge',
    shoal_cache_capacity_bytes: 'gauge',
    shoal_cache_evictions_total: 'counter',
    shoal_cache_coalesced_total: 'counter',
    shoal_cache_sharing_factor: 'gauge',
    shoal_nbd_requests_total: 'counter',
    shoal_nbd_request_errors_total: 'counter',
    shoal_nbd_request_duration_seconds: 'histogram',
    shoal_nbd_connections: 'gauge',
    shoal_volume_read_bytes_total: 'counter',
    shoal_volume_written_bytes_total: 'counter',
    shoal_logical_bytes: 'gauge',
    shoal_physical_bytes: 'gauge',
    shoal_dedup_ratio: 'gauge',
    shoal_dedup_hits_total: 'counter',
    shoal_volumes: 'gauge',
    shoal_snapshots: 'gauge',
    shoal_volume_exclusive_bytes: 'gauge',
    shoal_volume_shared_bytes: 'gauge',
    shoal_volume_size_bytes: 'gauge',
    shoal_volume_cache_loads_total: 'counter',
    shoal_dedup_log_entries: 'gauge',
    shoal_reclaim_pending_nodes: 'gauge',
    shoal_reclaim_pending_bytes: 'gauge',
    shoal_reclaim_released_bytes_total: 'counter',
    shoal_dedup_log_indexed_total: 'counter',
    shoal_fsck_running: 'gauge',
    shoal_fsck_checked_items: 'gauge',
    shoal_fsck_items: 'gauge',
    shoal_volume_read_requests_total: 'counter',
    shoal_volume_write_requests_total: 'counter',
  };
  for (const [name, type] of Object.entries(expected)) assert.equal(types.get(name), type, name);
  for (const name of types.keys()) assert.match(name, /^shoal_/);
  for (const [name, type] of types) if (name.endsWith('_total')) assert.equal(type, 'counter', name);

  const line = (re: RegExp) => assert.match(text, re);
  line(/^shoal_nbd_connections 1$/m);
  line(/^shoal_nbd_requests_total\{op="write"\} 2$/m);
  line(/^shoal_nbd_requests_total\{op="flush"\} 0$/m);
  line(/^shoal_nbd_request_errors_total\{op="write"\} 1$/m);
  line(/^shoal_nbd_request_duration_seconds_bucket\{le="0\.0001",op="read"\} 1$/m);
  line(/^shoal_nbd_request_duration_seconds_bucket\{le="0.00005",op="read"\} 0$/m);
  // Per-volume traffic is the volume layer's count (the fake reports 5 reads and 3 writes of 4 KiB).
  line(/^shoal_volume_read_bytes_total\{volume="golden"\} 20480$/m);
  line(/^shoal_volume_written_bytes_total\{volume="golden"\} 12288$/m);
  line(/^shoal_volume_read_requests_total\{volume="golden"\} 5$/m);
  line(/^shoal_volume_write_requests_total\{volume="golden"\} 3$/m);
  line(/^shoal_reclaim_pending_bytes 117440512$/m);
  line(/^shoal_fsck_checked_items\{kind="nodes"\} 0$/m);
  line(/^shoal_cache_hits_total 10$/m);
  line(/^shoal_dedup_ratio 3$/m);
  line(/^shoal_cache_capacity_bytes 1073741824$/m);
  line(/^shoal_volume_size_bytes\{volume="golden"\} 17592186044416$/m);
  line(/^shoal_volumes \d+$/m);
  line(/^shoal_reclaim_pending_nodes 7$/m);

  // Scrape-time figures follow the control: a deleted volume's gauges go away.
  await call('POST', '/v1/volumes', { name: 'ephemeral', size: 4096 });
  assert.match((await app.inject({ method: 'GET', url: '/metrics' })).body, /volume="ephemeral"/);
  await call('DELETE', '/v1/volumes/ephemeral');
  assert.doesNotMatch((await app.inject({ method: 'GET', url: '/metrics' })).body, /shoal_volume_size_bytes\{volume="ephemeral"\}/);
});

test('/metrics still answers when stats() fails, and reports it', async () => {
  const errors: unknown[] = [];
  const m = new Metrics({ defaultMetrics: false, onError: (e) => errors.push(e) });
  let text = await m.metrics();
  assert.match(text, /# TYPE shoal_cache_hits_total counter/); // no control yet: names, no scrape values
  m.setControl({
    ...control,
    stats: () => {
      throw new Error('store closed');
    },
    listVolumes: () => [],
  } as any);
  text = await m.metrics();
  assert.match(text, /shoal_nbd_connections 0/);
  assert.equal(errors.length, 1);
});

test('default process metrics carry the shoal_ prefix', async () => {
  const m = new Metrics({ control });
  const text = await m.metrics();
  assert.match(text, /^# TYPE shoal_process_cpu_user_seconds_total counter$/m);
  assert.match(text, /^# TYPE shoal_nodejs_heap_size_used_bytes gauge$/m);
  for (const [, name] of text.matchAll(/^# TYPE (\S+)/gm)) assert.match(name!, /^shoal_/);
});

test('a volume created incomplete stays so until POST .../complete; a clone cannot be', async () => {
  let r = await call('POST', '/v1/volumes', { name: 'importing', size: 4096, incomplete: true });
  assert.equal(r.status, 201);
  assert.equal(r.body.incomplete, true);
  assert.equal((await call('GET', '/v1/volumes/importing')).body.incomplete, true);
  r = await call('POST', '/v1/volumes/importing/complete');
  assert.equal(r.status, 204);
  assert.equal((await call('GET', '/v1/volumes/importing')).body.incomplete, false);
  assertError(await call('POST', '/v1/volumes/nosuch/complete'), 404, 'volume_not_found', /nosuch/);
  assertError(await call('POST', '/v1/volumes', { name: 'c2', from: { volume: 'importing' }, incomplete: true }), 400, 'invalid_request', /give either "size"/);
  assertError(await call('POST', '/v1/volumes', { name: 'c3', size: 4096, incomplete: 'yes' }), 400, 'invalid_request', /"incomplete"/);
  await call('DELETE', '/v1/volumes/importing');
});

test('GET /v1/endpoints and /v1/activity', async () => {
  const e = await call('GET', '/v1/endpoints');
  assert.equal(e.status, 200);
  assert.deepEqual(e.body, { nbd: { tcp: null, unix: null, tls: 'off' } });
  const a = await call('GET', '/v1/activity');
  assert.equal(a.status, 200);
  assert.ok(a.body.volumes.some((v: any) => v.name === 'golden' && v.reads === 5 && v.writtenBytes === 12288));
});
