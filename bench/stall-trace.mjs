// Diagnostic for the daemon, not part of it: logs event-loop gaps over 15 ms, with how long the main
// thread ran and how long it waited for a CPU during each (Linux schedstat: telling the daemon's own work
// from preemption on a busy machine), how long the daemon's other threads ran meanwhile and how busy the
// machine was (a sum of thread times past it: the VM paused), and GC pauses over 5 ms, as epoch-ms lines,
// to $STALL_LOG.
// A worker thread watches the main thread's state every millisecond: asleep in the kernel uninterruptibly
// (state D: a lock, a page fault's read, the disk) for 10 ms or more, it logs the syscall (number, then
// its arguments: the first is the descriptor) and the kernel stack, as it began and 10 ms on.
// DIAG_V8_FLAGS passes V8 flags (v8.setFlagsFromString: NODE_OPTIONS refuses most of them), and
// DIAG_PROF=1 writes a CPU profile of the whole run to /tmp/shoal-diag.cpuprofile at exit, sampled every
// DIAG_PROF_US µs (500; at 2000 the profiler's own thread takes less from a busy machine).
// Used to find what stalled reads while a big volume was deleted:
//   STALL_LOG=/tmp/stall.log BENCH_DAEMON_NODE_OPTIONS="--import $PWD/bench/stall-trace.mjs" npm run bench:delete
import { appendFileSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import inspector from 'node:inspector';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import v8 from 'node:v8';
import { Worker } from 'node:worker_threads';

if (process.env.DIAG_V8_FLAGS) for (const f of process.env.DIAG_V8_FLAGS.split(' ')) v8.setFlagsFromString(f);
const file = process.env.STALL_LOG || '/tmp/shoal-stall.log';
const schedstat = `/proc/self/task/${process.pid}/schedstat`;
const sched = () => readFileSync(schedstat, 'latin1').split(' ').map(Number); // run ns, wait ns, slices
const lines = [`${Date.now()} clockmap ${process.hrtime.bigint() / 1000n}`]; // epoch ms vs. monotonic µs (CPU profile times)
const flush = () => {
  if (lines.length) appendFileSync(file, lines.join('\n') + '\n');
  lines.length = 0;
};

// Who else ran during a gap: the daemon's other threads by name (run time from their schedstat, read
// every 5th tick, so a gap is measured from up to 10 ms before it) and the whole machine's busy time
// (/proc/stat), whose rest is other processes (the load generator).
// Keyed by name and nice value: every thread of the daemon is called "node", and the nice value tells
// libuv's pool (5, server/pool-priority.ts) from V8's helpers (0). Read at each gap, as the pool's
// threads lower theirs after start.
const comms = new Map();
const commOf = (tid) => {
  let c = comms.get(tid);
  if (c === undefined) {
    try {
      c = readFileSync(`/proc/self/task/${tid}/comm`, 'latin1').trim();
    } catch {
      c = '?';
    }
    comms.set(tid, c);
  }
  let nice = '?';
  try {
    // Field 19 of stat; the name in field 2 may hold spaces, so count from its closing parenthesis.
    const st = readFileSync(`/proc/self/task/${tid}/stat`, 'latin1');
    nice = st.slice(st.lastIndexOf(')') + 2).split(' ')[16];
  } catch {
    // the thread ended
  }
  return `${c}@${nice}`;
};
const threads = () => {
  const m = new Map();
  for (const tid of readdirSync('/proc/self/task')) {
    if (tid === String(process.pid)) continue;
    try {
      m.set(tid, Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'latin1').split(' ')[0]));
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return m;
};
// Busy and stolen ms of the whole machine: steal apart, because time the host takes from a vCPU counts as
// running for the thread it was running (a paused VM reads as the event loop busy).
const cpuMs = () => {
  const f = readFileSync('/proc/stat', 'latin1').split('\n', 1)[0].trim().split(/\s+/).slice(1).map(Number);
  return [((f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) * 1000) / 100, (f[7] * 1000) / 100]; // user nice system irq softirq steal; steal (USER_HZ 100)
};
let lastT = threads();
let lastBusy = cpuMs();
let ticks = 0;

let last = performance.now();
let lastS = sched();
setInterval(() => {
  const now = performance.now();
  const s = sched();
  const gap = now - last;
  if (gap > 15) {
    const t = threads();
    const by = new Map();
    for (const [tid, ns] of t) {
      const d = (ns - (lastT.get(tid) ?? 0)) / 1e6;
      if (d > 0.5) {
        const k = commOf(tid);
        by.set(k, (by.get(k) ?? 0) + d);
      }
    }
    const others = [...by].sort((a, b) => b[1] - a[1]).map(([c, d]) => `${c.replace(/\s+/g, '_')}:${d.toFixed(1)}`).join(',');
    const c = cpuMs();
    // Unaccounted: the daemon's threads ran longer than the whole machine was busy (tick-counted, so
    // ±20 ms): their vCPUs were taken from the guest without steal being reported (a paused VM), and the
    // time ran on for whatever thread was on them.
    const run = (s[0] - lastS[0]) / 1e6;
    const ran = run + [...by.values()].reduce((a, d) => a + d, 0);
    const busy = c[0] - lastBusy[0];
    lines.push(`${Date.now()} loop-gap ${gap.toFixed(1)} run ${run.toFixed(1)} wait ${((s[1] - lastS[1]) / 1e6).toFixed(1)} slices ${s[2] - lastS[2]} threads ${others || '-'} machine-busy ${busy.toFixed(0)} steal ${(c[1] - lastBusy[1]).toFixed(0)} unaccounted ${Math.max(0, ran - busy).toFixed(0)}`);
    lastT = t;
    lastBusy = cpuMs();
    ticks = 0;
  } else if (++ticks % 5 === 0) {
    lastT = threads();
    lastBusy = cpuMs();
  }
  last = now;
  lastS = s;
}, 2).unref();
setInterval(flush, 1000).unref();

const kinds = { 1: 'minor', 2: 'major', 4: 'incremental', 8: 'weakcb', 16: 'all' };
new PerformanceObserver((l) => {
  for (const e of l.getEntries()) if (e.duration > 5) lines.push(`${Date.now()} gc ${kinds[e.detail?.kind] ?? e.detail?.kind} ${e.duration.toFixed(1)}`);
}).observe({ entryTypes: ['gc'] });

new Worker(
  `
  const { readFileSync, appendFileSync } = require('node:fs');
  const { workerData } = require('node:worker_threads');
  const base = '/proc/' + workerData.pid + '/task/' + workerData.pid + '/';
  const read = (f) => { try { return readFileSync(base + f, 'latin1').trim(); } catch { return '?'; } };
  const sample = () => 'syscall ' + read('syscall').split(' ').slice(0, 4).join(' ') + ' stack ' + read('stack').split('\\n').map((l) => l.replace(/^\\[<0>\\] /, '').replace(/\\+0x.*/, '')).join('<');
  const tick = new Int32Array(new SharedArrayBuffer(4));
  let since = 0, first = '', logged = false;
  for (;;) {
    Atomics.wait(tick, 0, 0, 1);
    const st = read('stat');
    const state = st[st.lastIndexOf(')') + 2];
    const now = performance.now();
    if (state === 'D') {
      if (!since) { since = now; first = sample(); logged = false; }
      else if (!logged && now - since >= 10) { logged = true; appendFileSync(workerData.file, Date.now() + ' blocked ' + first + ' | 10ms-on ' + sample() + '\\n'); }
    } else if (since) {
      if (logged) appendFileSync(workerData.file, Date.now() + ' blocked-end ' + (now - since).toFixed(1) + '\\n');
      since = 0;
    }
  }
  `,
  { eval: true, workerData: { pid: process.pid, file } },
).unref();

if (process.env.DIAG_PROF) {
  const s = new inspector.Session();
  s.connect();
  s.post('Profiler.enable');
  s.post('Profiler.setSamplingInterval', { interval: Number(process.env.DIAG_PROF_US || 500) });
  s.post('Profiler.start');
  // The in-process session answers synchronously, so this works in an exit handler.
  process.on('exit', () => s.post('Profiler.stop', (_e, r) => writeFileSync('/tmp/shoal-diag.cpuprofile', JSON.stringify(r.profile))));
}
process.on('exit', flush);
