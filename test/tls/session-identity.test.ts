// The NBD engine hands who the client is down the export port: listExports(session) and
// openExport(name, onRevoke, session) see {tls, identity} — the PSK identity, or the client
// certificate's CN with --tls-verify-peer — as established by the TLS handshake, never anything
// the client claimed in plaintext. Real clients (nbdinfo) against the engine in this process.
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { NbdServer } from '../../server/nbd/server.js';
import type { BlockExport, NbdSession, ExportListing } from '../../server/volume/export-port.js';
import { loadTlsCredentials } from '../../server/nbd/tls-credentials.js';
import { needTools, runOk } from '../helpers/tools.js';
import { haveGnutlsTools, makeTlsKeys, type TlsKeys } from '../helpers/tls-keys.js';
import { MemoryProvider } from '../nbd/memory-provider.js';

class RecordingProvider extends MemoryProvider {
  sessions: { call: 'list' | 'open'; session: NbdSession }[] = [];
  override listExports(session: NbdSession): ExportListing[] {
    this.sessions.push({ call: 'list', session: { ...session } });
    return super.listExports();
  }
  override openExport(name: string, onRevoke: () => void, session: NbdSession): BlockExport | null {
    this.sessions.push({ call: 'open', session: { ...session } });
    return super.openExport(name, onRevoke);
  }
}

describe('the export port learns the TLS identity', () => {
  let keys: TlsKeys;
  const servers: NbdServer[] = [];

  async function serve(files: { psk?: string; certificates?: string; verifyPeer?: boolean }): Promise<{ provider: RecordingProvider; port: number }> {
    const provider = new RecordingProvider();
    provider.add('v', 1024 * 1024);
    const credentials = loadTlsCredentials({ psk: files.psk ?? null, certificates: files.certificates ?? null, verifyPeer: files.verifyPeer ?? false });
    const server = new NbdServer({ provider, tls: { mode: 'on', credentials } });
    servers.push(server);
    const { port } = await server.listenTcp('127.0.0.1', 0);
    return { provider, port };
  }

  /** Every call the client caused saw `session`, and an export was opened. */
  function sawOnly(provider: RecordingProvider, session: NbdSession): void {
    assert.ok(provider.sessions.some((s) => s.call === 'open'), 'an export was opened');
    for (const s of provider.sessions) assert.deepEqual(s.session, session, s.call);
    provider.sessions = [];
  }

  before(async () => {
    if (haveGnutlsTools()) keys = await makeTlsKeys();
  });
  after(async () => {
    for (const s of servers) await s.close();
    keys?.dispose();
  });

  it('PSK: the identity the key was found for; plaintext: none', async (t) => {
    if (!keys || !needTools(t, 'nbdinfo')) return;
    const { provider, port } = await serve({ psk: keys.psk });
    await runOk('nbdinfo', ['--list', `nbds://bob@127.0.0.1:${port}/v?tls-psk-file=${keys.psk}`]);
    assert.equal(provider.sessions[0]?.call, 'list', 'nbdinfo --list lists, then opens each export');
    sawOnly(provider, { tls: true, identity: 'bob' });
    await runOk('nbdinfo', [`nbd://127.0.0.1:${port}/v`]);
    sawOnly(provider, { tls: false, identity: null });
  });

  it("X.509: the client certificate's CN with --tls-verify-peer, none without", async (t) => {
    if (!keys || !needTools(t, 'nbdinfo')) return;
    const verified = await serve({ certificates: keys.serverDir, verifyPeer: true });
    await runOk('nbdinfo', [`nbds://127.0.0.1:${verified.port}/v?tls-certificates=${keys.clientDir}`]);
    sawOnly(verified.provider, { tls: true, identity: 'alice' });
    // Without --tls-verify-peer no client certificate is asked for, so nobody is named.
    const unverified = await serve({ certificates: keys.serverDir });
    await runOk('nbdinfo', [`nbds://127.0.0.1:${unverified.port}/v?tls-certificates=${keys.clientDir}`]);
    sawOnly(unverified.provider, { tls: true, identity: null });
  });
});
