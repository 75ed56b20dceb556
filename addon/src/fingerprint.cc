// Chunk fingerprints: BLAKE3-256 of each chunk in a batch.
// Why native: Node's crypto SHA-256 reaches ~200-350 MB/s per core on this machine (no SHA-NI);
// BLAKE3 with AVX-512/AVX2 reaches several GB/s per core, and the async form runs a whole
// batch on libuv's thread pool so the event loop never waits for hashing.
#include "fingerprint.h"
#include "args.h"
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#include <sched.h>
extern "C" {
#include "blake3.h"
#include "blake3_impl.h"
}

namespace shoal {
namespace {

constexpr size_t kDigest = 32;

void PutDomain(uint8_t* o, int64_t domain) {
  uint32_t d = static_cast<uint32_t>(domain);
  o[0] = d >> 24, o[1] = d >> 16, o[2] = d >> 8, o[3] = d;
}

// One hasher per chunk: the reference, and the path for sizes HashChunksWide does not take.
void HashChunksSerial(const uint8_t* data, size_t length, size_t chunk, uint8_t* out, int64_t domain) {
  size_t n = (length + chunk - 1) / chunk;
  size_t stride = domain >= 0 ? kDigest + 4 : kDigest;
  for (size_t i = 0; i < n; i++) {
    size_t off = i * chunk;
    size_t len = length - off < chunk ? length - off : chunk;
    uint8_t* o = out + i * stride;
    if (domain >= 0) {
      PutDomain(o, domain);
      o += 4;
    }
    blake3_hasher h;
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, data + off, len);
    blake3_hasher_finalize(&h, o, kDigest);
  }
}

// Many chunks at once, across SIMD lanes. A 4 KiB chunk is only four BLAKE3 chunks (1 KiB
// leaves), so hashing chunks one by one left most of AVX-512's 16 lanes idle (2.2 GB/s per core
// at 4 KiB against 4.1 GB/s at 64 KiB in the dedup benchmark). Here leaf j of up to kGroup chunks
// goes through one blake3_hash_many call (each chunk is its own message: counter j, no
// increment), then each tree level's parents likewise, the last with the ROOT flag: its chaining
// value is the 32-byte digest. Needs whole chunks of a power of two >= 1 KiB. Measured at 4 KiB:
// 3.8 GB/s per core, against 2.3 GB/s one chunk at a time.
constexpr size_t kGroup = 64;
// Below four chunks the lanes stay mostly idle and the per-call setup dominates: one 4 KiB chunk took
// 4.9 us here against 2.0 us through the plain hasher (which spreads its own four leaves over SSE4.1).
constexpr size_t kWideMin = 4;

// From 64 KiB up a chunk fills the lanes by itself (measured: no gain at 64 KiB).
bool WideApplies(size_t length, size_t chunk) {
  return chunk >= BLAKE3_CHUNK_LEN && chunk <= 32 * 1024 && (chunk & (chunk - 1)) == 0 && length % chunk == 0 && length / chunk >= kWideMin;
}

void HashChunksWide(const uint8_t* data, size_t length, size_t chunk, uint8_t* out, int64_t domain) {
  const size_t leaves = chunk / BLAKE3_CHUNK_LEN;
  const size_t stride = domain >= 0 ? kDigest + 4 : kDigest;
  std::vector<const uint8_t*> in;
  std::vector<uint8_t> a, b, tmp;
  for (size_t first = 0; first < length / chunk; first += kGroup) {
    const size_t m = std::min(kGroup, length / chunk - first);
    const uint8_t* base = data + first * chunk;
    // Leaves: cvs of message i at a[(i * leaves + j) * 32].
    a.resize(m * leaves * kDigest);
    tmp.resize(m * kDigest);
    in.resize(m);
    for (size_t j = 0; j < leaves; j++) {
      for (size_t i = 0; i < m; i++) in[i] = base + i * chunk + j * BLAKE3_CHUNK_LEN;
      uint8_t end = leaves == 1 ? (CHUNK_END | ROOT) : CHUNK_END;
      blake3_hash_many(in.data(), m, BLAKE3_CHUNK_LEN / BLAKE3_BLOCK_LEN, IV, j, false, 0, CHUNK_START, end, tmp.data());
      for (size_t i = 0; i < m; i++) std::memcpy(&a[(i * leaves + j) * kDigest], &tmp[i * kDigest], kDigest);
    }
    // Parents, level by level: each message's cvs are contiguous, so pairs are 64-byte blocks.
    for (size_t width = leaves; width > 1; width /= 2) {
      const size_t parents = width / 2;
      in.resize(m * parents);
      for (size_t i = 0; i < m; i++)
        for (size_t p = 0; p < parents; p++) in[i * parents + p] = &a[(i * width + 2 * p) * kDigest];
      b.resize(m * parents * kDigest);
      uint8_t flags = PARENT | (parents == 1 ? ROOT : 0);
      blake3_hash_many(in.data(), m * parents, 1, IV, 0, false, flags, 0, 0, b.data());
      a.swap(b);
    }
    for (size_t i = 0; i < m; i++) {
      uint8_t* o = out + (first + i) * stride;
      if (domain >= 0) {
        PutDomain(o, domain);
        o += 4;
      }
      std::memcpy(o, &a[i * kDigest], kDigest);
    }
  }
}

void HashChunks(const uint8_t* data, size_t length, size_t chunk, uint8_t* out, int64_t domain) {
  if (WideApplies(length, chunk)) HashChunksWide(data, length, chunk, out, domain);
  else HashChunksSerial(data, length, chunk, out, domain);
}

// The arguments every fingerprint call shares: data (a Uint8Array), chunkSize (1 .. 2^30), and
// optionally a dedup domain id (0 .. 2^32-1; absent or undefined: bare 32-byte digests, -1 here).
bool HashArgs(const Napi::CallbackInfo& info, size_t* chunk, int64_t* domain) {
  int64_t c;
  if (info.Length() < 2 || !IsTyped(info[0], napi_uint8_array) || !ToInt(info[1], 1, 1073741824.0, &c)) return false;
  *chunk = static_cast<size_t>(c);
  *domain = -1;
  if (info.Length() > 2 && !info[2].IsUndefined()) return ToInt(info[2], 0, 4294967295.0, domain);
  return true;
}

// fingerprintSync(data: Uint8Array, chunkSize, domain?): Buffer of 32 bytes per chunk, or with a domain
// 36 (the domain, big-endian, then the digest: a dedup key).
// For small batches the thread-pool hop (~20-50 us) costs more than hashing (~1 us per 4 KiB).
Napi::Value FingerprintSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t chunk;
  int64_t domain;
  if (!HashArgs(info, &chunk, &domain)) return ThrowType(env, "fingerprintSync(data: Uint8Array, chunkSize: 1..2^30, domain?: 0..2^32-1)");
  auto arr = info[0].As<Napi::Uint8Array>();
  size_t n = (arr.ByteLength() + chunk - 1) / chunk;
  auto out = Napi::Buffer<uint8_t>::New(env, n * (domain >= 0 ? kDigest + 4 : kDigest));
  HashChunks(arr.Data(), arr.ByteLength(), chunk, out.Data(), domain);
  return out;
}

