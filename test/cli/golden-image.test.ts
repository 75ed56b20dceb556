// The README's golden-image workflow through the real `shoal` CLI and a real daemon: write an image
// once, snapshot it, clone one volume per VM, attach each; reflink and fsck from the CLI; bad
// arguments get a sentence and a non-zero exit, and change nothing.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startDaemon, MAIN } from '../helpers/daemon.js';
import { needTools, run } from '../helpers/tools.js';
import { withHandle, MiB } from '../helpers/volume-io.js';

test('golden image → snapshot → clones per VM, all through the CLI', async (t) => {
  if (!needTools(t, 'nbdsh', 'nbdinfo')) return;
  const d = await startDaemon();
  const shoal = (...args: string[]) => run(process.execPath, [MAIN, '--api', d.apiUrl, ...args]);
  try {
    let r = await shoal('volume', 'create', 'golden', '64M');
    assert.equal(r.status, 0, r.stderr);
    await withHandle(d, 'golden', `import random\nh.pwrite(random.Random(3).randbytes(16 * 1024 * 1024), 0)\nh.flush()`);
    r = await shoal('snapshot', 'create', 'golden', 'v1');
    assert.equal(r.status, 0, r.stderr);
    for (let i = 1; i <= 8; i++) {
      r = await shoal('clone', `vm${i}`, 'golden@v1');
      assert.equal(r.status, 0, r.stderr);
    }
    // Every clone is an export and holds the image; nothing was copied.
    const list = await run('nbdinfo', ['--list', '--json', d.uri('')]);
    const names = JSON.parse(list.stdout).exports.map((e: any) => e['export-name']);
    for (let i = 1; i <= 8; i++) assert.ok(names.includes(`vm${i}`), `vm${i} is listed`);
    assert.ok(names.includes('golden@v1'));
    r = await shoal('--json', 'stats');
    assert.equal(r.status, 0, r.stderr);
    const st = JSON.parse(r.stdout);
    assert.equal(st.physicalBytes, 16 * MiB);
    assert.equal(st.logicalBytes, 10 * 16 * MiB); // golden + its snapshot + 8 clones
    const same = await withHandle(d, 'vm5', `import random\nprint(h.pread(16 * 1024 * 1024, 0) == random.Random(3).randbytes(16 * 1024 * 1024))`);
    assert.match(same, /True/);
    // A VM writes: only that clone changes.
    await withHandle(d, 'vm5', `h.pwrite(b'\\x42' * 4096, 0)\nh.flush()`);
    const other = await withHandle(d, 'vm6', `print(h.pread(4096, 0) != b'\\x42' * 4096)`);
    assert.match(other, /True/);
    // reflink and fsck from the CLI.
    r = await shoal('reflink', 'vm1', 'golden@v1', '--source-offset', '0', '--offset', String(32 * MiB), '--length', String(4 * MiB));
    assert.equal(r.status, 0, r.stderr + r.stdout);
    r = await shoal('fsck');
    assert.equal(r.status, 0, r.stderr + r.stdout);
    // Errors: a sentence on stderr, a non-zero exit, and nothing changed.
    r = await shoal('clone', 'vm9', 'golden@missing');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /^shoal: .*missing/m);
    r = await shoal('snapshot', 'create', 'golden', 'v1');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /already has a snapshot/);
    r = await shoal('volume', 'create', 'bad name', '1M');
    assert.notEqual(r.status, 0);
    r = await shoal('volume', 'create', 'x', 'ten');
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /^shoal: /m);
    r = await shoal('--json', 'volume', 'list');
    assert.equal(JSON.parse(r.stdout).volumes.length, 9);
    // Offline fsck of the data directory once the daemon is stopped.
    await d.stop();
    r = await run(process.execPath, [MAIN, 'fsck', d.dataDir]);
    assert.equal(r.status, 0, r.stderr + r.stdout);
    // The CLI says so when the daemon is not there.
    r = await shoal('volume', 'list');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /cannot reach the Shoal API/);
  } finally {
    await d.dispose();
  }
});
