#pragma once
#include <napi.h>
namespace shoal {
void InitFileIo(Napi::Env env, Napi::Object exports);
}