// fingerprintInto(data, chunkSize, domain, out, outOffset): the dedup keys of data's chunks, written
// into out from outOffset. For the event loop's small writes: the caller's pooled Buffer instead of
// a new external one per call (Napi::Buffer::New, ~0.5 us and a finalizer for the GC each).
Napi::Value FingerprintInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t chunk;
  int64_t domain, off;
  if (info.Length() < 5 || !HashArgs(info, &chunk, &domain) || domain < 0 || !IsTyped(info[3], napi_uint8_array) || !ToInt(info[4], 0, kMaxSafe, &off))
    return ThrowType(env, "fingerprintInto(data: Uint8Array, chunkSize: 1..2^30, domain: 0..2^32-1, out: Uint8Array, outOffset: integer >= 0)");
  auto arr = info[0].As<Napi::Uint8Array>();
  auto out = info[3].As<Napi::Uint8Array>();
  size_t n = (arr.ByteLength() + chunk - 1) / chunk;
  if (static_cast<size_t>(off) + n * (kDigest + 4) > out.ByteLength()) return ThrowRange(env, "fingerprintInto: out is too small for the keys");
  HashChunks(arr.Data(), arr.ByteLength(), chunk, out.Data() + off, domain);
  return env.Undefined();
}

class FingerprintWorker : public Napi::AsyncWorker {
 public:
  FingerprintWorker(Napi::Env env, Napi::Uint8Array data, size_t chunk, int64_t domain)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)),
        ref_(Napi::Persistent(data)), data_(data.Data()), length_(data.ByteLength()), chunk_(chunk), domain_(domain) {
    out_.resize(((length_ + chunk_ - 1) / chunk_) * (domain >= 0 ? kDigest + 4 : kDigest));
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { HashChunks(data_, length_, chunk_, out_.data(), domain_); }
  void OnOK() override {
    deferred_.Resolve(Napi::Buffer<uint8_t>::Copy(Env(), out_.data(), out_.size()));
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::Uint8Array> ref_;  // keeps the input alive while a pool thread reads it
  const uint8_t* data_;
  size_t length_;
  size_t chunk_;
  int64_t domain_;
  std::vector<uint8_t> out_;
};

// fingerprint(data, chunkSize, domain?): the same, hashed on the thread pool.
Napi::Value Fingerprint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t chunk;
  int64_t domain;
  if (!HashArgs(info, &chunk, &domain)) return ThrowType(env, "fingerprint(data: Uint8Array, chunkSize: 1..2^30, domain?: 0..2^32-1)");
  auto* w = new FingerprintWorker(env, info[0].As<Napi::Uint8Array>(), chunk, domain);
  auto p = w->Promise();
  w->Queue();
  return p;
}

