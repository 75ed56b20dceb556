// The slab-carved typed arrays the write and read paths hand to the addon: each must behave as a
// fresh `new` array (zeroed, its own bytes, aligned for its element type), whatever sizes come and
// however many slabs are used up.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { float64s, int32s, uint32s, uint8s } from '../../server/native-arrays.js';

test('carved arrays are zeroed, aligned and never share bytes, across slabs and large sizes', () => {
  const made: Array<Float64Array | Uint32Array | Int32Array | Uint8Array> = [];
  const sizes = [1, 3, 8, 9, 64, 1000, 2048, 2049, 5000];
  for (let round = 0; round < 40; round++) {
    for (const n of sizes) {
      for (const a of [float64s(n), uint32s(n), int32s(n), uint8s(n)]) {
        assert.equal(a.length, n);
        assert.ok(a.every((v) => v === 0), 'starts zeroed');
        assert.equal(a.byteOffset % a.BYTES_PER_ELEMENT, 0, 'aligned');
        a.fill(round % 2 === 0 ? 7 : 9); // mine now: a later array must not see this
        made.push(a);
      }
    }
  }
  // Every array still holds exactly what was written into it: no two overlap.
  for (let i = 0; i < made.length; i++) {
    const round = Math.floor(i / (sizes.length * 4));
    const want = round % 2 === 0 ? 7 : 9;
    assert.ok(made[i].every((v) => v === want), `array ${i} was overwritten by a later one`);
  }
});
