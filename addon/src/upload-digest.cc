// md5(data): Promise<Buffer>, the MD5 of an upload's body (its Content-MD5, which S3 checks), computed on
// libuv's thread pool with the OpenSSL that Node itself links. Why native: profiled writing 1 GiB to
// Ceph RGW with `--s3-sync async`, crypto.createHash('md5') of each 8 MiB pack was 30% of the daemon's
// main thread (MD5 runs at ~600 MB/s, one core, and Node's hash has no asynchronous form).
#include "upload-digest.h"

#include <openssl/evp.h>

#include "args.h"

namespace shoal {
namespace {

class Md5Worker : public Napi::AsyncWorker {
 public:
  Md5Worker(Napi::Env env, Napi::Uint8Array data)
      : Napi::AsyncWorker(env, "shoal:md5"),
        deferred_(Napi::Promise::Deferred::New(env)),
        // Holds the body while the thread reads it: the caller's buffer is not to change meanwhile.
        ref_(Napi::Persistent(data)),
        bytes_(data.Data()),
        length_(data.ByteLength()) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    unsigned int n = 0;
    if (EVP_Digest(bytes_, length_, digest_, &n, EVP_md5(), nullptr) != 1 || n != 16) SetError("MD5 is not available in this Node's OpenSSL");
  }
  void OnOK() override { deferred_.Resolve(Napi::Buffer<uint8_t>::Copy(Env(), digest_, 16)); }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::Reference<Napi::Uint8Array> ref_;
  const uint8_t* bytes_;
  size_t length_;
  uint8_t digest_[16];
};

Napi::Value Md5(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    return ThrowType(env, "md5(data: Uint8Array)");
  auto* w = new Md5Worker(env, info[0].As<Napi::Uint8Array>());
  auto p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void InitUploadDigest(Napi::Env env, Napi::Object exports) { exports.Set("md5", Napi::Function::New(env, Md5)); }

}  // namespace shoal
