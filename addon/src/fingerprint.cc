// Chunk fingerprints: BLAKE3-256 of each chunk in a batch.
// Why native: Node's crypto SHA-256 reaches ~200-350 MB/s per core on this machine (no SHA-NI);
// BLAKE3 with AVX-512/AVX2 reaches several GB/s per core, and the async form runs a whole
// batch on libuv's thread pool so the event loop never waits for hashing.
#include "fingerprint.h"
#include <cstring>
#include <vector>
extern "C" {
#include "blake3.h"
}

namespace shoal {
namespace {

constexpr size_t kDigest = 32;

// With a domain (>= 0), each digest comes after the domain as 4 big-endian bytes: the 36-byte
// key of the dedup index, built here so the write path does not assemble it per chunk in JS.
void HashChunks(const uint8_t* data, size_t length, size_t chunk, uint8_t* out, int64_t domain) {
  size_t n = (length + chunk - 1) / chunk;
  size_t stride = domain >= 0 ? kDigest + 4 : kDigest;
  for (size_t i = 0; i < n; i++) {
    size_t off = i * chunk;
    size_t len = length - off < chunk ? length - off : chunk;
    uint8_t* o = out + i * stride;
    if (domain >= 0) {
      uint32_t d = static_cast<uint32_t>(domain);
      o[0] = d >> 24, o[1] = d >> 16, o[2] = d >> 8, o[3] = d;
      o += 4;
    }
    blake3_hasher h;
    blake3_hasher_init(&h);
    blake3_hasher_update(&h, data + off, len);
    blake3_hasher_finalize(&h, o, kDigest);
  }
}

// The optional third argument: a dedup domain id (0 .. 2^32-1), or -1 / absent for bare digests.
int64_t DomainArg(const Napi::CallbackInfo& info) {
  if (info.Length() < 3 || !info[2].IsNumber()) return -1;
  double d = info[2].As<Napi::Number>().DoubleValue();
  return d >= 0 && d <= 4294967295.0 ? static_cast<int64_t>(d) : -1;
}

// fingerprintSync(data: Uint8Array, chunkSize: number): Buffer of 32 bytes per chunk.
// For small batches the thread-pool hop (~20-50 us) costs more than hashing (~1 us per 4 KiB).
Napi::Value FingerprintSync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "fingerprintSync(data: Uint8Array, chunkSize: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto arr = info[0].As<Napi::Uint8Array>();
  size_t chunk = info[1].As<Napi::Number>().Uint32Value();
  if (chunk == 0) chunk = arr.ByteLength() ? arr.ByteLength() : 1;
  size_t n = (arr.ByteLength() + chunk - 1) / chunk;
  int64_t domain = DomainArg(info);
  auto out = Napi::Buffer<uint8_t>::New(env, n * (domain >= 0 ? kDigest + 4 : kDigest));
  HashChunks(arr.Data(), arr.ByteLength(), chunk, out.Data(), domain);
  return out;
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

// fingerprint(data, chunkSize): Promise<Buffer>, hashed on the thread pool.
Napi::Value Fingerprint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsTypedArray() || !info[1].IsNumber()) {
    Napi::TypeError::New(env, "fingerprint(data: Uint8Array, chunkSize: number)").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  auto arr = info[0].As<Napi::Uint8Array>();
  size_t chunk = info[1].As<Napi::Number>().Uint32Value();
  if (chunk == 0) chunk = arr.ByteLength() ? arr.ByteLength() : 1;
  auto* w = new FingerprintWorker(env, arr, chunk, DomainArg(info));
  auto p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void InitFingerprint(Napi::Env env, Napi::Object exports) {
  exports.Set("fingerprintSync", Napi::Function::New(env, FingerprintSync));
  exports.Set("fingerprint", Napi::Function::New(env, Fingerprint));
}

}  // namespace shoal
