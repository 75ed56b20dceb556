#pragma once
#include <napi.h>
namespace shoal {
void InitUploadDigest(Napi::Env env, Napi::Object exports);
}
