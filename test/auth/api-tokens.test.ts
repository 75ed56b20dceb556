// The REST API with --api-tokens, against a real daemon, with tokens made by the real `shoal token`
// CLI: a missing or bad token is 401, a role calling a route it may not is 403, a tenant's token sees
// its tenant only (another tenant's volume answers 404 exactly like a missing one), and every refusal
// changes nothing (checked with an admin's GET after). Tokens take effect without a restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, MAIN, type Daemon } from '../helpers/daemon.js';
import { run } from '../helpers/tools.js';

let d: Daemon;
let dir: string;
let tokensFile: string;
const tok: Record<string, string> = {};

async function shoalToken(...args: string[]) {
  return run(process.execPath, [MAIN, 'token', ...args, '--tokens-file', tokensFile]);
}

async function newToken(name: string, role: string, tenant?: string): Promise<string> {
  const r = await shoalToken('create', name, '--role', role, ...(tenant ? ['--tenant', tenant] : []));
  assert.equal(r.status, 0, r.stderr);
  return r.stdout.trim();
}

async function call(method: string, path: string, opts: { token?: string; auth?: string; body?: unknown } = {}) {
  const headers: Record<string, string> = {};
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  if (opts.auth !== undefined) headers.authorization = opts.auth;
  else if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
  const res = await fetch(d.apiUrl + path, { method, headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body) });
  const text = await res.text();
  let body: any = text;
  try {
    body = JSON.parse(text);
  } catch {
    /* /metrics */
  }
  return { status: res.status, body, headers: res.headers };
}

function expectError(r: { status: number; body: any }, status: number, code: string, what: string): void {
  assert.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
  assert.equal(r.body?.error?.code, code, `${what}: ${JSON.stringify(r.body)}`);
  assert.ok(typeof r.body.error.message === 'string' && r.body.error.message.length > 20, `${what}: a sentence`);
}

/** Everything an admin sees: every volume (without the per-read cache counter) and its snapshots. */
async function everything(): Promise<unknown> {
  const vols = (await call('GET', '/v1/volumes', { token: tok.admin })).body.volumes;
  const out: Record<string, unknown> = {};
  for (const v of vols) {
    const { cacheLoads: _c, ...rest } = v;
    out[v.name] = { ...rest, snaps: (await call('GET', `/v1/volumes/${v.name}/snapshots`, { token: tok.admin })).body.snapshots.map((s: any) => s.name) };
  }
  return out;
}

// Every route that needs a token, with a body that would succeed for a caller allowed to make it.
const ROUTES: { method: string; path: string; body?: unknown; role: 'reader' | 'operator' | 'admin' }[] = [
  { method: 'GET', path: '/v1/volumes', role: 'reader' },
  { method: 'GET', path: '/v1/volumes/globex-db', role: 'reader' },
  { method: 'GET', path: '/v1/volumes/globex-db/snapshots', role: 'reader' },
  { method: 'GET', path: '/v1/volumes/globex-db/snapshots/v1', role: 'reader' },
  { method: 'GET', path: '/v1/stats', role: 'reader' },
  { method: 'GET', path: '/metrics', role: 'reader' },
  { method: 'POST', path: '/v1/volumes', body: { name: 'new-vol', size: '1M' }, role: 'operator' },
  { method: 'POST', path: '/v1/volumes', body: { name: 'new-clone', from: { volume: 'globex-db', snapshot: 'v1' } }, role: 'operator' },
  { method: 'PATCH', path: '/v1/volumes/globex-db', body: { size: '1K', shrink: true }, role: 'operator' },
  { method: 'DELETE', path: '/v1/volumes/globex-db?recursive=true&force=true', role: 'operator' },
  { method: 'POST', path: '/v1/volumes/globex-db/snapshots', body: { name: 'v2' }, role: 'operator' },
  { method: 'DELETE', path: '/v1/volumes/globex-db/snapshots/v1?force=true', role: 'operator' },
  { method: 'POST', path: '/v1/volumes/globex-db/rollback', body: { snapshot: 'v1', force: true }, role: 'operator' },
  { method: 'POST', path: '/v1/volumes/globex-db/reflink', body: { source: 'globex-db@v1', sourceOffset: 0, offset: 65536, length: 4096 }, role: 'operator' },
  { method: 'POST', path: '/v1/volumes/globex-db/dedupe', body: { source: 'globex-db@v1', sourceOffset: 0, offset: 65536, length: 4096 }, role: 'operator' },
  { method: 'POST', path: '/v1/fsck', role: 'admin' },
];

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'shoal-tokens-'));
  tokensFile = join(dir, 'api-tokens.json');
  tok.admin = await newToken('admin', 'admin');
  tok.operator = await newToken('ops', 'operator');
  tok.reader = await newToken('prometheus', 'reader');
  tok.acme = await newToken('acme-ci', 'operator', 'acme');
  tok.acmeAdmin = await newToken('acme-admin', 'admin', 'acme');
  tok.globex = await newToken('globex-ci', 'operator', 'globex');
  tok.globexReader = await newToken('globex-ro', 'reader', 'globex');
  d = await startDaemon({ args: ['--api-tokens', tokensFile] });
  const mk = async (body: unknown) => assert.equal((await call('POST', '/v1/volumes', { token: tok.admin, body })).status, 201);
  await mk({ name: 'acme-gold', size: '8M', tenant: 'acme' });
  await mk({ name: 'globex-db', size: '8M', tenant: 'globex' });
  await mk({ name: 'plain', size: '8M' });
  for (const v of ['acme-gold', 'globex-db']) assert.equal((await call('POST', `/v1/volumes/${v}/snapshots`, { token: tok.admin, body: { name: 'v1' } })).status, 201);
});

