// The object-storage settings of `shoal serve`: parsed and checked like every other flag, the local store
// still the default, and a data directory belongs to one store: a local store's is never served as an S3
// store's local copy, nor the reverse.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadConfig } from '../../server/config.js';
import { parseDuration } from '../../server/duration.js';
import { parseStoreUrl } from '../../server/store/s3/store-url.js';
import { ShoalError } from '../../server/errors.js';
import { MAIN } from '../helpers/daemon.js';
import { run } from '../helpers/tools.js';

const invalid = (re: RegExp) => (e: unknown) => {
  assert.ok(e instanceof ShoalError, `expected a ShoalError, got ${e}`);
  assert.equal(e.code, 'invalid_request');
  assert.match(e.message, re);
  return true;
};

test('without --store the local store is used, as before', () => {
  assert.deepEqual(loadConfig([], {}).store, { kind: 'local' });
  assert.deepEqual(loadConfig(['--store', 'local'], {}).store, { kind: 'local' });
});

test('--store s3://BUCKET/PREFIX with its defaults', () => {
  assert.deepEqual(loadConfig(['--store', 's3://vm-disks/host-a/shoal/'], {}).store, {
    kind: 's3',
    bucket: 'vm-disks',
    prefix: 'host-a/shoal/',
    endpoint: null,
    region: null,
    sync: 'flush',
    localCacheSize: { percentOfFree: 10 },
    leaseSeconds: 30,
    timeoutMs: 30_000,
    compactBelow: 0.5,
    uploadDelayMs: 5_000,
  });
  assert.equal((loadConfig(['--store', 's3://vm-disks'], {}).store as { prefix: string }).prefix, '', 'no prefix: the bucket root');
});

test('an S3 store faults the cache in at start unless told not to; the local store stays lazy', () => {
  assert.equal(loadConfig(['--store', 's3://vm-disks/p'], {}).cachePrefault, true);
  assert.equal(loadConfig(['--store', 's3://vm-disks/p', '--cache-prefault', 'off'], {}).cachePrefault, false);
  assert.equal(loadConfig(['--store', 's3://vm-disks/p'], { SHOAL_CACHE_PREFAULT: 'off' }).cachePrefault, false);
  assert.equal(loadConfig(['--store', 'local'], {}).cachePrefault, false);
  assert.equal(loadConfig([], {}).cachePrefault, false);
});

