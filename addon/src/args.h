// Argument checks shared by every entry point of the addon. napi's As<T>() is an unchecked cast:
// a Float64Array passed where a Uint8Array is expected would be read with the wrong element size,
// and a NaN turned into an integer is undefined behaviour. Every entry point goes through these,
// so bad input from JS is a TypeError/RangeError, never an out-of-bounds access.
#pragma once
#include <napi.h>

#include <cmath>
#include <cstdint>

namespace shoal {

// Throws a TypeError naming the call's signature; returns undefined for the caller to return.
inline Napi::Value ThrowType(Napi::Env env, const char* msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

inline Napi::Value ThrowRange(Napi::Env env, const char* msg) {
  Napi::RangeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

// A typed array of exactly this element type (a Buffer counts as a Uint8Array).
inline bool IsTyped(const Napi::Value& v, napi_typedarray_type type) {
  return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == type;
}

// An integral number in [min, max] (finite, no fraction); max at most 2^53 - 1.
inline bool ToInt(const Napi::Value& v, double min, double max, int64_t* out) {
  if (!v.IsNumber()) return false;
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= min) || !(d <= max) || std::floor(d) != d) return false;
  *out = static_cast<int64_t>(d);
  return true;
}

constexpr double kMaxSafe = 9007199254740991.0;  // 2^53 - 1: ids and byte counts are JS numbers

// A chunk slot id: a non-negative integer below 2^53.
inline bool ToSlot(const Napi::Value& v, int64_t* out) { return ToInt(v, 0, kMaxSafe, out); }

// A reader id: -1 (none) or a non-negative int32.
inline bool ToReader(const Napi::Value& v, int32_t* out) {
  int64_t r;
  if (!ToInt(v, -1, 2147483647.0, &r)) return false;
  *out = static_cast<int32_t>(r);
  return true;
}

// Optional boolean argument i (absent or undefined: dflt); anything but a boolean is refused.
inline bool ToBoolArg(const Napi::CallbackInfo& info, size_t i, bool dflt, bool* out) {
  if (info.Length() <= i || info[i].IsUndefined()) {
    *out = dflt;
    return true;
  }
  if (!info[i].IsBoolean()) return false;
  *out = info[i].As<Napi::Boolean>().Value();
  return true;
}

}  // namespace shoal
