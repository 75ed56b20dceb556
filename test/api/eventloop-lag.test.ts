// shoal_nodejs_eventloop_lag_max_seconds reads a stall as itself plus at most the lag monitor's tick:
// the timer behind it records the interval between its ticks, so at prom-client's default tick of
// 10 ms a 40 ms stall read as anything from 42 to 52 ms (bench:soak's stall goal is 50 ms).
//
// What a busy machine adds after the stall (the loop's return to its timers held up by other
// processes) reaches every timer alike, so the gauge is checked against a 1 ms monitor of the same
// loop, not against the clock: CI's machine read a 40 ms stall as 41-45 ms on both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Metrics } from '../../api/metrics.js';

function lagMaxMs(text: string): number {
  const m = /^shoal_nodejs_eventloop_lag_max_seconds ([\d.e+-]+)$/m.exec(text);
  assert.ok(m, 'the lag gauge is exported');
  return Number(m[1]) * 1000;
}

test('a 40 ms event-loop stall reads on the lag gauge within 2 ms of a 1 ms monitor', async () => {
  const metrics = new Metrics();
  const fine = monitorEventLoopDelay({ resolution: 1 });
  fine.enable();
  await sleep(50);
  const tries: string[] = [];
  let over = 0;
  for (let i = 0; i < 10; i++) {
    await metrics.metrics(); // each scrape starts the gauge over
    fine.reset();
    await sleep(13 + ((i * 7) % 10)); // the stall starts at a different point of the tick each time
    const t = performance.now();
    while (performance.now() - t < 40); // the stall
    await sleep(20);
    const gauge = lagMaxMs(await metrics.metrics());
    const truth = fine.max / 1e6;
    tries.push(`${gauge.toFixed(1)}/${truth.toFixed(1)}`);
    assert.ok(gauge >= 39.5, `a 40 ms stall read as ${gauge.toFixed(1)} ms`);
    // The gauge's last tick before the stall is at most 2 ms before it; the 1 ms monitor's at most 1.
    if (gauge > truth + 2.3) over++;
  }
  fine.disable();
  // At a 10 ms tick the gauge would exceed the 1 ms monitor by more than 2.3 ms in ~70% of tries.
  assert.ok(over <= 1, `the gauge read more than 2.3 ms over a 1 ms monitor in ${over} of 10 tries (gauge/1 ms: ${tries.join(', ')})`);
});
