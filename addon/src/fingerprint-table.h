#pragma once
#include <napi.h>
namespace shoal {
void InitFingerprintTable(Napi::Env env, Napi::Object exports);
}
