// The CLI as a client of the REST API: against the real routes on a loopback port, backed by the
// in-memory fake control. Checks requests, human and --json output, exit codes and error sentences.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../api/app.js';
import { Metrics } from '../../api/metrics.js';
import { runCli, type CliOptions } from '../../server/cli/cli.js';
import { apiBaseUrl } from '../../server/cli/api-client.js';
import { FakeControl } from './fake-control.js';

let app: FastifyInstance;
let control: FakeControl;
let url = '';

before(async () => {
  control = new FakeControl();
  app = await buildApi({ control, metrics: new Metrics({ control, defaultMetrics: false }) });
  url = await app.listen({ host: '127.0.0.1', port: 0 });
});
after(() => app.close());

async function cli(args: string[], opts: CliOptions = {}) {
  let stdout = '';
  let stderr = '';
  const code = await runCli(['--api', url, ...args], { env: {}, stdout: (t) => (stdout += t), stderr: (t) => (stderr += t), ...opts });
  return { code, stdout, stderr };
}

test('volume lifecycle with human output', async () => {
  let r = await cli(['volume', 'create', 'golden', '16G']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /created volume golden \(16 GiB, domain default\)/);
  r = await cli(['volume', 'create', 'other', '1M', '--domain', 'tenant-a']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(control.volumes.get('other')!.domain, 'tenant-a');

  r = await cli(['volume', 'list']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /^NAME\s+SIZE\s+MAPPED/);
  assert.match(r.stdout, /golden\s+16 GiB/);

  r = await cli(['volume', 'show', 'golden']);
  assert.match(r.stdout, /size:\s+16 GiB \(17179869184 bytes\)/);
  r = await cli(['volume', 'resize', 'golden', '32G']);
  assert.match(r.stdout, /resized volume golden to 32 GiB/);
  r = await cli(['volume', 'delete', 'other']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /deleted volume other/);
});

test('--json prints the API JSON', async () => {
  const r = await cli(['volume', 'show', 'golden', '--json']);
  assert.equal(r.code, 0);
  assert.equal(JSON.parse(r.stdout).name, 'golden');
  const s = await cli(['--json', 'stats']);
  assert.equal(JSON.parse(s.stdout).dedupRatio, 3);
});

test('snapshots, clone, rollback, reflink, dedupe', async () => {
  let r = await cli(['snapshot', 'create', 'golden', 'v1']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /golden@v1/);
  r = await cli(['snapshot', 'list', 'golden']);
  assert.match(r.stdout, /v1\s+32 GiB/);
  r = await cli(['clone', 'vm1', 'golden@v1']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(control.volumes.get('vm1')!.origin, { volume: 'golden', snapshot: 'v1' });
  r = await cli(['clone', 'vm2', 'golden']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(control.volumes.get('vm2')!.origin, { volume: 'golden' });
  r = await cli(['rollback', 'vm1', 'v1']);
  assert.equal(r.code, 1); // vm1 has no snapshot v1 of its own
  assert.match(r.stderr, /^shoal: volume "vm1" has no snapshot "v1"\n$/);
  r = await cli(['rollback', 'golden', 'v1', '--force']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(control.calls.filter((c) => c.method === 'rollback').at(-1)!.args, ['golden', 'v1', { force: true }]);
  r = await cli(['reflink', 'vm2', 'golden@v1', '--source-offset', '64K', '--offset', '0', '--length', '1M']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(control.calls.filter((c) => c.method === 'reflink').at(-1)!.args, ['vm2', { source: 'golden@v1', sourceOffset: 65536, offset: 0, length: 1 << 20 }]);
  assert.match(r.stdout, /shared 1 MiB/);
  r = await cli(['dedupe', 'vm2', 'golden', '--source-offset=0', '--offset=0', '--length=4096']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /4 KiB differed/);
  r = await cli(['snapshot', 'delete', 'golden', 'v1']);
  assert.equal(r.code, 0, r.stderr);
});

test('API errors: "shoal: <sentence>", exit 1', async () => {
  let r = await cli(['volume', 'create', 'golden', '1G']);
  assert.equal(r.code, 1);
  assert.equal(r.stderr, 'shoal: a volume named "golden" already exists\n');
  r = await cli(['volume', 'show', 'nope']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^shoal: there is no volume "nope"\n$/);
  r = await cli(['volume', 'create', 'bad@name', '1G']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /not a valid volume name/);
  control.volumes.get('golden')!.connections = 1;
  r = await cli(['volume', 'delete', 'golden']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /connected/);
  r = await cli(['volume', 'delete', 'golden', '--force']);
  assert.equal(r.code, 0, r.stderr);
});

test('usage errors: exit 2 with a sentence', async () => {
  const cases: [string[], RegExp][] = [
    [['bogus'], /unknown command "bogus"/],
    [['volume'], /needs a subcommand/],
    [['volume', 'frob'], /unknown subcommand "volume frob"/],
    [['volume', 'create', 'x'], /needs SIZE/],
    [['volume', 'create', 'x', 'lots'], /SIZE "lots" is not a size/],
    [['volume', 'create', 'x', '0'], /greater than zero/],
    [['volume', 'create', 'x', '1G', 'extra'], /not "extra"/],
    [['volume', 'list', '--force'], /--force does not apply to `shoal volume list`/],
    [['volume', 'list', '--frobnicate'], /unknown option "--frobnicate"/],
    [['reflink', 'a', 'b', '--offset', '0', '--length', '1'], /needs --source-offset/],
    [['reflink', 'a', 'b@c@d', '--source-offset', '0', '--offset', '0', '--length', '1'], /VOLUME or VOLUME@SNAPSHOT/],
    [['clone', 'a'], /needs VOLUME\[@SNAPSHOT\]/],
    [['fsck', 'a', 'b'], /takes \[DATA_DIR\]/],
    [['volume', 'create', 'x', '1G', '--domain'], /--domain needs a value/],
    [['volume', 'delete', 'x', '--force=yes'], /--force takes no value/],
    [['volume', 'delete', 'x', '--shrink'], /--shrink does not apply to `shoal volume delete`/],
    [['volume', 'resize', 'x', '1G', '--recursive'], /--recursive does not apply to `shoal volume resize`/],
    [['volume', 'list', '-x'], /unknown option "-x"/],
    [['reflink', 'a', 'b', '--source-offset', '-1', '--offset', '0', '--length', '1'], /--source-offset needs a value; to give one that starts with "-", write --source-offset=-1/],
    [['volume', 'list', '--tokens-file', '/x'], /--tokens-file does not apply to `shoal volume list`/],
    // `shoal token` edits a file and talks to no API: --api (which cli() adds) is refused.
    [['token', 'list', '--tokens-file', '/x'], /--api does not apply to `shoal token list`/],
  ];
  for (const [args, re] of cases) {
    const r = await cli(args);
    assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    assert.match(r.stderr, /^shoal: /);
    assert.match(r.stderr, re, args.join(' '));
    assert.equal(r.stdout, '');
  }
  const tokenCases: [string[], RegExp][] = [
    [['token'], /`shoal token` needs a subcommand/],
    [['token', 'create', 'ci', '--tokens-file', '/nonexistent/x'], /needs --role/],
    [['token', 'create', 'ci', '--role', 'root', '--tokens-file', '/nonexistent/x'], /--role "root" is not a role: use reader, operator, admin/],
    [['token', 'create', 'ci', '--role', 'reader'], /needs --tokens-file FILE/],
    [['token', 'revoke', '--tokens-file', '/x'], /needs NAME/],
  ];
  for (const [args, re] of tokenCases) {
    let stderr = '';
    const code = await runCli(args, { env: {}, stdout: () => {}, stderr: (t) => (stderr += t) });
    assert.equal(code, 2, `${args.join(' ')}: ${stderr}`);
    assert.match(stderr, re, args.join(' '));
  }
  const none = await runCli([], { stdout: () => {}, stderr: () => {} });
  assert.equal(none, 2);
  let out = '';
  assert.equal(await runCli(['help'], { stdout: (t) => (out += t) }), 0);
  assert.match(out, /shoal volume create NAME SIZE/);
});

test('--tenant, --shrink and --recursive reach the API', async () => {
  let r = await cli(['volume', 'create', 'acme-vm', '1G', '--tenant', 'acme']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /created volume acme-vm \(1 GiB, tenant acme, domain acme\)/);
  r = await cli(['volume', 'list']);
  assert.match(r.stdout, /TENANT {2}STATE\n/);
  assert.match(r.stdout, /acme-vm .* acme\s+ready\n/);
  r = await cli(['volume', 'show', 'acme-vm']);
  assert.match(r.stdout, /tenant:\s+acme/);

  r = await cli(['volume', 'resize', 'acme-vm', '1M']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /needs "shrink": true/);
  r = await cli(['volume', 'resize', 'acme-vm', '1M', '--shrink']);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(control.calls.filter((c) => c.method === 'resizeVolume').at(-1)!.args, ['acme-vm', 1 << 20, { shrink: true }]);

  await cli(['snapshot', 'create', 'acme-vm', 's1']);
  r = await cli(['volume', 'delete', 'acme-vm']);
  assert.equal(r.code, 1);
  assert.match(r.stderr, /recursive=true/);
  r = await cli(['volume', 'delete', 'acme-vm', '--recursive', '--force']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /deleted volume acme-vm and its snapshots/);
  assert.deepEqual(control.calls.filter((c) => c.method === 'deleteVolume').at(-1)!.args, ['acme-vm', { force: true, recursive: true }]);
});

test('fsck: online via the API, offline via the callback; exit 1 on problems', async () => {
  let r = await cli(['fsck']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /no problems found/);
  control.fsckErrors = ['chunk 9 is referenced 3 times but its refcount is 2.'];
  r = await cli(['fsck']);
  assert.equal(r.code, 1);
  assert.match(r.stdout, /chunk 9/);
  assert.match(r.stdout, /1 problem found/);
  control.fsckErrors = [];

  const seen: string[] = [];
  const report = { ok: true, checkedVolumes: 2, checkedSnapshots: 0, checkedNodes: 5, checkedChunks: 7, errors: [] };
  let stdout = '';
  const code = await runCli(['fsck', '/some/dir'], { env: {}, stdout: (t) => (stdout += t), offlineFsck: async (d) => (seen.push(d), report) });
  assert.equal(code, 0);
  assert.deepEqual(seen, ['/some/dir']);
  assert.match(stdout, /checked 2 volumes/);
  assert.equal(await runCli(['fsck', '/x'], { env: {}, stderr: () => {}, offlineFsck: async () => ({ ...report, ok: false, errors: ['bad'] }), stdout: () => {} }), 1);
});

test('daemon not running: a sentence naming the URL', async () => {
  // A port that nothing listens on: bind one, close it.
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as any).port;
  await new Promise((r) => srv.close(r));
  let stderr = '';
  const code = await runCli(['volume', 'list', '--api', `127.0.0.1:${port}`], { env: {}, stderr: (t) => (stderr += t), stdout: () => {} });
  assert.equal(code, 1);
  assert.equal(stderr, `shoal: cannot reach the Shoal API at http://127.0.0.1:${port}: is the daemon running?\n`);
});

test('the API address: --api, SHOAL_API (also HOST:PORT as the daemon takes it), default', () => {
  assert.equal(apiBaseUrl(undefined, {}), 'http://127.0.0.1:10880');
  assert.equal(apiBaseUrl(undefined, { SHOAL_API: '127.0.0.1:9999' }), 'http://127.0.0.1:9999');
  assert.equal(apiBaseUrl(undefined, { SHOAL_API: '0.0.0.0:10880' }), 'http://127.0.0.1:10880');
  assert.equal(apiBaseUrl(undefined, { SHOAL_API: '[::1]:10880' }), 'http://[::1]:10880');
  assert.equal(apiBaseUrl('https://shoal.example:8443/', { SHOAL_API: 'x:1' }), 'https://shoal.example:8443');
  assert.throws(() => apiBaseUrl('ftp://x', {}), /http/);
});

test('an incomplete volume shows as one; top needs a terminal; help lists import, export and top', async () => {
  control.volumes.clear();
  await control.createVolume({ name: 'half', size: 4096, incomplete: true });
  let r = await cli(['volume', 'list']);
  assert.match(r.stdout, /^half\s.*\sincomplete\n/m);
  r = await cli(['volume', 'show', 'half']);
  assert.match(r.stdout, /state:\s+incomplete \(an import did not finish/);
  r = await cli(['top'], { terminal: { isTTY: false, write: () => true } });
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^shoal: shoal top draws on a terminal; for figures in a script use `shoal stats --json` or GET \/v1\/activity\n$/);
  r = await cli(['top', 'extra']);
  assert.equal(r.code, 2);
  r = await cli(['import', 'x', 'y', '--shrink']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--shrink does not apply to `shoal import`/);
  r = await cli(['export', 'x', 'y', '--size', '1G']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--size does not apply to `shoal export`/);
  r = await cli(['help']);
  assert.match(r.stdout, /shoal import NAME FILE \[--size SIZE\] \[--tenant T\] \[--format raw\|qcow2\|vmdk\|vhdx\]/);
  assert.match(r.stdout, /shoal export VOLUME\[@SNAPSHOT\] FILE/);
  assert.match(r.stdout, /shoal top /);
});
