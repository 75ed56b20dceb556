#pragma once
#include <napi.h>
namespace shoal {
void InitChunkCache(Napi::Env env, Napi::Object exports);
}
