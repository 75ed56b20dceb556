#pragma once
#include <napi.h>
namespace shoal {
void InitFingerprint(Napi::Env env, Napi::Object exports);
}