// fingerprintMany(datas: Uint8Array[], domains: Float64Array, chunkSize): Promise<Buffer> of
// 36-byte keys, the batches' keys one after another, all hashed in one thread-pool job.
// Why: the data path's concurrent writes each queued a job of their own. In the daemon a
// fingerprint() call held the event loop ~58 us (8 us alone in a test process): waking a pool
// thread on a 2-core machine with the writer, the pool and LMDB's commits all runnable preempts the
// caller. The Fingerprinter (server/dedup/fingerprinter.ts) gathers the writes that arrive while
// a job runs into the next one.
// Runs a hash job in SCHED_BATCH: a batch thread that wakes up does not preempt the thread
// running (often the event loop, on 2 cores). Measured in the daemon's CPU profile of a 1 GiB
// unique write: with batching alone, the event loop still spent 173 ms blocked in fingerprintMany
// calls (the job's thread, woken, took the caller's core for about the time it hashed); with
// SCHED_BATCH that time left the profile. The policy is put back when the job ends: the pool
// threads also run file I/O and LMDB work, which must keep normal wakeup latency.
class BatchPolicy {
 public:
  BatchPolicy() : prev_(sched_getscheduler(0)) {
    if (prev_ >= 0 && prev_ != SCHED_BATCH) {
      sched_param sp{};
      changed_ = sched_setscheduler(0, SCHED_BATCH, &sp) == 0;
    }
  }
  ~BatchPolicy() {
    if (!changed_) return;
    sched_param sp{};
    sched_setscheduler(0, prev_, &sp);
  }

 private:
  int prev_;
  bool changed_ = false;
};

