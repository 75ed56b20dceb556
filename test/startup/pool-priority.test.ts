// The thread pool's threads run below the event loop (server/pool-priority.ts): each of them at nice 5,
// however many UV_THREADPOOL_SIZE makes, the event loop's thread at 0; the test hook
// SHOAL_TEST_POOL_NICE=0 leaves them all at 0. Read from /proc, as the kernel's scheduler sees them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { startDaemon } from '../helpers/daemon.js';

/** Nice value of each of pid's threads, the main thread's first. */
function niceByThread(pid: number): { main: number; others: number[] } {
  const niceOf = (tid: string) => {
    const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1');
    return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[16]);
  };
  const tids = readdirSync(`/proc/${pid}/task`);
  return { main: niceOf(String(pid)), others: tids.filter((t) => t !== String(pid)).map(niceOf) };
}

for (const [what, env, expected] of [
  ['the default pool of 4', {}, 4],
  ['a pool of 7 (UV_THREADPOOL_SIZE)', { UV_THREADPOOL_SIZE: '7' }, 7],
  ['SHOAL_TEST_POOL_NICE=0 (off)', { NODE_ENV: 'test', SHOAL_TEST_POOL_NICE: '0' }, 0],
] as const) {
  test(`the thread pool runs below the event loop: ${what}`, { timeout: 60_000 }, async () => {
    const d = await startDaemon({ env });
    try {
      // Serving: the pool has done work (the store's writes) besides the priority jobs.
      await d.createVolume('p', 1024 * 1024);
      const n = niceByThread(d.proc.pid!);
      assert.equal(n.main, 0, 'the event loop keeps nice 0');
      assert.equal(n.others.filter((x) => x === 5).length, expected, `threads at nice 5: ${JSON.stringify(n.others)}`);
      assert.ok(n.others.every((x) => x === 0 || x === 5), `no other nice value: ${JSON.stringify(n.others)}`);
    } finally {
      await d.dispose();
    }
  });
}
