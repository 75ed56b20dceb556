// A map node's stored form: every entry's id (up to 48 bits) and index must come back exactly, for
// sparse and full nodes, and a damaged record must be refused (a wrong id here is a wrong chunk read).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeNode, encodeNode, FANOUT } from '../../server/meta/map-node.js';

test('node entries round-trip exactly across the 48-bit id range', () => {
  const ids = [2, 255, 256, 65535, 2 ** 24 + 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 40 + 12345, 2 ** 47, 2 ** 48 - 1];
  for (const full of [false, true]) {
    const entries = new Float64Array(FANOUT);
    for (let i = 0; i < FANOUT; i++) {
      if (!full && i % 7 !== 3) continue;
      entries[i] = i < ids.length ? ids[i] : Math.max(2, ids[i % ids.length] - (i % 3));
    }
    const buf = encodeNode({ id: 9, level: 0, entries });
    const back = decodeNode(9, buf);
    assert.equal(back.level, 0);
    assert.deepEqual(Array.from(back.entries), Array.from(entries), full ? 'full node' : 'sparse node');
  }
  // The level and a node with one entry at the last index.
  const one = new Float64Array(FANOUT);
  one[FANOUT - 1] = 2 ** 48 - 2;
  const back = decodeNode(3, encodeNode({ id: 3, level: 2, entries: one }));
  assert.equal(back.level, 2);
  assert.equal(back.entries[FANOUT - 1], 2 ** 48 - 2);
  // A truncated record is refused, not misread.
  const buf = encodeNode({ id: 4, level: 0, entries: one });
  assert.throws(() => decodeNode(4, buf.subarray(0, buf.length - 1)), /bad length|truncated/);
});