class FingerprintManyWorker : public Napi::AsyncWorker {
 public:
  FingerprintManyWorker(Napi::Env env, Napi::Array datas, const double* domains, size_t chunk)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), chunk_(chunk) {
    size_t total = 0;
    for (uint32_t i = 0; i < datas.Length(); i++) {
      auto a = datas.Get(i).As<Napi::Uint8Array>();
      refs_.push_back(Napi::Persistent(a));  // keeps each input alive while a pool thread reads it
      parts_.push_back({a.Data(), a.ByteLength(), static_cast<int64_t>(domains[i]), total});
      total += (a.ByteLength() + chunk - 1) / chunk * (kDigest + 4);
    }
    out_.resize(total);
  }
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    BatchPolicy batch;
    for (auto& p : parts_) HashChunks(p.data, p.length, chunk_, out_.data() + p.out, p.domain);
  }
  void OnOK() override { deferred_.Resolve(Napi::Buffer<uint8_t>::Copy(Env(), out_.data(), out_.size())); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  struct Part {
    const uint8_t* data;
    size_t length;
    int64_t domain;
    size_t out;
  };
  Napi::Promise::Deferred deferred_;
  std::vector<Napi::Reference<Napi::Uint8Array>> refs_;
  std::vector<Part> parts_;
  size_t chunk_;
  std::vector<uint8_t> out_;
};

Napi::Value FingerprintMany(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t c;
  if (info.Length() < 3 || !info[0].IsArray() || !IsTyped(info[1], napi_float64_array) || !ToInt(info[2], 1, 1073741824.0, &c))
    return ThrowType(env, "fingerprintMany(datas: Uint8Array[], domains: Float64Array, chunkSize: 1..2^30)");
  auto datas = info[0].As<Napi::Array>();
  auto domains = info[1].As<Napi::TypedArray>();
  size_t chunk = static_cast<size_t>(c);
  if (domains.ElementLength() < datas.Length()) {
    Napi::TypeError::New(env, "fingerprintMany: chunkSize must be > 0 and domains a Float64Array with one domain per batch").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  const double* d = domains.As<Napi::Float64Array>().Data();
  for (uint32_t i = 0; i < datas.Length(); i++) {
    Napi::Value v = datas.Get(i);
    if (!IsTyped(v, napi_uint8_array) || !(d[i] >= 0 && d[i] <= 4294967295.0) || std::floor(d[i]) != d[i]) {
      Napi::TypeError::New(env, "fingerprintMany: every batch must be a Uint8Array with a domain from 0 to 2^32-1").ThrowAsJavaScriptException();
      return env.Undefined();
    }
  }
  auto* w = new FingerprintManyWorker(env, datas, d, chunk);
  auto p = w->Promise();
  w->Queue();
  return p;
}

// The one-hasher-per-chunk result, for the test that checks HashChunksWide against it.
Napi::Value FingerprintReference(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t chunk;
  int64_t domain;
  if (!HashArgs(info, &chunk, &domain) || domain >= 0) return ThrowType(env, "fingerprintReference(data: Uint8Array, chunkSize: 1..2^30)");
  auto arr = info[0].As<Napi::Uint8Array>();
  size_t n = (arr.ByteLength() + chunk - 1) / chunk;
  auto out = Napi::Buffer<uint8_t>::New(env, n * kDigest);
  HashChunksSerial(arr.Data(), arr.ByteLength(), chunk, out.Data(), -1);
  return out;
}

}  // namespace

void InitFingerprint(Napi::Env env, Napi::Object exports) {
  exports.Set("fingerprintReference", Napi::Function::New(env, FingerprintReference));
  exports.Set("fingerprintSync", Napi::Function::New(env, FingerprintSync));
  exports.Set("fingerprintInto", Napi::Function::New(env, FingerprintInto));
  exports.Set("fingerprint", Napi::Function::New(env, Fingerprint));
  exports.Set("fingerprintMany", Napi::Function::New(env, FingerprintMany));
}

}  // namespace shoal
