// The libuv thread pool's threads run at a lower priority than the event loop
// (addon/src/thread-priority.cc says why): when every core is busy, the kernel gives the core to the
// event loop, which answers the clients, before the pool's background writes and commits.
import { native } from './native.js';

/**
 * Nice value of the pool's threads (the event loop's stays 0): under contention a thread at 5 weighs a
 * third of one at 0 (CFS weights 335 and 1024).
 */
export const POOL_NICE = 5;

/**
 * Lowers the pool's threads to `nice` (0: leaves them) in the background: never awaited, as nothing
 * waits on it.
 */
export function lowerPoolPriority(nice: number, logger: { warn(obj: unknown, msg?: string): void; debug(obj: unknown, msg?: string): void }): void {
  if (nice === 0) return;
  native()
    .setPoolNice(poolSize(), nice)
    .then(
      (tids) => logger.debug({ tids, nice }, 'thread pool below the event loop'),
      (e: unknown) => logger.warn({ err: e }, "cannot lower the thread pool's priority below the event loop's; it stays equal"),
    );
}

/**
 * Node's pool size as libuv reads UV_THREADPOOL_SIZE (atoi; 0 makes 1; at most 1024), else 4. A job per
 * thread: asked for more than there are, the jobs would hold the pool for the gate's 5 s.
 */
function poolSize(): number {
  const v = process.env.UV_THREADPOOL_SIZE;
  if (v === undefined) return 4;
  const n = parseInt(v, 10) || 0;
  return Math.min(Math.max(n, 1), 1024);
}
