#pragma once
#include <napi.h>
namespace shoal {
void InitThreadPriority(Napi::Env env, Napi::Object exports);
}
