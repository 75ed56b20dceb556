// Digests of what goes into the bucket, computed on libuv's thread pool with the libraries Node itself
// links (OpenSSL, zlib):
//
// md5(data): Promise<Buffer>, the MD5 of an upload's body (its Content-MD5, which S3 checks). Why native:
// profiled writing 1 GiB to Ceph RGW with `--s3-sync async`, crypto.createHash('md5') of each 8 MiB pack
// was 30% of the daemon's main thread (MD5 runs at ~600 MB/s, one core, and Node's hash has no
// asynchronous form).
//
// crc32Chunks(data, chunkSize): Promise<Buffer>, the CRC-32 of each chunkSize piece of data, 4 bytes
// little-endian each: a pack's index entries. Why native: profiled writing 1 GiB into the S3 store with
// uploads held back, zlib.crc32 of each chunk as it was appended was 11% of the daemon's event loop
// (3.5 GB/s, and Node's crc32 has no asynchronous form); a pack's chunks are now summed once, when it is
// sealed, beside the event loop.
#include "upload-digest.h"

#include <openssl/evp.h>
#include <zlib.h>

#include <vector>

#include "args.h"

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
      uLong c = crc32(0L, bytes_ + i * chunk_, static_cast<uInt>(chunk_));
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

}  // namespace

void InitUploadDigest(Napi::Env env, Napi::Object exports) {
  exports.Set("md5", Napi::Function::New(env, Md5));
  exports.Set("crc32Chunks", Napi::Function::New(env, Crc32Chunks));
}

}  // namespace shoal