after(async () => {
  await d?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

test('the tokens file keeps hashes only, and `shoal token list` shows names, roles and tenants', async () => {
  const text = readFileSync(tokensFile, 'utf8');
  for (const t of Object.values(tok)) assert.ok(!text.includes(t), 'no token is stored in the file');
  const r = await shoalToken('list');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^NAME\s+ROLE\s+TENANT\s+CREATED\n/);
  assert.match(r.stdout, /\nacme-ci\s+operator\s+acme\s+\d{4}-/);
  assert.match(r.stdout, /\nprometheus\s+reader\s+-\s+/);
  const json = JSON.parse((await shoalToken('list', '--json')).stdout);
  assert.deepEqual(Object.keys(json.tokens[0]).sort(), ['createdAt', 'name', 'role']);
  // Mistakes get a sentence, exit 1, and leave the file as it was.
  for (const [args, re] of [
    [['create', 'admin', '--role', 'reader'], /already has a token named "admin"; revoke it first/],
    [['create', 'bad/name', '--role', 'reader'], /"bad\/name" is not a valid token name/],
    [['create', 'x', '--role', 'reader', '--tenant', 'a b'], /"a b" is not a valid tenant name/],
    [['revoke', 'ghost'], /has no token named "ghost"/],
  ] as const) {
    const r = await shoalToken(...args);
    assert.equal(r.status, 1, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, re);
  }
  assert.equal(readFileSync(tokensFile, 'utf8'), text);
  const nowhere = await run(process.execPath, [MAIN, 'token', 'create', 'x', '--role', 'reader', '--tokens-file', join(dir, 'no-dir', 'tokens.json')]);
  assert.equal(nowhere.status, 1);
  assert.match(nowhere.stderr, /^shoal: cannot write the API tokens file .*no-dir\/tokens\.json: ENOENT\n$/);
});

test('no token, a bad token or another scheme: 401 on every route, with WWW-Authenticate; nothing changes', async () => {
  const before = await everything();
  for (const r of ROUTES) {
    for (const [auth, hint] of [
      [undefined, /needs a bearer token/],
      ['Bearer shoal_not-a-real-token', /not valid: it is unknown, or it was revoked/],
      [`Bearer ${tok.admin}x`, /not valid/],
      [`Basic ${Buffer.from('admin:admin').toString('base64')}`, /must be "Bearer TOKEN"/],
      ['Bearer', /must be "Bearer TOKEN"/],
    ] as const) {
      const res = await call(r.method, r.path, { ...(auth !== undefined ? { auth } : {}), ...(r.body !== undefined ? { body: r.body } : {}) });
      expectError(res, 401, 'unauthorized', `${r.method} ${r.path} with ${auth ?? 'no Authorization'}`);
      assert.match(res.body.error.message, hint);
      assert.match(res.headers.get('www-authenticate') ?? '', /^Bearer realm="shoal"/);
    }
  }
  // An unknown route does not tell a stranger that it is unknown.
  expectError(await call('GET', '/v1/nothing-here'), 401, 'unauthorized', 'unknown route, no token');
  expectError(await call('GET', '/v1/nothing-here', { token: tok.reader }), 404, 'not_found', 'unknown route, a token');
  assert.deepEqual(await everything(), before);
});

test('/healthz and the OpenAPI document stay open; the document says which token each route needs', async () => {
  const h = await call('GET', '/healthz');
  assert.equal(h.status, 200);
  assert.deepEqual(h.body, { status: 'ok' });
  const doc = await call('GET', '/docs/json');
  assert.equal(doc.status, 200);
  assert.match(doc.body.paths['/v1/fsck'].post.description, /Needs an admin token not bound to a tenant/);
  assert.match(doc.body.paths['/v1/volumes'].post.description, /Needs an operator token/);
  assert.deepEqual(doc.body.paths['/v1/volumes'].get.security, [{ bearer: [] }]);
});

test('each role calling each route it may not: 403 saying what it needs; nothing changes', async () => {
  const before = await everything();
  const refusals: [string, string, (typeof ROUTES)[number]][] = [];
  for (const r of ROUTES) {
    if (r.role !== 'reader') refusals.push(['prometheus', tok.reader!, r]);
    if (r.role === 'admin') refusals.push(['ops', tok.operator!, r], ['acme-ci', tok.acme!, r]);
  }
  // Daemon-wide routes need a token without a tenant, whatever its role.
  refusals.push(['acme-admin', tok.acmeAdmin!, ROUTES.find((r) => r.path === '/v1/fsck')!]);
  for (const who of ['acme-ci', 'acme-admin']) refusals.push([who, who === 'acme-ci' ? tok.acme! : tok.acmeAdmin!, ROUTES.find((r) => r.path === '/metrics')!]);
  for (const [who, token, r] of refusals) {
    const res = await call(r.method, r.path, { token, ...(r.body !== undefined ? { body: r.body } : {}) });
    expectError(res, 403, 'forbidden', `${who}: ${r.method} ${r.path}`);
    assert.match(res.body.error.message, new RegExp(`this token \\("${who}"`));
    assert.match(res.body.error.message, r.path === '/metrics' || (r.path === '/v1/fsck' && who === 'acme-admin') ? /covers every tenant/ : new RegExp(`needs an? ${r.role} token`));
  }
  assert.deepEqual(await everything(), before);

  // What each role may do, it can: a reader reads (and scrapes), an operator manages, an admin checks.
  for (const r of ROUTES.filter((x) => x.role === 'reader')) {
    const token = r.path === '/metrics' ? tok.reader : tok.globexReader; // /metrics needs a token without a tenant
    assert.equal((await call(r.method, r.path, { token })).status, 200, `reader: ${r.method} ${r.path}`);
  }
  const metrics = await call('GET', '/metrics', { token: tok.reader });
  assert.match(metrics.body, /^shoal_cache_capacity_bytes \d+/m);
  assert.equal((await call('POST', '/v1/volumes', { token: tok.operator, body: { name: 'ops-vol', size: '1M' } })).status, 201);
  assert.equal((await call('DELETE', '/v1/volumes/ops-vol', { token: tok.operator })).status, 204);
  const fsck = await call('POST', '/v1/fsck', { token: tok.admin });
  assert.equal(fsck.status, 200);
  assert.equal(fsck.body.ok, true);
});

test('a tenant token: another tenant\'s volume is 404 exactly like a missing one, as a name, clone origin or range source', async () => {
  const before = await everything();
  const missing = await call('GET', '/v1/volumes/no-such-volume', { token: tok.acme });
  expectError(missing, 404, 'volume_not_found', 'a missing volume');
  const asMissing = (res: { status: number; body: any }, name: string, what: string) => {
    expectError(res, 404, 'volume_not_found', what);
    assert.equal(res.body.error.message, missing.body.error.message.replace('no-such-volume', name), `${what}: worded as for a volume that does not exist`);
  };
  // Every route on globex's volume, by acme's token (as operator) — the same list the roles test uses.
  for (const r of ROUTES.filter((x) => x.path.startsWith('/v1/volumes/globex-db'))) {
    asMissing(await call(r.method, r.path, { token: tok.acme, ...(r.body !== undefined ? { body: r.body } : {}) }), 'globex-db', `acme: ${r.method} ${r.path}`);
  }
  asMissing(await call('POST', '/v1/volumes', { token: tok.acme, body: { name: 'stolen', from: { volume: 'globex-db', snapshot: 'v1' } } }), 'globex-db', 'clone of globex-db@v1');
  asMissing(await call('POST', '/v1/volumes', { token: tok.acme, body: { name: 'stolen', from: { volume: 'globex-db' } } }), 'globex-db', 'clone of globex-db');
  for (const op of ['reflink', 'dedupe']) {
    const body = { source: 'globex-db@v1', sourceOffset: 0, offset: 0, length: 65536 };
    asMissing(await call('POST', `/v1/volumes/acme-gold/${op}`, { token: tok.acme, body }), 'globex-db', `${op} from globex-db@v1 into acme-gold`);
    asMissing(await call('POST', `/v1/volumes/acme-gold/${op}`, { token: tok.acme, body: { ...body, source: 'globex-db' } }), 'globex-db', `${op} from globex-db`);
  }
  // The unscoped operator is bound to the volumes without a tenant: acme's are missing to it too.
  asMissing(await call('GET', '/v1/volumes/acme-gold', { token: tok.operator }), 'acme-gold', 'ops: GET acme-gold');
  asMissing(await call('DELETE', '/v1/volumes/acme-gold?recursive=true', { token: tok.operator }), 'acme-gold', 'ops: DELETE acme-gold');

  // Choosing another tenant or a domain is an admin's call.
  for (const [token, body, re] of [
    [tok.acme, { name: 'x', size: '1M', tenant: 'globex' }, /a token of tenant acme creates volumes only for tenant acme/],
    [tok.acme, { name: 'x', size: '1M', domain: 'globex' }, /only an admin token without a tenant puts a volume in another domain/],
    [tok.operator, { name: 'x', size: '1M', tenant: 'acme' }, /a token without a tenant creates volumes without a tenant/],
    [tok.operator, { name: 'x', size: '1M', domain: 'acme' }, /keeps its volumes in dedup domain default/],
  ] as const) {
    const res = await call('POST', '/v1/volumes', { token, body });
    expectError(res, 403, 'forbidden', JSON.stringify(body));
    assert.match(res.body.error.message, re);
  }
  assert.deepEqual(await everything(), before, 'no refusal changed anything');

  // Lists and stats show a tenant only its own.
  const names = async (token: string) => (await call('GET', '/v1/volumes', { token })).body.volumes.map((v: any) => v.name);
  assert.deepEqual(await names(tok.acme!), ['acme-gold']);
  assert.deepEqual(await names(tok.globex!), ['globex-db']);
  assert.deepEqual(await names(tok.operator!), ['plain']);
  assert.deepEqual(await names(tok.admin!), ['acme-gold', 'globex-db', 'plain']);
  const stats = (await call('GET', '/v1/stats', { token: tok.acme })).body;
  assert.equal(stats.volumes, 1);
  assert.equal(stats.snapshots, 1);
  assert.equal((await call('GET', '/v1/stats', { token: tok.admin })).body.volumes, 3);

  // Within its tenant, it works: a new volume lands in acme, in acme's domain; a clone of acme's snapshot too.
  const mine = await call('POST', '/v1/volumes', { token: tok.acme, body: { name: 'acme-vm1', from: { volume: 'acme-gold', snapshot: 'v1' } } });
  assert.equal(mine.status, 201, JSON.stringify(mine.body));
  assert.equal(mine.body.tenant, 'acme');
  const fresh = await call('POST', '/v1/volumes', { token: tok.acme, body: { name: 'acme-vm2', size: '1M' } });
  assert.equal(fresh.status, 201, JSON.stringify(fresh.body));
  assert.deepEqual([fresh.body.tenant, fresh.body.domain], ['acme', 'acme']);
  for (const v of ['acme-vm1', 'acme-vm2']) assert.equal((await call('DELETE', `/v1/volumes/${v}`, { token: tok.acme })).status, 204);
});

test('tokens take effect without a restart: created and revoked through the file, re-read at once on SIGHUP; a broken file keeps the old ones', async () => {
  const until = async (token: string, status: number) => {
    const t0 = Date.now();
    let got = 0;
    while (Date.now() - t0 < 10_000) {
      got = (await call('GET', '/v1/volumes', { token })).status;
      if (got === status) return Date.now() - t0;
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.fail(`expected ${status} within 10 s, still ${got}`);
  };
  const late = await newToken('late', 'reader');
  await until(late, 200);
  const revoked = await shoalToken('revoke', 'late');
  assert.equal(revoked.status, 0, revoked.stderr);
  assert.match(revoked.stdout, /revoked token late/);
  await until(late, 401);

  // SIGHUP: the log says the file was re-read for it, and the daemon runs on.
  d.proc.kill('SIGHUP');
  await until(tok.reader!, 200);
  const t0 = Date.now();
  while (!/"reason":"SIGHUP","msg":"API tokens reloaded"/.test(d.log) && Date.now() - t0 < 5000) await new Promise((r) => setTimeout(r, 50));
  assert.match(d.log, /"reason":"SIGHUP","msg":"API tokens reloaded"/);

  // A broken file is logged and ignored: the tokens in force stay, a revoked one stays revoked.
  const good = readFileSync(tokensFile, 'utf8');
  writeFileSync(tokensFile, good.replace('"version": 1', '"version": 1,,'));
  d.proc.kill('SIGHUP');
  const t1 = Date.now();
  while (!/could not be reloaded/.test(d.log) && Date.now() - t1 < 5000) await new Promise((r) => setTimeout(r, 50));
  assert.match(d.log, /the API tokens file could not be reloaded; the tokens read before stay in force/);
  assert.equal((await call('GET', '/v1/volumes', { token: tok.reader })).status, 200);
  assert.equal((await call('GET', '/v1/volumes', { token: late })).status, 401);
  writeFileSync(tokensFile, good);
  d.proc.kill('SIGHUP');
  await until(tok.admin!, 200);
});
