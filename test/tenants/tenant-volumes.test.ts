// A volume's tenant: set at creation, its dedup domain by default (no chunk shared across tenants
// unless an admin puts them in one domain), inherited by clones, shown and kept across a restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools } from '../helpers/tools.js';
import { withHandle, expectApiError, settledStats, MiB } from '../helpers/volume-io.js';

let d: Daemon;
before(async () => {
  d = await startDaemon();
});
after(async () => {
  await d?.dispose();
});

const writeSeeded = (seed: number, mib: number) => `
import random
rnd = random.Random(${seed})
for i in range(${mib}):
    h.pwrite(rnd.randbytes(1024 * 1024), i * 1024 * 1024)
h.flush()
`;

test('a tenant is its volumes\' dedup domain: identical data of two tenants is stored twice, within one tenant once', async (t) => {
  if (!needTools(t, 'nbdsh')) return;
  const base = await settledStats(d);
  const a = await d.api('POST', '/v1/volumes', { name: 'a-vm1', size: 64 * MiB, tenant: 'acme' });
  assert.equal(a.status, 201, JSON.stringify(a.body));
  assert.equal(a.body.tenant, 'acme');
  assert.equal(a.body.domain, 'acme');
  await d.createVolume('b-vm1', 64 * MiB, { tenant: 'globex' });
  await withHandle(d, 'a-vm1', writeSeeded(5, 8));
  await withHandle(d, 'b-vm1', writeSeeded(5, 8));
  const s1 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s1.physicalBytes - base.physicalBytes, 16 * MiB, 'the same bytes in two tenants are two copies');

  await d.createVolume('a-vm2', 64 * MiB, { tenant: 'acme' });
  await withHandle(d, 'a-vm2', writeSeeded(5, 8));
  const s2 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s2.physicalBytes, s1.physicalBytes, 'the same bytes within a tenant are stored once');

  // An explicit domain is an admin's decision to share: a globex volume in domain acme deduplicates with acme.
  await d.createVolume('b-shared', 64 * MiB, { tenant: 'globex', domain: 'acme' });
  await withHandle(d, 'b-shared', writeSeeded(5, 8));
  const s3 = (await d.api('GET', '/v1/stats')).body;
  assert.equal(s3.physicalBytes, s2.physicalBytes);
  assert.equal((await d.api('GET', '/v1/volumes/b-shared')).body.domain, 'acme');

  // Reflink across tenants' domains is refused like any domain mismatch.
  expectApiError(await d.api('POST', '/v1/volumes/b-vm1/reflink', { source: 'a-vm1', sourceOffset: 0, offset: 0, length: MiB }), 409, 'domain_mismatch');
});

test('a clone takes its origin\'s tenant and domain, from a volume or a snapshot', async () => {
  assert.equal((await d.api('POST', '/v1/volumes/a-vm1/snapshots', { name: 'gold' })).status, 201);
  for (const from of [{ volume: 'a-vm1' }, { volume: 'a-vm1', snapshot: 'gold' }]) {
    const name = `a-clone-${from.snapshot ?? 'live'}`;
    const c = await d.api('POST', '/v1/volumes', { name, from });
    assert.equal(c.status, 201, JSON.stringify(c.body));
    assert.equal(c.body.tenant, 'acme');
    assert.equal(c.body.domain, 'acme');
  }
  // A clone cannot be given another tenant: it shares every chunk with its origin.
  const before = (await d.api('GET', '/v1/volumes')).body.volumes.length;
  expectApiError(await d.api('POST', '/v1/volumes', { name: 'steal', from: { volume: 'a-vm1' }, tenant: 'globex' }), 400, 'invalid_request');
  assert.equal((await d.api('GET', '/v1/volumes')).body.volumes.length, before);
});

test('bad tenants are refused and create nothing', async () => {
  const before = (await d.api('GET', '/v1/volumes')).body.volumes.length;
  expectApiError(await d.api('POST', '/v1/volumes', { name: 'x1', size: MiB, tenant: 'no/slash' }), 400, 'invalid_name');
  expectApiError(await d.api('POST', '/v1/volumes', { name: 'x2', size: MiB, tenant: '' }), 400, 'invalid_name');
  expectApiError(await d.api('POST', '/v1/volumes', { name: 'x3', size: MiB, tenant: 7 }), 400, 'invalid_name');
  const reserved = await d.api('POST', '/v1/volumes', { name: 'x4', size: MiB, tenant: 'default' });
  expectApiError(reserved, 400, 'invalid_name');
  assert.match(reserved.body.error.message, /"default" is reserved/);
  assert.equal((await d.api('GET', '/v1/volumes')).body.volumes.length, before);
});

test('the tenant is listed, and kept across a restart; a volume without one has tenant null', async () => {
  await d.createVolume('plain', MiB);
  const tenants = async () => Object.fromEntries((await d.api('GET', '/v1/volumes')).body.volumes.map((v: any) => [v.name, v.tenant]));
  const listed = await tenants();
  assert.deepEqual(listed, { 'a-clone-gold': 'acme', 'a-clone-live': 'acme', 'a-vm1': 'acme', 'a-vm2': 'acme', 'b-shared': 'globex', 'b-vm1': 'globex', plain: null });
  await d.restart();
  assert.deepEqual(await tenants(), listed);
  assert.equal((await d.api('GET', '/v1/volumes/b-shared')).body.domain, 'acme');
});
