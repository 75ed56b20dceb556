// Diagnostic for the daemon, not part of it: logs event-loop gaps over 15 ms, with how long the main
// thread ran and how long it waited for a CPU during each (Linux schedstat: telling the daemon's own work
// from preemption on a busy machine), and GC pauses over 5 ms, as epoch-ms lines, to $STALL_LOG.
// DIAG_V8_FLAGS passes V8 flags (v8.setFlagsFromString: NODE_OPTIONS refuses most of them), and
// DIAG_PROF=1 writes a CPU profile of the whole run to /tmp/shoal-diag.cpuprofile at exit.
// Used to find what stalled reads while a big volume was deleted:
//   STALL_LOG=/tmp/stall.log BENCH_DAEMON_NODE_OPTIONS="--import $PWD/bench/stall-trace.mjs" npm run bench:delete
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import inspector from 'node:inspector';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import v8 from 'node:v8';

if (process.env.DIAG_V8_FLAGS) for (const f of process.env.DIAG_V8_FLAGS.split(' ')) v8.setFlagsFromString(f);
const file = process.env.STALL_LOG || '/tmp/shoal-stall.log';
const schedstat = `/proc/self/task/${process.pid}/schedstat`;
const sched = () => readFileSync(schedstat, 'latin1').split(' ').map(Number); // run ns, wait ns, slices
const lines = [`${Date.now()} clockmap ${process.hrtime.bigint() / 1000n}`]; // epoch ms vs. monotonic µs (CPU profile times)
const flush = () => {
  if (lines.length) appendFileSync(file, lines.join('\n') + '\n');
  lines.length = 0;
};

let last = performance.now();
let lastS = sched();
setInterval(() => {
  const now = performance.now();
  const s = sched();
  const gap = now - last;
  if (gap > 15) lines.push(`${Date.now()} loop-gap ${gap.toFixed(1)} run ${((s[0] - lastS[0]) / 1e6).toFixed(1)} wait ${((s[1] - lastS[1]) / 1e6).toFixed(1)} slices ${s[2] - lastS[2]}`);
  last = now;
  lastS = s;
}, 2).unref();
setInterval(flush, 1000).unref();

const kinds = { 1: 'minor', 2: 'major', 4: 'incremental', 8: 'weakcb', 16: 'all' };
new PerformanceObserver((l) => {
  for (const e of l.getEntries()) if (e.duration > 5) lines.push(`${Date.now()} gc ${kinds[e.detail?.kind] ?? e.detail?.kind} ${e.duration.toFixed(1)}`);
}).observe({ entryTypes: ['gc'] });

if (process.env.DIAG_PROF) {
  const s = new inspector.Session();
  s.connect();
  s.post('Profiler.enable');
  s.post('Profiler.setSamplingInterval', { interval: 500 });
  s.post('Profiler.start');
  // The in-process session answers synchronously, so this works in an exit handler.
  process.on('exit', () => s.post('Profiler.stop', (_e, r) => writeFileSync('/tmp/shoal-diag.cpuprofile', JSON.stringify(r.profile))));
}
process.on('exit', flush);
