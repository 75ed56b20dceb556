// Digests of what goes into the bucket, computed on libuv's thread pool with the libraries Node itself
// links (OpenSSL, zlib):
//
// md5(data): Promise<Buffer>, the MD5 of an upload's body (its Content-MD5, which S3 checks). Why native:
// profiled writing 1 GiB to Ceph RGW with `--s3-sync async`, crypto.createHash('md5') of each 8 MiB pack
// was 30% of the daemon's main thread (MD5 runs at ~600 MB/s, one core, and Node's hash has no
// asynchronous form).
//
// crc32Chunks(data, chunkSize): Promise<Buffer>, the CRC-32 of each chunkSize piece of data, 4 bytes
// little-endian each, on the thread pool: the check of a range fetched from the bucket, and the index of
// a pack recovered after a crash (read back from its file).
//
// crc32ChunksInto(data, chunkSize, out, at): the same into out[at..] (a Uint32Array), at once: a pack's
// chunks as they are appended. zlib.crc32 of each chunk there was 11% of the event loop (3.5 GB/s); the
// folded CRC (crc32-fold.cc) is ~3x faster, so summing each chunk as it is written costs less than the
// read-back of the whole pack at seal that summing on the pool needed.
#include "upload-digest.h"

#include <openssl/evp.h>
#include <zlib.h>

#include <vector>

#include "args.h"
#include "crc32-fold.h"

namespace shoal {
namespace {

// A thread-pool job over one Uint8Array that resolves with the bytes Execute() leaves in out_.
class DigestWorker : public Napi::AsyncWorker {
 public:
  DigestWorker(Napi::Env env, const char* name, Napi::Uint8Array data)
      : Napi::AsyncWorker(env, name),
        bytes_(data.Data()),
        length_(data.ByteLength()),
        deferred_(Napi::Promise::Deferred::New(env)),
        // Holds the data while the thread reads it: the caller's buffer is not to change meanwhile.
        ref_(Napi::Persistent(data)) {}

  // Queues the job; the promise of its result.
  Napi::Value Start() {
    auto p = deferred_.Promise();
    Queue();
    return p;
  }

 protected:
  const uint8_t* bytes_;
  size_t length_;
  std::vector<uint8_t> out_;

 private:
  void OnOK() override { deferred_.Resolve(Napi::Buffer<uint8_t>::Copy(Env(), out_.data(), out_.size())); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::Uint8Array> ref_;
};

class Md5Worker : public DigestWorker {
 public:
  Md5Worker(Napi::Env env, Napi::Uint8Array data) : DigestWorker(env, "shoal:md5", data) {}
  void Execute() override {
    out_.resize(16);
    unsigned int n = 0;
    if (EVP_Digest(bytes_, length_, out_.data(), &n, EVP_md5(), nullptr) != 1 || n != 16) SetError("MD5 is not available in this Node's OpenSSL");
  }
};

class Crc32Worker : public DigestWorker {
 public:
  Crc32Worker(Napi::Env env, Napi::Uint8Array data, size_t chunk) : DigestWorker(env, "shoal:crc32", data), chunk_(chunk) {}
  void Execute() override {
    const size_t n = length_ / chunk_;
    out_.resize(n * 4);
    for (size_t i = 0; i < n; i++) {
      uint32_t c = Crc32(0, bytes_ + i * chunk_, chunk_);
      for (int b = 0; b < 4; b++) out_[i * 4 + b] = static_cast<uint8_t>(c >> (8 * b));
    }
  }

 private:
  size_t chunk_;
};

Napi::Value Md5(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !IsTyped(info[0], napi_uint8_array)) return ThrowType(env, "md5(data: Uint8Array)");
  return (new Md5Worker(env, info[0].As<Napi::Uint8Array>()))->Start();
}

Napi::Value Crc32Chunks(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t chunk = 0;
  if (info.Length() < 2 || !IsTyped(info[0], napi_uint8_array) || !ToInt(info[1], 1, 1 << 30, &chunk))
    return ThrowType(env, "crc32Chunks(data: Uint8Array, chunkSize: integer from 1 to 2^30)");
  auto data = info[0].As<Napi::Uint8Array>();
  if (data.ByteLength() % static_cast<size_t>(chunk) != 0) return ThrowRange(env, "crc32Chunks: data is not a whole number of chunks");
  return (new Crc32Worker(env, data, static_cast<size_t>(chunk)))->Start();
}

Napi::Value Crc32ChunksInto(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t chunk = 0;
  int64_t at = 0;
  if (info.Length() < 4 || !IsTyped(info[0], napi_uint8_array) || !ToInt(info[1], 1, 1 << 30, &chunk) || !IsTyped(info[2], napi_uint32_array) ||
      !ToInt(info[3], 0, kMaxSafe, &at))
    return ThrowType(env, "crc32ChunksInto(data: Uint8Array, chunkSize: integer from 1 to 2^30, out: Uint32Array, at: integer >= 0)");
  auto data = info[0].As<Napi::Uint8Array>();
  auto out = info[2].As<Napi::Uint32Array>();
  const size_t cs = static_cast<size_t>(chunk);
  if (data.ByteLength() % cs != 0) return ThrowRange(env, "crc32ChunksInto: data is not a whole number of chunks");
  const size_t n = data.ByteLength() / cs;
  if (static_cast<size_t>(at) > out.ElementLength() || n > out.ElementLength() - static_cast<size_t>(at)) return ThrowRange(env, "crc32ChunksInto: out has no room for every chunk from at");
  for (size_t i = 0; i < n; i++) out[static_cast<size_t>(at) + i] = Crc32(0, data.Data() + i * cs, cs);
  return env.Undefined();
}

}  // namespace

void InitUploadDigest(Napi::Env env, Napi::Object exports) {
  exports.Set("md5", Napi::Function::New(env, Md5));
  exports.Set("crc32Chunks", Napi::Function::New(env, Crc32Chunks));
  exports.Set("crc32ChunksInto", Napi::Function::New(env, Crc32ChunksInto));
}

}  // namespace shoal
