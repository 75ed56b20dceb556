// Bad input to the change list, over REST and through `shoal changes`: each gets its stable code
// (404 snapshot_not_found, 400 invalid_snapshot_range saying which rule, 400 invalid_range or
// invalid_request for paging) or a usage sentence, and the volume is left as it was.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { MAIN, startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { expectApiError, qemuIo, MiB } from '../helpers/volume-io.js';

let d: Daemon;
before(async () => {
  d = await startDaemon();
  await d.createVolume('cv', 4 * MiB);
  await d.createVolume('other', MiB);
  assert.equal((await d.api('POST', '/v1/volumes/other/snapshots', { name: 'o1' })).status, 201);
});
after(async () => {
  await d?.dispose();
});

test('REST: unknown snapshots, a since not older than until, bad paging: clear errors', async (t) => {
  if (!needTools(t, 'qemu-io')) return;
  await qemuIo(d, 'cv', ['write -P 0x07 0 1M']);
  for (const s of ['s1', 's2']) assert.equal((await d.api('POST', '/v1/volumes/cv/snapshots', { name: s })).status, 201);
  await qemuIo(d, 'cv', ['write -P 0x08 0 4k']);
  const get = (q: string) => d.api('GET', `/v1/volumes/cv/changes?${q}`);
  // The volume as GET shows it, but when its sharing was counted (GET counts it anew each time).
  const volume = async () => {
    const { sharingAt: _, ...rest } = (await d.api('GET', '/v1/volumes/cv')).body;
    return rest;
  };
  const before = await volume();

  expectApiError(await get('until=s2'), 400, 'invalid_request');
  expectApiError(await get('since=nope'), 404, 'snapshot_not_found');
  expectApiError(await get('since=s1&until=nope'), 404, 'snapshot_not_found');
  expectApiError(await get('since=other@o1'), 404, 'snapshot_not_found'); // not a volume cv was cloned from
  expectApiError(await get('since=cv@nope'), 404, 'snapshot_not_found');
  expectApiError(await d.api('GET', '/v1/volumes/nope/changes?since=s1'), 404, 'volume_not_found');
  let r = await get('since=s2&until=s2');
  expectApiError(r, 400, 'invalid_snapshot_range');
  assert.match(r.body.error.message, /same snapshot/);
  r = await get('since=s2&until=s1');
  expectApiError(r, 400, 'invalid_snapshot_range');
  assert.match(r.body.error.message, /since \(s2\) is newer than until \(s1\)/);
  expectApiError(await get(`since=s1&offset=${4 * MiB + 4096}`), 400, 'invalid_range');
  expectApiError(await get('since=s1&offset=12x'), 400, 'invalid_request');
  expectApiError(await get('since=s1&limit=0'), 400, 'invalid_request');
  expectApiError(await get('since=s1&limit=65537'), 400, 'invalid_request');
  expectApiError(await get('since=s1&page=2'), 400, 'invalid_request');
  expectApiError(await get('since=bad/name'), 400, 'invalid_name');

  // What does hold: the live volume against s2 is one chunk; the volume's own name is allowed as ORIGIN.
  r = await get('since=s2');
  assert.deepEqual(r.body, { extents: [{ offset: 0, length: 4096 }] });
  assert.deepEqual((await get('since=cv@s2')).body, r.body);
  assert.deepEqual((await get(`since=s2&offset=${4 * MiB}`)).body, { extents: [] }, 'an offset at the end lists nothing');
  assert.deepEqual((await get('since=s1&until=s2')).body, { extents: [] }, 'nothing changed between s1 and s2');
  // Nothing was changed by any of it.
  assert.deepEqual(await volume(), before);
});

test('CLI: shoal changes prints the extents, and refuses bad command lines with a sentence', async (t) => {
  if (!needTools(t, 'qemu-io')) return;
  await d.createVolume('cli', 4 * MiB);
  assert.equal((await d.api('POST', '/v1/volumes/cli/snapshots', { name: 'a' })).status, 201);
  await qemuIo(d, 'cli', ['write -P 0x09 1M 8k', 'write -P 0x0a 3M 512']);
  const shoal = (...args: string[]) => run(process.execPath, [MAIN, ...args, '--api', d.apiUrl]);

  let r = await shoal('changes', 'cli', '--since', 'a');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^\s*OFFSET\s+LENGTH$/m);
  assert.match(r.stdout, /^1048576\s+8192$/m);
  assert.match(r.stdout, /^3145728\s+4096$/m);
  assert.match(r.stdout, /2 extent\(s\), 12 KiB may differ from a/);

  r = await shoal('changes', 'cli');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /^shoal: `shoal changes` needs --since SNAPSHOT/);
  r = await shoal('changes', '--since', 'a');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /needs VOLUME\[@SNAPSHOT\]/);
  r = await shoal('changes', 'cli@a@b', '--since', 'a');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /must be VOLUME or VOLUME@SNAPSHOT/);
  r = await shoal('changes', 'cli', '--since', 'a', '--force');
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--force does not apply/);
  r = await shoal('stats', '--since', 'a');
  assert.equal(r.status, 2);
  r = await shoal('changes', 'cli', '--since', 'zz');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /^shoal: volume cli has no snapshot "zz"\n$/);
  r = await shoal('changes', 'cli@a', '--since', 'a');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /same snapshot/);
});
