// 4 KiB FUA writes at queue depth 1, timed one by one, with libnbd's Python binding: fio's nbd engine
// never sets NBD_CMD_FLAG_FUA, and a database in a VM on a write-through disk issues exactly these.
import { run, PY } from './lib.js';

const FUA_PY = `
import json, os, random, sys, time
import nbd
uri, seconds, ramp, size = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
h = nbd.NBD()
h.connect_uri(uri)
if not h.can_fua():
    print(json.dumps({"error": "the server does not advertise FUA"}))
    sys.exit(0)
blocks = size // 4096
lat = []
total = 0
start = time.monotonic()
count_from = start + ramp
end = count_from + seconds
while True:
    now = time.monotonic()
    if now >= end:
        break
    buf = os.urandom(4096)  # fresh bytes per write, as fio's refill_buffers: no dedup advantage
    off = random.randrange(blocks) * 4096
    t0 = time.perf_counter_ns()
    h.pwrite(buf, off, nbd.CMD_FLAG_FUA)
    dt = time.perf_counter_ns() - t0
    total += 1
    if now >= count_from:
        lat.append(dt)
h.shutdown()
lat.sort()
pick = lambda p: lat[min(len(lat) - 1, max(0, -(-len(lat) * p // 100) - 1))] / 1000
print(json.dumps({"count": len(lat), "total": total, "p50Us": pick(50), "p99Us": pick(99), "meanUs": sum(lat) / len(lat) / 1000, "iops": len(lat) / seconds}))
`;

export interface FuaResult {
  /** Requests timed (after the ramp), and all requests sent (for CPU per request). */
  count: number;
  total: number;
  p50Us: number;
  p99Us: number;
  meanUs: number;
  iops: number;
}

/** Random 4 KiB FUA writes over `uri` for rampSec + seconds; latencies of those after the ramp. */
export async function fuaWrites(uri: string, size: number, seconds: number, rampSec: number): Promise<FuaResult> {
  const r = await run(PY, ['-c', FUA_PY, uri, String(seconds), String(rampSec), String(size)], { timeoutMs: (seconds + rampSec + 60) * 1000 });
  const line = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !line.startsWith('{')) throw new Error(`FUA client on ${uri} exited ${r.status}:\n${r.stderr}\n${r.stdout}`);
  const res = JSON.parse(line) as FuaResult & { error?: string };
  if (res.error) throw new Error(`FUA client on ${uri}: ${res.error}`);
  return res;
}
