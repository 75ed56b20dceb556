// Malformed NBD traffic, generated from a seed: case N of seed S is always the same bytes, so a
// failure is replayed with SHOAL_FUZZ_SEED=S SHOAL_FUZZ_CASE=N. A case is one connection: a
// greeting phase (sometimes garbage before or instead of the client flags), optionally STARTTLS
// and a TLS handshake (sometimes garbage in place of the ClientHello), then either malformed
// handshake options or, after a valid NBD_OPT_GO, malformed transmission requests.
import { optionMessage } from '../nbd/raw.js';

const REQUEST_MAGIC = 0x25609513;
const MAX_PAYLOAD = 32 * 1024 * 1024;
/** Real payload bytes a case sends at most (bigger claimed lengths are sent truncated). */
const MAX_SENT = 128 * 1024;

/** mulberry32: small, fast, and the same sequence for the same 32-bit seed everywhere. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  next(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)]!;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

/** The PRNG for case `index` of run `seed` (independent of how many cases ran before or in parallel). */
export function caseRng(seed: number, index: number): Rng {
  return new Rng((Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(index + 1, 0xc2b2ae35)) >>> 0);
}

export interface Target {
  /** Writable export the fuzzer may change at will. */
  writable: string;
  /** Read-only export (a snapshot). */
  readOnly: string;
  size: number;
}

export interface FuzzCase {
  index: number;
  tls: boolean;
  /** Garbage sent before anything else (the server has not even greeted yet). */
  preGreeting: Buffer | null;
  /** Client flags, normally 3 (fixed newstyle, no zeroes). */
  clientFlags: Buffer;
  /** With tls: bytes written instead of a TLS handshake after the STARTTLS ACK. */
  tlsGarbage: Buffer | null;
  /** Transmission cases: the export and what to negotiate before GO. */
  go: { exportName: string; structured: boolean; meta: boolean } | null;
  /** The malformed messages, written in order (each may be split into several writes). */
  messages: Buffer[];
  /** Read replies between messages (else write everything at once). */
  interleave: boolean;
}

const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
};
const u16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(v & 0xffff);
  return b;
};
const str = (s: string) => Buffer.concat([u32(Buffer.byteLength(s)), Buffer.from(s)]);

const INTERESTING_U32 = [0, 1, 2, 3, 4, 6, 7, 8, 16, 255, 256, 4095, 4096, 4097, 65535, 65536, 65537, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, MAX_PAYLOAD, MAX_PAYLOAD + 1];
const NAMES = (t: Target) => [t.writable, t.readOnly, '', 'nope', 'a'.repeat(4097), '\u00e9t\u00e9', 'x\u0000y'];

function name(r: Rng, t: Target): Buffer {
  if (r.chance(0.1)) return r.bytes(r.int(40)); // maybe not UTF-8
  return Buffer.from(r.pick(NAMES(t)));
}

/** A valid option of a random kind (sometimes of an unknown number). */
function validOption(r: Rng, t: Target): Buffer {
  const opt = r.chance(0.9) ? 1 + r.int(11) : r.pick([0, 12, 99, 0x7fffffff, 0xffffffff, r.int(2 ** 32)]);
  switch (opt) {
    case 1: // EXPORT_NAME
      return optionMessage(opt, name(r, t));
    case 6: // INFO
    case 7: {
      // GO
      const n = name(r, t);
      const infos = Array.from({ length: r.int(5) }, () => u16(r.chance(0.8) ? r.int(4) : r.int(65536)));
      return optionMessage(opt, Buffer.concat([u32(n.length), n, u16(infos.length), ...infos]));
    }
    case 9: // LIST_META_CONTEXT
    case 10: {
      // SET_META_CONTEXT
      const queries = Array.from({ length: r.int(4) }, () => str(r.pick(['base:allocation', 'base:', 'qemu:dirty-bitmap:x', '', 'nope:nope'])));
      const n = name(r, t);
      return optionMessage(opt, Buffer.concat([u32(n.length), n, u32(queries.length), ...queries]));
    }
    default: // ABORT, LIST, STARTTLS, STRUCTURED_REPLY, EXTENDED_HEADERS and unknown ones take no data
      return optionMessage(opt, r.chance(0.85) ? Buffer.alloc(0) : r.bytes(r.int(16)));
  }
}

/** Breaks a message: bit flips, bytes set, length fields set to edge values, truncation, junk appended. */
function mutate(r: Rng, m: Buffer, lengthAt: number[]): Buffer {
  const b = Buffer.from(m);
  const ops = 1 + r.int(3);
  let out = b;
  for (let i = 0; i < ops; i++) {
    switch (r.int(7)) {
      case 0: // flip a bit
        if (out.length) out[r.int(out.length)] ^= 1 << r.int(8);
        break;
      case 1: // set a byte
        if (out.length) out[r.int(out.length)] = r.int(256);
        break;
      case 2: {
        // a length field to an edge value
        const at = r.pick(lengthAt);
        if (at + 4 <= out.length) out.writeUInt32BE(r.pick(INTERESTING_U32), at);
        break;
      }
      case 3: // truncate
        out = out.subarray(0, r.int(out.length + 1));
        break;
      case 4: // append junk
        out = Buffer.concat([out, r.bytes(1 + r.int(64))]);
        break;
      case 5: // bad magic
        if (out.length >= 4) out.writeUInt32BE(r.int(2 ** 32), 0);
        break;
      default: // duplicate a slice (a message repeated, or half of one)
        out = Buffer.concat([out, out.subarray(r.int(out.length + 1))]);
    }
  }
  return out;
}

