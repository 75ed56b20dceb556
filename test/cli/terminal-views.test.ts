// The CLI's live views on a real terminal (tmux): the import progress bar (bytes, rate, time
// left) read from the pane, Ctrl-C typed into it, `shoal top` while fio runs (its numbers move,
// `q` quits), and `shoal fsck`'s progress line while the daemon checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, openSync, writeSync, closeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startDaemon, MAIN } from '../helpers/daemon.js';
import { needTools, runOk, PATH_WITH_USR_BIN } from '../helpers/tools.js';
import { Tmux } from '../helpers/tmux.js';
import { MiB } from '../helpers/volume-io.js';

function randomImage(path: string, mib: number): void {
  const fd = openSync(path, 'w');
  for (let i = 0; i < mib; i++) writeSync(fd, randomBytes(MiB));
  closeSync(fd);
}

// "import vm1  [#######-----------]   38%  390 MiB / 1 GiB  250.3 MiB/s  0:03 left"
const BAR = /import (\S+)\s+\[(#*)(-*)\]\s+(\d+)%\s+([\d.]+ [KMG]?i?B) \/ ([\d.]+ [KMG]?i?B)\s+([\d.]+ [KMG]?i?B)\/s\s+(\d+:\d\d) left/;

test('import shows a progress bar with bytes, rate and time left, and Ctrl-C stops it', async (t) => {
  if (!needTools(t, 'tmux')) return;
  const d = await startDaemon();
  const dir = mkdtempSync(join(tmpdir(), 'shoal-tty-'));
  const img = join(dir, 'disk.raw');
  randomImage(img, 1024);
  try {
    const term = new Tmux();
    try {
      await term.start([process.execPath, MAIN, '--api', d.apiUrl, 'import', 'vm1', img]);
      const m = await term.waitFor(BAR);
      assert.equal(m[1], 'vm1');
      const pct = Number(m[4]);
      assert.ok(pct < 100, `caught mid-way (${pct}%)`);
      assert.equal(m[6], '1 GiB');
      assert.equal(m[2]!.length + m[3]!.length >= 10, true, 'a bar of at least 10 cells');
      // A later screen shows more done.
      const later = await term.waitFor(new RegExp(`import vm1\\s+\\[#*-*\\]\\s+(?!${pct}%)\\d+%`));
      assert.ok(later);
      assert.equal(await term.exitStatus(), 0);
      const end = await term.screen();
      assert.match(end, /import vm1\s+\[#+\]\s+100%\s+1 GiB \/ 1 GiB\s+[\d.]+ [KMG]?i?B\/s\s+done in \d+:\d\d/);
      assert.match(end, /imported .*disk\.raw \(raw, 1 GiB\) into volume vm1/);
    } finally {
      await term.dispose();
    }

    const term2 = new Tmux();
    try {
      await term2.start([process.execPath, MAIN, '--api', d.apiUrl, 'import', 'vm2', img]);
      await term2.waitFor(BAR);
      await term2.keys('C-c');
      assert.equal(await term2.exitStatus(), 130);
      const screen = await term2.screen();
      assert.match(screen, /import vm2\s+\[#*-*\]\s+\d+%.*interrupted/);
      assert.match(screen, /shoal: deleted the half-imported volume vm2/);
      assert.equal((await d.api('GET', '/v1/volumes/vm2')).status, 404);
    } finally {
      await term2.dispose();
    }
  } finally {
    await d.dispose();
    rmSync(dir, { recursive: true, force: true });
  }
});

/** The row of `volume` in top's table: [conn, r iops, w iops, r MiB/s, w MiB/s]. */
function row(screen: string, volume: string): number[] | null {
  const m = new RegExp(`^${volume}\\s+(\\d+)\\s+(\\d+)\\s+(\\d+)\\s+([\\d.]+)\\s+([\\d.]+)\\s*$`, 'm').exec(screen);
  return m ? m.slice(1).map(Number) : null;
}

test('shoal top shows the volumes fio is busy on, with moving numbers, and quits on q', async (t) => {
  if (!needTools(t, 'tmux', 'fio')) return;
  const d = await startDaemon();
  const term = new Tmux();
  let fio: ReturnType<typeof spawn> | undefined;
  try {
    await d.createVolume('busy', 256 * MiB);
    await d.createVolume('quiet', 64 * MiB);
    await term.start([process.execPath, MAIN, '--api', d.apiUrl, 'top'], { cols: 120, rows: 30 });
    await term.waitFor(/^VOLUME\s+CONN\s+R IOPS\s+W IOPS\s+R MiB\/s\s+W MiB\/s/m);
    fio = spawn(
      'fio',
      ['--name=top', '--ioengine=nbd', `--uri=${d.unixUri('busy')}`, '--rw=randrw', '--bs=4k', '--iodepth=8', '--time_based', '--runtime=20', '--size=256M'],
      { stdio: 'ignore', env: { ...process.env, PATH: PATH_WITH_USR_BIN } },
    );
    // Busy first, with a connection and I/O both ways; quiet below it, idle.
    const seen: number[][] = [];
    const end = Date.now() + 15_000;
    while (seen.length < 3 && Date.now() < end) {
      const screen = await term.screen();
      const busy = row(screen, 'busy');
      if (busy && busy[0]! >= 1 && busy[1]! > 0 && busy[2]! > 0) {
        assert.ok(screen.indexOf('\nbusy ') < screen.indexOf('\nquiet '), `the busy volume comes first:\n${screen}`);
        assert.deepEqual(row(screen, 'quiet'), [0, 0, 0, 0, 0]);
        assert.match(screen, /^cache\s+hit ratio/m);
        assert.match(screen, /dedup ratio [\d.]+x/);
        assert.match(screen, /^reclaim\s+/m);
        if (!seen.some((s) => s.join() === busy.join())) seen.push(busy);
      }
      await new Promise((r) => setTimeout(r, 400));
    }
    assert.ok(seen.length >= 3, `three different readings of the busy volume's rates: ${JSON.stringify(seen)}`);
    for (const s of seen) assert.ok(s[3]! > 0 && s[4]! > 0, `MiB/s both ways: ${s}`);
    await term.keys('q');
    assert.equal(await term.exitStatus(5000), 0);
  } finally {
    fio?.kill('SIGKILL');
    await term.dispose();
    await d.dispose();
  }
});

test('shoal fsck draws its progress while the daemon checks', async (t) => {
  if (!needTools(t, 'tmux', 'nbdcopy')) return;
  // Each 10 ms slice of the check rests 150 ms: long enough to be seen, as on a big store.
  const d = await startDaemon({ env: { NODE_ENV: 'test', SHOAL_TEST_FSCK_PAUSE_MS: '150' } });
  const term = new Tmux();
  try {
    await d.createVolume('data', 128 * MiB);
    await runOk('nbdcopy', ['--', '[', 'nbdkit', 'random', '128M', ']', d.unixUri('data')]);
    await term.start([process.execPath, MAIN, '--api', d.apiUrl, 'fsck']);
    const m = await term.waitFor(/fsck\s+\[#*-*\]\s+(\d+)%\s+(maps: (\d+) of (\d+) nodes|chunk records: (\d+) of (\d+)|dedup index: \d+ of \d+ entries)/);
    assert.ok(Number(m[1]) < 100);
    assert.equal(await term.exitStatus(), 0);
    const screen = await term.screen();
    assert.match(screen, /fsck: no problems found \(checked 1 volumes, 0 snapshots, \d+ map nodes, 32768 chunks\)/);
    assert.doesNotMatch(screen, /fsck\s+\[/, 'the progress line is gone once the report is printed');
  } finally {
    await term.dispose();
    await d.dispose();
  }
});
