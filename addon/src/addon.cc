// Entry point of Shoal's native addon. Each module documents why it is native.
#include <napi.h>
#include "chunk-cache.h"
#include "fingerprint.h"
#include "fingerprint-table.h"
#include "file-io.h"
#include "upload-digest.h"
#include "thread-priority.h"

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  shoal::InitFingerprint(env, exports);
  shoal::InitChunkCache(env, exports);
  shoal::InitFingerprintTable(env, exports);
  shoal::InitFileIo(env, exports);
  shoal::InitUploadDigest(env, exports);
  shoal::InitThreadPriority(env, exports);
  return exports;
}

NODE_API_MODULE(shoal, Init)