function request(type: number, flags: number, handle: number, offset: bigint, length: number, payload?: Buffer): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(REQUEST_MAGIC, 0);
  h.writeUInt16BE(flags & 0xffff, 4);
  h.writeUInt16BE(type & 0xffff, 6);
  h.writeUInt32BE(handle >>> 0, 8);
  h.writeUInt32BE(r32(handle), 12);
  h.writeBigUInt64BE(BigInt.asUintN(64, offset), 16);
  h.writeUInt32BE(length >>> 0, 24);
  return payload ? Buffer.concat([h, payload]) : h;
}
const r32 = (n: number) => (n * 2654435761) >>> 0;

function offsetOf(r: Rng, size: number): bigint {
  // Half inside the export (where requests run), half on and beyond its edges.
  if (r.chance(0.5)) return BigInt(r.chance(0.5) ? r.int(size / 4096) * 4096 : r.int(size));
  return r.pick([
    () => 0n,
    () => BigInt(r.int(size)),
    () => BigInt(size - 1),
    () => BigInt(size),
    () => BigInt(size + 1),
    () => 2n ** 53n - 1n,
    () => 2n ** 53n + 1n,
    () => 2n ** 63n,
    () => 2n ** 64n - 1n,
    () => BigInt(r.int(2 ** 32)) * 4096n,
  ])();
}

/** A plausible request, then (usually) broken. */
function transmissionMessage(r: Rng, t: Target, handle: number): Buffer {
  const type = r.chance(0.9) ? r.int(8) : r.pick([8, 9, 11, 0xffff, r.int(65536)]);
  const flags = r.chance(0.7) ? r.pick([0, 1, 2, 4, 8, 16, 1 | 2, 1 | 4]) : r.int(65536);
  const offset = offsetOf(r, t.size);
  const length = r.chance(0.6) ? r.pick([1, 512, 4096, 65536, 1 + r.int(262144)]) : r.pick(INTERESTING_U32);
  let payload: Buffer | undefined;
  if (type === 1) {
    // WRITE: the payload as claimed (cut at MAX_SENT), or sometimes shorter, so that the next
    // header arrives as payload bytes.
    const n = Math.min(length, MAX_SENT);
    payload = Buffer.alloc(r.chance(0.9) ? n : r.int(n + 1), r.int(256));
    if (payload.length >= 8) payload.writeDoubleBE(r.next(), 0);
  }
  const m = request(type, flags, handle, offset, length, payload);
  // Mostly valid framing with hostile fields, so a case gets many requests answered (often with an
  // error) before one breaks the framing and the server drops it.
  if (r.chance(0.85)) return m;
  return mutate(r, m, [24, 4]);
}

export function makeCase(seed: number, index: number, t: Target): FuzzCase {
  const r = caseRng(seed, index);
  const tls = r.chance(0.5);
  const preGreeting = r.chance(0.03) ? r.bytes(1 + r.int(64)) : null;
  const clientFlags = r.chance(0.92) ? u32(3) : r.chance(0.5) ? u32(r.pick([0, 1, 2, 4, 0xffffffff])) : r.bytes(r.int(4));
  const tlsGarbage = tls && r.chance(0.08) ? (r.chance(0.5) ? r.bytes(1 + r.int(600)) : Buffer.concat([Buffer.from([0x16, 0x03, 0x01]), u16(r.int(65536)), r.bytes(r.int(200))])) : null;
  const transmission = r.chance(0.5);
  const messages: Buffer[] = [];
  const count = 4 + r.int(20);
  if (!transmission) {
    for (let i = 0; i < count; i++) {
      const roll = r.next();
      if (roll < 0.6) messages.push(validOption(r, t));
      else if (roll < 0.9) messages.push(mutate(r, validOption(r, t), [12, 16, 20]));
      else if (roll < 0.95) messages.push(optionMessage(r.int(12), Buffer.alloc(0), r.pick(INTERESTING_U32))); // a huge claimed length
      else messages.push(r.bytes(1 + r.int(256)));
    }
  } else {
    for (let i = 0; i < count; i++) messages.push(r.chance(0.97) ? transmissionMessage(r, t, index * 64 + i) : r.bytes(1 + r.int(256)));
  }
  const exportName = r.chance(0.8) ? t.writable : t.readOnly;
  return {
    index,
    tls,
    preGreeting,
    clientFlags,
    tlsGarbage,
    go: transmission ? { exportName, structured: r.chance(0.6), meta: r.chance(0.5) } : null,
    messages,
    interleave: r.chance(0.3),
  };
}