test('every S3 flag, from flags, environment and a config file', () => {
  const store = loadConfig(
    ['--store=s3://bk1/p', '--s3-endpoint', 'http://127.0.0.1:7480/', '--s3-region', 'eu-west-1', '--s3-sync', 'async', '--local-cache-size', '64G', '--lease-seconds', '10', '--s3-upload-delay', '0'],
    { SHOAL_S3_TIMEOUT: '2m', SHOAL_S3_COMPACT_BELOW: '0.25' },
  ).store;
  assert.deepEqual(store, {
    kind: 's3',
    bucket: 'bk1',
    prefix: 'p/',
    endpoint: 'http://127.0.0.1:7480',
    region: 'eu-west-1',
    sync: 'async',
    localCacheSize: { bytes: 64 * 2 ** 30 },
    leaseSeconds: 10,
    timeoutMs: 120_000,
    compactBelow: 0.25,
    uploadDelayMs: 0,
  });
  const dir = mkdtempSync(join(tmpdir(), 'shoal-s3-conf-'));
  try {
    const file = join(dir, 'shoal.json');
    writeFileSync(file, JSON.stringify({ store: 's3://bk2/q', 's3-endpoint': 'https://s3.example.net', leaseSeconds: 12, s3Timeout: '45s' }));
    const fromFile = loadConfig(['--config', file], {}).store;
    assert.deepEqual(fromFile, { ...store, bucket: 'bk2', prefix: 'q/', endpoint: 'https://s3.example.net', region: null, sync: 'flush', localCacheSize: { percentOfFree: 10 }, leaseSeconds: 12, timeoutMs: 45_000, compactBelow: 0.5, uploadDelayMs: 5_000 });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('bad S3 settings are refused with a sentence naming the flag', () => {
  const s3 = ['--store', 's3://bucket/prefix'];
  const cases: [string[], RegExp][] = [
    [['--store', 'ceph://x/y'], /--store "ceph:\/\/x\/y" is not a store: use "local" or s3:\/\/BUCKET\/PREFIX/],
    [['--store', 's3://'], /"" is not a valid bucket name/],
    [['--store', 's3://UPPER/p'], /"UPPER" is not a valid bucket name/],
    [['--store', 's3://a/p'], /"a" is not a valid bucket name/],
    [['--store', 's3://192.168.1.1/p'], /not a valid bucket name/],
    [['--store', 's3://bucket/a//b'], /the prefix may hold only/],
    [['--store', 's3://bucket/a/../b'], /the prefix may hold only/],
    [['--store', 's3://bucket/a b'], /the prefix may hold only/],
    [[...s3, '--s3-endpoint', '127.0.0.1:7480'], /--s3-endpoint "127.0.0.1:7480" is not an S3 endpoint/],
    [[...s3, '--s3-endpoint', 'ftp://h'], /is not an S3 endpoint/],
    [[...s3, '--s3-endpoint', 'http://h/?x=1'], /is not an S3 endpoint/],
    [[...s3, '--s3-region', 'eu west'], /--s3-region "eu west" is not a region name/],
    [[...s3, '--s3-sync', 'sometimes'], /--s3-sync "sometimes" must be flush or async/],
    [[...s3, '--local-cache-size', 'lots'], /--local-cache-size "lots" is not a size/],
    [[...s3, '--local-cache-size', '1M'], /--local-cache-size "1M" is too small: the local tier needs at least 64M/],
    [[...s3, '--local-cache-size', '0%'], /--local-cache-size "0%" must be a percentage above 0 and at most 100/],
    [[...s3, '--local-cache-size', '150%'], /--local-cache-size "150%" must be a percentage/],
    [[...s3, '--lease-seconds', '2'], /--lease-seconds "2" must be a whole number of seconds from 3 to 3600/],
    [[...s3, '--lease-seconds', '1.5'], /--lease-seconds/],
    [[...s3, '--lease-seconds', 'forever'], /--lease-seconds/],
    [[...s3, '--s3-timeout', 'soon'], /--s3-timeout "soon" is not a duration/],
    [[...s3, '--s3-timeout', '500ms'], /--s3-timeout "500ms" is too short/],
    [[...s3, '--s3-compact-below', '1.5'], /--s3-compact-below "1.5" must be a fraction from 0/],
    [[...s3, '--s3-compact-below', 'half'], /--s3-compact-below/],
    [[...s3, '--s3-compact-below', ''], /--s3-compact-below/],
    [[...s3, '--s3-upload-delay', '2s'], /--s3-upload-delay applies only to --s3-sync async/],
    [[...s3, '--s3-sync', 'async', '--s3-upload-delay', 'later'], /--s3-upload-delay "later" is not a duration/],
    [[...s3, '--s3-sync', 'async', '--s3-upload-delay', '11m'], /--s3-upload-delay "11m" is too long/],
    // An S3 setting without an S3 store would silently do nothing.
    [['--s3-endpoint', 'http://127.0.0.1:7480'], /--s3-endpoint applies only to an S3 store/],
    [['--store', 'local', '--lease-seconds', '10'], /--lease-seconds applies only to an S3 store/],
  ];
  for (const [argv, re] of cases) assert.throws(() => loadConfig(argv, {}), invalid(re), argv.join(' '));
  assert.throws(() => loadConfig([], { SHOAL_S3_REGION: 'eu-west-1' }), invalid(/SHOAL_S3_REGION applies only to an S3 store/));
});

test('durations: ms, s, m, h; a plain number is seconds', () => {
  assert.equal(parseDuration('30'), 30_000);
  assert.equal(parseDuration('30s'), 30_000);
  assert.equal(parseDuration('1.5s'), 1500);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration('2m'), 120_000);
  assert.equal(parseDuration('1h'), 3_600_000);
  for (const bad of ['', 's', '-1s', '1d', '1e3', '10 seconds']) assert.throws(() => parseDuration(bad, 'x'), invalid(/^x ".*" is not a duration/), bad);
});

test('store URLs keep the bucket and a normalised prefix', () => {
  assert.deepEqual(parseStoreUrl('s3://my.bucket-1/a/b.c/d_e', 'x'), { bucket: 'my.bucket-1', prefix: 'a/b.c/d_e/' });
  assert.deepEqual(parseStoreUrl('s3://bkt/', 'x'), { bucket: 'bkt', prefix: '' });
  assert.throws(() => parseStoreUrl('s3://bkt..x/p', 'x'), invalid(/not a valid bucket name/));
});

test('a data directory belongs to one store: a local one is refused for --store s3://…, an S3 copy without --store', async () => {
  const parent = mkdtempSync(join(tmpdir(), 'shoal-s3-refuse-'));
  const localDir = join(parent, 'local');
  const s3Dir = join(parent, 's3');
  const serve = (dir: string, ...more: string[]) => run(process.execPath, [MAIN, 'serve', '--data-dir', dir, '--nbd', '127.0.0.1:0', '--api', '127.0.0.1:0', '--nbd-socket', join(dir, 'nbd.sock'), ...more], { timeoutMs: 30_000 });
  // Nothing listens on the endpoint: the data directory is checked before the bucket is asked anything.
  const s3 = ['--store', 's3://vm-disks/host-a', '--s3-endpoint', 'http://127.0.0.1:9'];
  try {
    mkdirSync(localDir);
    writeFileSync(join(localDir, 'chunks.dat'), '');
    const r = await serve(localDir, ...s3);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^shoal: .*\/local holds a local store's chunks: an S3 store needs a --data-dir of its own \(an empty one is filled from the bucket\)\n$/);

    mkdirSync(s3Dir);
    writeFileSync(join(s3Dir, 'store.json'), JSON.stringify({ store: 's3://vm-disks/host-a/' }));
    const l = await serve(s3Dir);
    assert.equal(l.status, 1, l.stderr);
    assert.match(l.stderr, /is the local copy of the S3 store s3:\/\/vm-disks\/host-a\/: start with --store s3:\/\/vm-disks\/host-a\/ \(and its --s3-endpoint\), or use another --data-dir\n$/);
    assert.equal(existsSync(join(s3Dir, 'meta.lmdb')), false, 'nothing was created in it');
    const other = await serve(s3Dir, '--store', 's3://vm-disks/host-b', '--s3-endpoint', 'http://127.0.0.1:9');
    assert.equal(other.status, 1, other.stderr);
    assert.match(other.stderr, /is the local copy of s3:\/\/vm-disks\/host-a\/, not of s3:\/\/vm-disks\/host-b\/: use another --data-dir/);

    // A bad S3 flag is a usage error (exit 2), as every other bad flag.
    const bad = await serve(join(parent, 'none'), '--store', 's3://vm-disks/host-a', '--lease-seconds', '0');
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /^shoal: --lease-seconds "0" must be a whole number of seconds from 3 to 3600\n$/);
    assert.equal(existsSync(join(parent, 'none')), false, 'a usage error creates nothing');
  } finally {
    rmSync(parent, { recursive: true, force: true });
  }
});
