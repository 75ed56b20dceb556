// The dedup log's in-memory table: fingerprint key (4-byte big-endian domain + 32-byte BLAKE3
// digest) -> chunk slot, for the fingerprints not yet in the on-disk index.
//
// Why native: as a JS Map keyed by latin1 strings it cost ~10 us of main-thread time per unique
// chunk written (building the key string twice, hashing it, growing a Map of long-lived strings
// and the GC work for them): 2.6 s of event-loop time per GiB of unique 4 KiB chunks, the gap
// between dedup on and off in the dedup benchmark. Here a write's keys are looked up in one call,
// entries are 48 bytes in one array, and nothing is on the V8 heap.
//
// Open addressing with linear probing and backward-shift deletion (no tombstones); slot 0 marks
// an empty entry (chunk slots start at 2). The digest is uniform, so its first 8 bytes, mixed
// with the domain, are the hash. A full table is drained into one twice its size a few entries
// per change, not at once (Step()).
#include "fingerprint-table.h"
#include "args.h"
#include <cstring>
#include <algorithm>
#include <cstdlib>
#include <sys/mman.h>

namespace shoal {
namespace {

constexpr size_t kKey = 36;
constexpr size_t kLogEntry = kKey + 6;  // a dedup-log entry: the key, then the slot (48 bits, big-endian)

struct Entry {
  uint8_t key[kKey];
  uint32_t pad;
  uint64_t slot;  // 0: empty
};

class FingerprintTable : public Napi::ObjectWrap<FingerprintTable> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FingerprintTable",
                       {InstanceMethod("get", &FingerprintTable::Get), InstanceMethod("getMany", &FingerprintTable::GetMany),
                        InstanceMethod("set", &FingerprintTable::Set), InstanceMethod("logMany", &FingerprintTable::LogMany),
                        InstanceMethod("deleteIf", &FingerprintTable::DeleteIf),
                        InstanceAccessor("size", &FingerprintTable::Size, nullptr),
                        InstanceAccessor("bytes", &FingerprintTable::Bytes, nullptr)});
  }

  explicit FingerprintTable(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FingerprintTable>(info) {
    tab_ = Alloc(1024);
    size_ = 1024;
  }
  ~FingerprintTable() override {
    Free(tab_, size_);
    Free(old_, oldSize_);
  }

 private:
  // The table, and while it grows, the one before it, drained kStep entries per change: moving 256 Ki
  // entries at once held the event loop 65-140 ms (the longest stall of bench:soak, when the dedup
  // log passed 262,144 entries). A key is in one of the two; an old entry already moved is kMoved.
  // The tables are anonymous mappings of their own: fresh zero pages, faulted in as they fill, where
  // std::vector's assign wrote 48 MiB of zeroes up front. (Not calloc: in the delete benchmark
  // the table of freed keys held the event loop 47-79 ms at each growth, in the daemon's insert,
  // against ~2 ms in a process of its own; glibc may serve a large calloc from heap memory it must
  // clear first. A mapping of its own is zero pages whatever the heap has been through.)
  static constexpr uint64_t kMoved = ~0ull;  // slots are below 2^48
  static constexpr size_t kStep = 8;         // old entries looked at per change: drained in a quarter of the changes before the next growth
  Entry* tab_ = nullptr;
  size_t size_ = 0;
  Entry* old_ = nullptr;
  size_t oldSize_ = 0;
  size_t cursor_ = 0;
  size_t count_ = 0;

  static Entry* Alloc(size_t n) {
    void* p = mmap(nullptr, n * sizeof(Entry), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) abort();  // as std::vector did on bad_alloc: the dedup log cannot go on without its table
    return static_cast<Entry*>(p);
  }

  static void Free(Entry* t, size_t n) {
    if (t != nullptr) munmap(t, n * sizeof(Entry));
  }

  static uint64_t Hash(const uint8_t* k) {
    uint64_t d;
    std::memcpy(&d, k + 4, 8);
    uint32_t dom;
    std::memcpy(&dom, k, 4);
    return d ^ (static_cast<uint64_t>(dom) * 0x9E3779B97F4A7C15ull);
  }

  // Index in t (of size mask + 1) of the entry holding key k, or of the empty entry that ends its
  // probe run. Moved entries are passed over, as the rest of their run may hold k.
  static size_t FindIn(const Entry* t, size_t mask, const uint8_t* k) {
    size_t i = Hash(k) & mask;
    while (t[i].slot != 0 && (t[i].slot == kMoved || std::memcmp(t[i].key, k, kKey) != 0)) i = (i + 1) & mask;
    return i;
  }

  size_t Mask() const { return size_ - 1; }

  // The slot k maps to, or 0.
  uint64_t Lookup(const uint8_t* k) const {
    uint64_t s = tab_[FindIn(tab_, Mask(), k)].slot;
    if (s == 0 && old_ != nullptr) s = old_[FindIn(old_, oldSize_ - 1, k)].slot;
    return s;
  }

  // Moves up to kStep old entries into the table (before a change, so no index found after it moves).
  void Step() {
    if (old_ == nullptr) return;
    const size_t end = std::min(oldSize_, cursor_ + kStep);
    for (; cursor_ < end; cursor_++) {
      Entry& e = old_[cursor_];
      if (e.slot == 0 || e.slot == kMoved) continue;
      size_t i = Hash(e.key) & Mask();
      while (tab_[i].slot != 0) i = (i + 1) & Mask();
      tab_[i] = e;
      e.slot = kMoved;
    }
    if (cursor_ == oldSize_) {
      Free(old_, oldSize_);
      old_ = nullptr;
      oldSize_ = 0;
      cursor_ = 0;
    }
  }

  void Grow() {
    while (old_ != nullptr) Step();  // the last growth's draining is done long before this one
    old_ = tab_;
    oldSize_ = size_;
    cursor_ = 0;
    size_ *= 2;
    tab_ = Alloc(size_);
  }

  // Maps k to slot. Grows only for a new key: growing for a replacement rehashed the whole table
  // (~65 ms at 256 Ki entries) when it was not needed.
  void Put(const uint8_t* k, uint64_t slot) {
    Step();
    size_t i = FindIn(tab_, Mask(), k);
    if (tab_[i].slot == 0) {
      bool known = false;
      if (old_ != nullptr) {
        Entry& o = old_[FindIn(old_, oldSize_ - 1, k)];
        if (o.slot != 0) {
          o.slot = kMoved;  // it moves now, with its new slot
          known = true;
        }
      }
      if (!known) {
        if ((count_ + 1) * 2 > size_) {  // load factor <= 1/2: ~2.5 probes for a miss
          Grow();
          i = FindIn(tab_, Mask(), k);
        }
        count_++;
      }
      std::memcpy(tab_[i].key, k, kKey);
    }
    tab_[i].slot = slot;
  }

  // Removes k if it maps to slot s; true if it did.
  bool EraseIf(const uint8_t* k, uint64_t s) {
    Step();
    size_t i = FindIn(tab_, Mask(), k);
    if (tab_[i].slot != 0) {
      if (tab_[i].slot != s) return false;
      EraseAt(i);
      return true;
    }
    if (old_ == nullptr) return false;
    Entry& o = old_[FindIn(old_, oldSize_ - 1, k)];
    if (o.slot == 0 || o.slot != s) return false;
    o.slot = kMoved;  // gone: the old table is only read from now on
    count_--;
    return true;
  }

  void EraseAt(size_t i) {
    // Backward shift: pull later entries of the probe run into the hole.
    size_t j = i;
    for (;;) {
      j = (j + 1) & Mask();
      if (tab_[j].slot == 0) break;
      size_t home = Hash(tab_[j].key) & Mask();
      // Move j into i if its home is not in the cyclic range (i, j].
      bool between = i <= j ? (home > i && home <= j) : (home > i || home <= j);
      if (!between) {
        tab_[i] = tab_[j];
        i = j;
      }
    }
    tab_[i].slot = 0;
    count_--;
  }

  // Validates (keys: Uint8Array, offset) and returns a pointer to the 36 key bytes, or null.
  static const uint8_t* KeyAt(const Napi::CallbackInfo& info, size_t argKeys, size_t argOff, const char* usage) {
    Napi::Env env = info.Env();
    int64_t off;
    if (info.Length() <= argOff || !IsTyped(info[argKeys], napi_uint8_array) || !ToInt(info[argOff], 0, kMaxSafe, &off)) {
      Napi::TypeError::New(env, usage).ThrowAsJavaScriptException();
      return nullptr;
    }
    auto a = info[argKeys].As<Napi::Uint8Array>();
    if (static_cast<uint64_t>(off) + kKey > a.ByteLength()) {
      Napi::RangeError::New(env, "fingerprint key out of range").ThrowAsJavaScriptException();
      return nullptr;
    }
    return a.Data() + static_cast<size_t>(off);
  }

  // get(keys, offset): slot, or -1.
  Napi::Value Get(const Napi::CallbackInfo& info) {
    const uint8_t* k = KeyAt(info, 0, 1, "get(keys: Uint8Array, offset)");
    if (!k) return info.Env().Undefined();
    const uint64_t slot = Lookup(k);
    return Napi::Number::New(info.Env(), slot == 0 ? -1.0 : static_cast<double>(slot));
  }

  // getMany(keys, n, out: Float64Array): out[i] = slot of keys[36i..36i+36), or -1. Returns hits.
  Napi::Value GetMany(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t n64;
    if (info.Length() < 3 || !IsTyped(info[0], napi_uint8_array) || !ToInt(info[1], 0, 4294967295.0, &n64) || !IsTyped(info[2], napi_float64_array))
      return ThrowType(env, "getMany(keys: Uint8Array, n, out: Float64Array)");
    auto keys = info[0].As<Napi::Uint8Array>();
    auto out = info[2].As<Napi::Float64Array>();
    uint32_t n = static_cast<uint32_t>(n64);
    if (static_cast<size_t>(n) * kKey > keys.ByteLength() || n > out.ElementLength()) {
      Napi::RangeError::New(env, "getMany: n is larger than keys or out").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uint32_t hits = 0;
    for (uint32_t i = 0; i < n; i++) {
      const uint64_t slot = Lookup(keys.Data() + static_cast<size_t>(i) * kKey);
      out[i] = slot == 0 ? -1.0 : static_cast<double>(slot);
      if (slot != 0) hits++;
    }
    return Napi::Number::New(env, hits);
  }

  // set(keys, offset, slot): maps the key to slot (replacing any earlier slot).
  Napi::Value Set(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint8_t* k = KeyAt(info, 0, 1, "set(keys: Uint8Array, offset, slot)");
    if (!k) return env.Undefined();
    int64_t s;
    if (info.Length() < 3 || !ToInt(info[2], 1, kMaxSafe, &s)) return ThrowType(env, "set: slot must be a positive integer");
    Put(k, static_cast<uint64_t>(s));
    return env.Undefined();
  }

  // logMany(keys, which: Uint32Array, slots: Float64Array, n, log: Uint8Array, logOff): for i < n,
  // maps key number which[i] of keys (bytes 36*which[i]..) to slots[i], and appends the log entry
  // (the key, then the slot in 6 bytes big-endian) at log[logOff..]. Returns the new logOff.
  // Why one call for a write's new chunks: set() per chunk cost ~0.7 us each in the daemon (the
  // call, not the table), and appending each entry with Buffer#copy about as much again: ~0.3 s
  // of event-loop time per GiB of unique data, where the write stream is bound by that loop.
  Napi::Value LogMany(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t n64, off64;
    if (info.Length() < 6 || !IsTyped(info[0], napi_uint8_array) || !IsTyped(info[1], napi_uint32_array) || !IsTyped(info[2], napi_float64_array) ||
        !ToInt(info[3], 0, 4294967295.0, &n64) || !IsTyped(info[4], napi_uint8_array) || !ToInt(info[5], 0, kMaxSafe, &off64))
      return ThrowType(env, "logMany(keys: Uint8Array, which: Uint32Array, slots: Float64Array, n, log: Uint8Array, logOff)");
    auto keys = info[0].As<Napi::Uint8Array>();
    auto which = info[1].As<Napi::Uint32Array>();
    auto slots = info[2].As<Napi::Float64Array>();
    auto log = info[4].As<Napi::Uint8Array>();
    const double n = static_cast<double>(n64);
    const double off = static_cast<double>(off64);
    if (n > which.ElementLength() || n > slots.ElementLength() || off + n * kLogEntry > log.ByteLength()) {
      Napi::RangeError::New(env, "logMany: n is larger than which or slots, or the log has no room").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    const size_t count = static_cast<size_t>(n);
    for (size_t i = 0; i < count; i++) {  // all checked first: a bad entry changes nothing
      double s = slots[i];
      if (static_cast<size_t>(which[i]) * kKey + kKey > keys.ByteLength() || !(s >= 1) || s > 281474976710655.0 ||
          s != static_cast<double>(static_cast<uint64_t>(s))) {
        Napi::RangeError::New(env, "logMany: a key index is out of range or a slot is not a positive 48-bit integer").ThrowAsJavaScriptException();
        return env.Undefined();
      }
    }
    uint8_t* o = log.Data() + static_cast<size_t>(off);
    for (size_t i = 0; i < count; i++) {
      const uint8_t* k = keys.Data() + static_cast<size_t>(which[i]) * kKey;
      const uint64_t s = static_cast<uint64_t>(slots[i]);
      Put(k, s);
      std::memcpy(o, k, kKey);
      for (int b = 0; b < 6; b++) o[kKey + b] = static_cast<uint8_t>(s >> (8 * (5 - b)));
      o += kLogEntry;
    }
    return Napi::Number::New(env, off + n * kLogEntry);
  }

  // deleteIf(keys, offset, slot): removes the key if it maps to slot; true if it did.
  Napi::Value DeleteIf(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint8_t* k = KeyAt(info, 0, 1, "deleteIf(keys: Uint8Array, offset, slot)");
    if (!k) return env.Undefined();
    int64_t s;
    if (info.Length() < 3 || !ToInt(info[2], 0, kMaxSafe, &s)) return ThrowType(env, "deleteIf(keys: Uint8Array, offset, slot)");
    return Napi::Boolean::New(env, EraseIf(k, static_cast<uint64_t>(s)));
  }

  Napi::Value Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), static_cast<double>(count_)); }
  Napi::Value Bytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), static_cast<double>((size_ + oldSize_) * sizeof(Entry)));
  }
};

}  // namespace

void InitFingerprintTable(Napi::Env env, Napi::Object exports) {
  exports.Set("FingerprintTable", FingerprintTable::Define(env));
}

}  // namespace shoal
