// The NBD Unix socket is created mode 0660 (owner and group may connect), or what
// --nbd-socket-mode says; a user outside them cannot connect.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import { startDaemon, type Daemon } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';

describe('NBD Unix socket permissions', () => {
  const daemons: Daemon[] = [];
  after(async () => {
    for (const d of daemons) await d.dispose();
  });

  async function serve(args: string[] = []): Promise<Daemon> {
    const d = await startDaemon({ args });
    daemons.push(d);
    await d.createVolume('v', 1024 * 1024);
    return d;
  }

  /** nbdinfo over the socket as `nobody` (neither owner nor group): exit status. */
  async function asStranger(d: Daemon): Promise<{ status: number | null; stderr: string }> {
    chmodSync(dirname(d.nbdSocket), 0o755); // the directory must not be what stops it
    return run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', 'nbdinfo', d.unixUri('v')]);
  }

  it('0660 by default: the owner connects, other users cannot', async (t) => {
    const d = await serve();
    assert.equal(statSync(d.nbdSocket).mode & 0o777, 0o660);
    if (!needTools(t, 'nbdinfo', 'setpriv')) return;
    assert.equal((await run('nbdinfo', [d.unixUri('v')])).status, 0);
    if (process.getuid?.() !== 0) return t.skip('needs root to act as another user');
    const r = await asStranger(d);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /Permission denied/);
  });

  it('--nbd-socket-mode sets the bits', async (t) => {
    const open = await serve(['--nbd-socket-mode', '0666']);
    assert.equal(statSync(open.nbdSocket).mode & 0o777, 0o666);
    const owner = await serve(['--nbd-socket-mode=600']);
    assert.equal(statSync(owner.nbdSocket).mode & 0o777, 0o600);
    if (!needTools(t, 'nbdinfo', 'setpriv') || process.getuid?.() !== 0) return;
    assert.equal((await asStranger(open)).status, 0, 'anyone may connect to a 0666 socket');
  });
});
