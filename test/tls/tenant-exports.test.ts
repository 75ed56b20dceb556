// Over TLS a client's identity is a tenant (issue: tenants, item 2): with PSK identities alice and
// bob, each lists and opens only its own tenant's volumes and their snapshots; another tenant's
// volume is answered exactly as one that does not exist (NBD_REP_ERR_UNKNOWN, nothing listed); an
// identity named in --tls-admins sees every volume; a plaintext client on the Unix socket (--tls
// on) sees every volume, as without TLS. Real clients throughout: nbdinfo, nbdcopy, qemu-io.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { addPskIdentity, haveGnutlsTools, makeTlsKeys, type TlsKeys } from '../helpers/tls-keys.js';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, run, runOk } from '../helpers/tools.js';
import { libnbdUri, qemuTlsArgs, type Credentials } from './tls-daemon.js';

const MiB = 1024 * 1024;

describe('TLS identities are tenants over NBD', () => {
  let keys: TlsKeys;
  let d: Daemon;
  const as = (identity: string): Credentials => ({ psk: { file: keys.psk, identity } });

  before(async () => {
    if (!haveGnutlsTools()) return;
    keys = await makeTlsKeys();
    await addPskIdentity(keys.psk, 'root');
    d = await startDaemon({ args: ['--tls', 'on', '--tls-psk', keys.psk, '--tls-admins', 'root'] });
    await d.createVolume('a-vm', 8 * MiB, { tenant: 'alice' });
    await d.createVolume('b-vm', 8 * MiB, { tenant: 'bob' });
    await d.createVolume('shared', 8 * MiB);
    assert.equal((await d.api('POST', '/v1/volumes/a-vm/snapshots', { name: 's1' })).status, 201);
    assert.equal((await d.api('POST', '/v1/volumes/b-vm/snapshots', { name: 's1' })).status, 201);
  });
  after(async () => {
    await d?.dispose();
    keys?.dispose();
  });

  const listed = async (creds: Credentials | null): Promise<string[]> => {
    const uri = creds ? libnbdUri(d, '', creds) : d.unixUri('');
    const out = await runOk('nbdinfo', ['--list', '--json', uri]);
    return (JSON.parse(out).exports as Array<{ 'export-name': string }>).map((e) => e['export-name']).sort();
  };

  it('each tenant lists its own volumes and snapshots; admins and plaintext see all', async (t) => {
    if (!keys || !needTools(t, 'nbdinfo')) return;
    assert.deepEqual(await listed(as('alice')), ['a-vm', 'a-vm@s1']);
    assert.deepEqual(await listed(as('bob')), ['b-vm', 'b-vm@s1']);
    assert.deepEqual(await listed(as('root')), ['a-vm', 'a-vm@s1', 'b-vm', 'b-vm@s1', 'shared']);
    assert.deepEqual(await listed(null), ['a-vm', 'a-vm@s1', 'b-vm', 'b-vm@s1', 'shared']);
  });

  it("opening another tenant's volume or snapshot by name reads as a volume that does not exist", async (t) => {
    if (!keys || !needTools(t, 'nbdinfo', 'nbdcopy', 'qemu-io')) return;
    for (const name of ['b-vm', 'b-vm@s1', 'shared', 'no-such-volume']) {
      const r = await run('nbdinfo', [libnbdUri(d, name, as('alice'))]);
      assert.notEqual(r.status, 0, `alice must not open ${name}`);
      assert.match(r.stderr, /server replied with error to opt_go request: No such file or directory|unknown|not found|No such/i, r.stderr);
      assert.doesNotMatch(r.stderr, /permission|forbidden|tenant/i, 'the refusal says nothing a missing volume would not');
    }
    // Her own volume works end to end; bob's bytes are untouched by her attempts.
    const w = await runOk('qemu-io', [...qemuTlsArgs(d, 'a-vm', as('alice')), '-c', 'write -P 0x5a 0 65536', '-c', 'read -P 0x5a 0 65536']);
    assert.doesNotMatch(w, /Pattern verification failed|error|failed/i, w);
    const bobRead = await runOk('qemu-io', [...qemuTlsArgs(d, 'b-vm', as('bob')), '-c', 'read -P 0 0 65536']);
    assert.doesNotMatch(bobRead, /Pattern verification failed/, bobRead);
    // An admin opens anyone's.
    await runOk('nbdcopy', [libnbdUri(d, 'b-vm@s1', as('root')), 'null:']);
  });
});
