// Typed arrays for the addon's arguments, carved from shared off-heap slabs (as Node's Buffer pool
// carves Buffers). A typed array of up to 64 bytes made with `new` lives on V8's heap, and the first
// time native code asks for its data (napi_get_typedarray_info) V8 moves it off the heap: three
// mallocs then, and a free and a sweep later. A larger one gets a backing store of its own when made
// (a malloc, a registry entry, the sweeper's work). In the 4K random write's profile, the write's
// dedup candidates and new-fingerprint arrays made that ~10% of the event loop's CPU.
//
// A view's bytes are never handed out twice, so each starts zeroed, as with `new`. A slab is freed
// once no view of it is left.

const SLAB_BYTES = 64 * 1024;
/** Arrays larger than this get an ArrayBuffer of their own (still off-heap, one allocation). */
const OWN_BUFFER_BYTES = SLAB_BYTES / 8;

let slab = new ArrayBuffer(SLAB_BYTES);
let used = 0;

/** Where `bytes` bytes aligned to `align` go: a slab (or a buffer of their own) and an offset. */
function carve(bytes: number, align: number): ArrayBuffer {
  if (bytes > OWN_BUFFER_BYTES) {
    at = 0;
    return new ArrayBuffer(bytes);
  }
  let off = (used + align - 1) & -align;
  if (off + bytes > SLAB_BYTES) {
    slab = new ArrayBuffer(SLAB_BYTES);
    off = 0;
  }
  used = off + bytes;
  at = off;
  return slab;
}
/** carve()'s offset (a module variable: no tuple allocated per call). */
let at = 0;

export function float64s(n: number): Float64Array {
  const b = carve(n * 8, 8);
  return new Float64Array(b, at, n);
}

export function uint32s(n: number): Uint32Array {
  const b = carve(n * 4, 4);
  return new Uint32Array(b, at, n);
}

export function int32s(n: number): Int32Array {
  const b = carve(n * 4, 4);
  return new Int32Array(b, at, n);
}

export function uint8s(n: number): Uint8Array {
  const b = carve(n, 1);
  return new Uint8Array(b, at, n);
}
