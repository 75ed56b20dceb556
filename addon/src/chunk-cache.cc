// The shared chunk cache (DESIGN.md "shared cache" row; invariants 1 and 5): one arena of
// chunk-sized frames, keyed by physical slot id, S3-FIFO eviction, pins for zero-copy sends,
// and store reads straight into the arena on the thread pool.
// Why native:
// - chunk bytes live in one mmap'ed arena outside the V8 heap: a multi-GiB cache adds no GC
//   marking, no per-chunk ArrayBuffer/Buffer object, and a hard byte budget (frames are fixed);
// - store reads go O_DIRECT into page-aligned frames (node's fs cannot allocate aligned
//   buffers), so a chunk is held once, not once here and again in the kernel page cache;
// - a frame being sent to a client is pinned: eviction unindexes it at once but its memory is
//   reused only after the send, which a GC-owned Buffer cannot express.
// Threading: the index, queues and counters are touched only on the JS thread. A load worker
// only preads into frames reserved for it, which stay hidden from lookups until it completes.
#include "chunk-cache.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace shoal {
namespace {

constexpr uint32_t kNil = UINT32_MAX;
constexpr size_t kMaxReaders = 64;    // distinct readers tracked per entry (sharing factor)
constexpr size_t kMaxIov = 256;       // iovecs per preadv (IOV_MAX is 1024)
constexpr size_t kViewBytes = 1u << 30;  // one external Buffer per GiB of arena (Buffer max is 4 GiB)

enum State : uint8_t { kFree, kLoading, kCancelled, kCached, kOrphan };
enum Queue : uint8_t { kNone, kSmall, kMain };

const char* ErrnoName(int e) {
  switch (e) {
    case EINVAL: return "EINVAL";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EBADF: return "EBADF";
    case EIO: return "EIO";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case EISDIR: return "EISDIR";
    case ENOMEM: return "ENOMEM";
    case EROFS: return "EROFS";
    case ENOTSUP: return "ENOTSUP";
    default: return "EUNKNOWN";
  }
}

Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what) {
  auto e = Napi::Error::New(env, what + ": " + std::strerror(err));
  e.Set("code", ErrnoName(err));
  e.Set("errno", Napi::Number::New(env, -err));
  return e;
}

Napi::Value ThrowType(Napi::Env env, const char* msg) {
  Napi::TypeError::New(env, msg).ThrowAsJavaScriptException();
  return env.Undefined();
}

// Slot ids are JS numbers: non-negative integers (< 2^53).
bool ToSlot(const Napi::Value& v, int64_t* out) {
  if (!v.IsNumber()) return false;
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0) || d > 9007199254740991.0 || std::floor(d) != d) return false;
  *out = static_cast<int64_t>(d);
  return true;
}

// Unmapped when the cache object and every Buffer view of it are gone.
struct Arena {
  uint8_t* base = nullptr;
  size_t size = 0;
  ~Arena() {
    if (base) munmap(base, size);
  }
};

struct Frame {
  int64_t slot = -1;
  uint32_t prev = kNil, next = kNil;
  uint32_t pins = 0;
  State state = kFree;
  Queue queue = kNone;
  uint8_t freq = 0;  // 0..3, S3-FIFO use counter
  bool ahead = false;  // loaded by readahead and not read yet: its first read is not a re-use
  std::vector<int32_t> readers;
};

struct List {
  uint32_t head = kNil, tail = kNil;
  size_t count = 0;
};

// One run of consecutive slots: one preadv into the (non-contiguous) frames.
struct Run {
  off_t offset;
  size_t first;  // index into the worker's iovec array
  size_t count;
};

class LoadWorker;

class ChunkCache : public Napi::ObjectWrap<ChunkCache> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeChunkCache",
                       {InstanceMethod<&ChunkCache::LookupCopy>("lookupCopy"),
                        InstanceMethod<&ChunkCache::Gather>("gather"),
                        InstanceMethod<&ChunkCache::Pin>("pin"),
                        InstanceMethod<&ChunkCache::Unpin>("unpin"),
                        InstanceMethod<&ChunkCache::PinMany>("pinMany"),
                        InstanceMethod<&ChunkCache::UnpinMany>("unpinMany"),
                        InstanceMethod<&ChunkCache::Insert>("insert"),
                        InstanceMethod<&ChunkCache::Drop>("drop"),
                        InstanceMethod<&ChunkCache::Has>("has"),
                        InstanceMethod<&ChunkCache::NoteReader>("noteReader"),
                        InstanceMethod<&ChunkCache::AddCounters>("addCounters"),
                        InstanceMethod<&ChunkCache::Load>("load"),
                        InstanceMethod<&ChunkCache::Views>("views"),
                        InstanceMethod<&ChunkCache::Stats>("stats")});
  }

  // new NativeChunkCache(capacityBytes, chunkSize): floor(capacity / chunkSize) frames in one mmap.
  explicit ChunkCache(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ChunkCache>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) {
      ThrowType(env, "new NativeChunkCache(capacityBytes: number, chunkSize: number)");
      return;
    }
    double cap = info[0].As<Napi::Number>().DoubleValue();
    double cs = info[1].As<Napi::Number>().DoubleValue();
    // O_DIRECT needs page-aligned, page-multiple buffers: chunk sizes are powers of two >= 4 KiB.
    if (!(cs >= 4096) || cs > (1 << 30) || (static_cast<uint64_t>(cs) & (static_cast<uint64_t>(cs) - 1)) != 0 || !(cap >= 0)) {
      Napi::RangeError::New(env, "chunkSize must be a power of two >= 4096 and capacityBytes >= 0").ThrowAsJavaScriptException();
      return;
    }
    cs_ = static_cast<size_t>(cs);
    capacity_ = static_cast<uint64_t>(cap);
    uint64_t n = capacity_ / cs_;
    if (n >= kNil) n = kNil - 1;
    arena_ = std::make_shared<Arena>();
    if (n > 0) {
      size_t size = static_cast<size_t>(n) * cs_;
      void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) {
        ErrnoError(env, errno, "cannot map the chunk cache arena").ThrowAsJavaScriptException();
        return;
      }
#ifdef MADV_DONTDUMP
      madvise(p, size, MADV_DONTDUMP);  // a core dump need not carry gigabytes of cached volume data
#endif
      arena_->base = static_cast<uint8_t*>(p);
      arena_->size = size;
    }
    nframes_ = static_cast<uint32_t>(n);
    frames_.resize(nframes_);
    free_.reserve(nframes_);
    for (uint32_t i = nframes_; i-- > 0;) free_.push_back(i);
    index_.reserve(nframes_);
    smallTarget_ = nframes_ / 10 > 0 ? nframes_ / 10 : 1;
  }

  uint8_t* FramePtr(uint32_t f) const { return arena_->base + static_cast<size_t>(f) * cs_; }
  void Complete(const std::vector<uint32_t>& frames, bool ok, uint64_t reads, uint64_t bytes);

 private:
  // ---------------------------------------------------------------- queues and index
  void PushTail(List& l, Queue q, uint32_t f) {
    Frame& fr = frames_[f];
    fr.queue = q;
    fr.next = kNil;
    fr.prev = l.tail;
    if (l.tail != kNil) frames_[l.tail].next = f;
    else l.head = f;
    l.tail = f;
    l.count++;
  }

  void Unlink(uint32_t f) {
    Frame& fr = frames_[f];
    if (fr.queue == kNone) return;
    List& l = fr.queue == kSmall ? small_ : main_;
    if (fr.prev != kNil) frames_[fr.prev].next = fr.next;
    else l.head = fr.next;
    if (fr.next != kNil) frames_[fr.next].prev = fr.prev;
    else l.tail = fr.prev;
    fr.prev = fr.next = kNil;
    fr.queue = kNone;
    l.count--;
  }

  // A counted use: the first read of a chunk brought in by readahead is its first use, not a
  // re-use, so it does not earn the frame a place in main (a sequential scan stays on probation).
  static void Use(Frame& fr) {
    if (fr.ahead) fr.ahead = false;
    else if (fr.freq < 3) fr.freq++;
  }

  void NoteReaderOn(Frame& fr, int32_t reader) {
    if (reader < 0 || fr.readers.size() >= kMaxReaders) return;
    for (int32_t r : fr.readers)
      if (r == reader) return;
    fr.readers.push_back(reader);
    readerRefs_++;
  }

  // Takes an indexed frame out of the index (never served again); its readers stop counting.
  void Unindex(uint32_t f) {
    Frame& fr = frames_[f];
    index_.erase(fr.slot);
    readerRefs_ -= fr.readers.size();
    fr.readers.clear();
    if (fr.state == kCached) entries_--;
  }

  void Release(uint32_t f) {
    Frame& fr = frames_[f];
    fr.slot = -1;
    fr.freq = 0;
    fr.ahead = false;
    fr.state = kFree;
    free_.push_back(f);
  }

  // A cached frame leaves the cache: freed now, or when its last pin goes.
  void Retire(uint32_t f) {
    Unlink(f);
    Unindex(f);
    if (frames_[f].pins > 0) {
      frames_[f].state = kOrphan;
      orphans_++;
    } else {
      Release(f);
    }
  }

  void AddGhost(int64_t slot) {
    uint64_t stamp = ++ghostStamp_;
    ghost_[slot] = stamp;
    ghostQ_.emplace_back(slot, stamp);
    // Bounded to one cache's worth of ids; stale queue entries are skipped as they reach the front.
    while (ghost_.size() > nframes_ || ghostQ_.size() > 2 * static_cast<size_t>(nframes_) + 16) {
      auto [s, st] = ghostQ_.front();
      ghostQ_.pop_front();
      auto it = ghost_.find(s);
      if (it != ghost_.end() && it->second == st) ghost_.erase(it);
    }
  }

  // S3-FIFO: a chunk used while on probation moves to main; main entries get one pass per use.
  bool EvictOne() {
    for (;;) {
      if (small_.count == 0 && main_.count == 0) return false;  // everything is loading or pinned-orphaned
      bool fromSmall = small_.count > smallTarget_ || main_.count == 0;
      uint32_t f = fromSmall ? small_.head : main_.head;
      Frame& fr = frames_[f];
      Unlink(f);
      if (fr.freq > 0) {
        if (fromSmall) fr.freq = 0;
        else fr.freq--;
        PushTail(main_, kMain, f);
        continue;
      }
      int64_t slot = fr.slot;
      Retire(f);
      evictions_++;
      if (fromSmall) AddGhost(slot);
      if (!free_.empty()) return true;  // a pinned victim frees nothing yet: go on
    }
  }

  uint32_t Acquire() {
    while (free_.empty())
      if (!EvictOne()) return kNil;
    uint32_t f = free_.back();
    free_.pop_back();
    return f;
  }

  // A loaded or inserted frame enters the queues (main if its id was evicted recently).
  void Admit(uint32_t f) {
    Frame& fr = frames_[f];
    fr.state = kCached;
    fr.freq = 0;
    entries_++;
    auto g = ghost_.find(fr.slot);
    if (g != ghost_.end()) {
      ghost_.erase(g);
      PushTail(main_, kMain, f);
    } else {
      PushTail(small_, kSmall, f);
    }
  }

  // Forgets whatever the index holds for slot: a cached entry retires, a load in flight is
  // cancelled (its bytes never enter the cache).
  void Forget(int64_t slot) {
    auto it = index_.find(slot);
    if (it == index_.end()) return;
    uint32_t f = it->second;
    if (frames_[f].state == kLoading) {
      Unindex(f);
      frames_[f].state = kCancelled;
    } else {
      Retire(f);
    }
  }

  Frame* Cached(int64_t slot, uint32_t* f) {
    auto it = index_.find(slot);
    if (it == index_.end()) return nullptr;
    Frame& fr = frames_[it->second];
    if (fr.state != kCached) return nullptr;
    *f = it->second;
    return &fr;
  }

  // ---------------------------------------------------------------- JS methods

  // lookupCopy(slot, dst, dstOff, from, len, reader, count = true): boolean. Copies on a hit.
  // Native so that the hit path is one call: index lookup, S3-FIFO bump, memcpy out of the arena.
  Napi::Value LookupCopy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t slot;
    if (info.Length() < 6 || !ToSlot(info[0], &slot) || !info[1].IsTypedArray())
      return ThrowType(env, "lookupCopy(slot, dst: Uint8Array, dstOff, from, len, reader, count?)");
    uint32_t f;
    Frame* fr = Cached(slot, &f);
    if (!fr) return Napi::Boolean::New(env, false);
    auto dst = info[1].As<Napi::Uint8Array>();
    int64_t dstOff = info[2].As<Napi::Number>().Int64Value();
    int64_t from = info[3].As<Napi::Number>().Int64Value();
    int64_t len = info[4].As<Napi::Number>().Int64Value();
    if (dstOff < 0 || from < 0 || len < 0 || static_cast<uint64_t>(from + len) > cs_ ||
        static_cast<uint64_t>(dstOff + len) > dst.ByteLength()) {
      Napi::RangeError::New(env, "lookupCopy: range out of bounds").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    std::memcpy(dst.Data() + dstOff, FramePtr(f) + from, static_cast<size_t>(len));
    if (info.Length() < 7 || info[6].ToBoolean()) {
      hits_++;
      served_ += static_cast<uint64_t>(len);
      Use(*fr);
      NoteReaderOn(*fr, info[5].As<Napi::Number>().Int32Value());
    }
    return Napi::Boolean::New(env, true);
  }

  // gather(slots: Float64Array, n, out, outOff, skip, length, reader, hit: Uint8Array, count = true): misses.
  // One request over n consecutive chunks: chunk k covers request bytes [k*cs - skip, (k+1)*cs - skip)
  // within [0, length), written at out[outOff + ...]. hit[k] = 1 copied, 0 miss, 2 slot < 0 (a hole:
  // untouched). Why native: a JS->C++ call costs ~1 us on the build VM (perf: mostly the call
  // itself), so a 128 KiB read is one call, not 32.
  Napi::Value Gather(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 8 || !info[0].IsTypedArray() || !info[2].IsTypedArray() || !info[7].IsTypedArray())
      return ThrowType(env, "gather(slots: Float64Array, n, out: Uint8Array, outOff, skip, length, reader, hit: Uint8Array, count?)");
    auto slots = info[0].As<Napi::Float64Array>();
    auto out = info[2].As<Napi::Uint8Array>();
    auto hit = info[7].As<Napi::Uint8Array>();
    int64_t n = info[1].As<Napi::Number>().Int64Value();
    int64_t outOff = info[3].As<Napi::Number>().Int64Value();
    int64_t skip = info[4].As<Napi::Number>().Int64Value();
    int64_t length = info[5].As<Napi::Number>().Int64Value();
    int32_t reader = info[6].As<Napi::Number>().Int32Value();
    bool count = info.Length() < 9 || info[8].ToBoolean();
    int64_t cs = static_cast<int64_t>(cs_);
    if (n < 0 || static_cast<uint64_t>(n) > slots.ElementLength() || static_cast<uint64_t>(n) > hit.ByteLength() || outOff < 0 ||
        skip < 0 || skip >= cs || length < 0 || static_cast<uint64_t>(outOff + length) > out.ByteLength() || skip + length > n * cs) {
      Napi::RangeError::New(env, "gather: range out of bounds").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    uint8_t* dst = out.Data() + outOff;
    uint8_t* hp = hit.Data();
    const double* sp = slots.Data();
    int64_t misses = 0;
    for (int64_t k = 0; k < n; k++) {
      int64_t cStart = k * cs - skip;  // where chunk k starts, relative to the request
      int64_t from = cStart < 0 ? -cStart : 0;
      int64_t to = length - cStart < cs ? length - cStart : cs;
      double d = sp[k];
      if (!(d >= 0)) {
        hp[k] = 2;
        continue;
      }
      uint32_t f;
      Frame* fr = Cached(static_cast<int64_t>(d), &f);
      if (!fr) {
        hp[k] = 0;
        misses++;
        continue;
      }
      hp[k] = 1;
      if (to > from) std::memcpy(dst + cStart + from, FramePtr(f) + from, static_cast<size_t>(to - from));
      if (count) {
        hits_++;
        served_ += static_cast<uint64_t>(to > from ? to - from : 0);
        Use(*fr);
        NoteReaderOn(*fr, reader);
      }
    }
    return Napi::Number::New(env, static_cast<double>(misses));
  }

  // pin(slot, reader): frame number (view it through views()), or -1 on a miss. Counts a hit.
  // The frame's memory is not reused until unpin(frame), even if it is evicted or dropped.
  Napi::Value Pin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t slot;
    if (info.Length() < 2 || !ToSlot(info[0], &slot)) return ThrowType(env, "pin(slot, reader, count?)");
    uint32_t f;
    Frame* fr = Cached(slot, &f);
    if (!fr) return Napi::Number::New(env, -1);
    // count = false right after this caller's own load (already counted as a miss).
    if (info.Length() < 3 || info[2].ToBoolean()) {
      hits_++;
      served_ += cs_;
      Use(*fr);
      NoteReaderOn(*fr, info[1].As<Napi::Number>().Int32Value());
    }
    if (fr->pins++ == 0) pinnedFrames_++;
    return Napi::Number::New(env, f);
  }

  // unpin(frame): ends one pin; an evicted or dropped frame returns to the free list with its last pin.
  Napi::Value Unpin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsNumber()) return ThrowType(env, "unpin(frame)");
    int64_t f = info[0].As<Napi::Number>().Int64Value();
    if (f < 0 || f >= nframes_ || frames_[f].pins == 0) return env.Undefined();
    Frame& fr = frames_[f];
    if (--fr.pins == 0) {
      pinnedFrames_--;
      if (fr.state == kOrphan) {
        orphans_--;
        Release(static_cast<uint32_t>(f));
      }
    }
    return env.Undefined();
  }

  // pinMany(slots: Float64Array, n, frames: Int32Array, reader, count): number of misses.
  // frames[k] = the pinned frame of slots[k], or -1 (a miss, or slot < 0: a hole). All or
  // nothing: on any miss every pin taken here is dropped again (frames all -1 for stored slots).
  // Native and batched: a multi-chunk reply is sent as views of the arena (no copy, no reply
  // buffer per request), and one call per request instead of one per 4 KiB chunk (~1 us each).
  Napi::Value PinMany(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 5 || !info[0].IsTypedArray() || !info[2].IsTypedArray())
      return ThrowType(env, "pinMany(slots: Float64Array, n, frames: Int32Array, reader, count)");
    auto slots = info[0].As<Napi::Float64Array>();
    uint32_t n = info[1].As<Napi::Number>().Uint32Value();
    auto frames = info[2].As<Napi::Int32Array>();
    int32_t reader = info[3].As<Napi::Number>().Int32Value();
    bool count = info[4].ToBoolean();
    if (n > slots.ElementLength() || n > frames.ElementLength()) return ThrowType(env, "pinMany: n exceeds an array");
    uint32_t misses = 0;
    for (uint32_t k = 0; k < n; k++) {
      double d = slots[k];
      frames[k] = -1;
      if (d < 0) continue;
      uint32_t f;
      Frame* fr = Cached(static_cast<int64_t>(d), &f);
      if (!fr) {
        misses++;
        continue;
      }
      if (fr->pins++ == 0) pinnedFrames_++;
      frames[k] = static_cast<int32_t>(f);
    }
    if (misses > 0) {
      for (uint32_t k = 0; k < n; k++)
        if (frames[k] >= 0) {
          UnpinFrame(static_cast<uint32_t>(frames[k]));
          frames[k] = -1;
        }
      return Napi::Number::New(env, misses);
    }
    if (count)
      for (uint32_t k = 0; k < n; k++) {
        if (frames[k] < 0) continue;
        Frame& fr = frames_[frames[k]];
        hits_++;
        served_ += cs_;
        Use(fr);
        NoteReaderOn(fr, reader);
      }
    return Napi::Number::New(env, 0);
  }

  // unpinMany(frames: Int32Array, n): ends the pins pinMany took (entries < 0 are skipped).
  Napi::Value UnpinMany(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsTypedArray()) return ThrowType(env, "unpinMany(frames: Int32Array, n)");
    auto frames = info[0].As<Napi::Int32Array>();
    uint32_t n = std::min<uint32_t>(info[1].As<Napi::Number>().Uint32Value(), frames.ElementLength());
    for (uint32_t k = 0; k < n; k++)
      if (frames[k] >= 0 && static_cast<uint32_t>(frames[k]) < nframes_ && frames_[frames[k]].pins > 0) UnpinFrame(static_cast<uint32_t>(frames[k]));
    return env.Undefined();
  }

  void UnpinFrame(uint32_t f) {
    Frame& fr = frames_[f];
    if (--fr.pins == 0) {
      pinnedFrames_--;
      if (fr.state == kOrphan) {
        orphans_--;
        Release(f);
      }
    }
  }

  // insert(slot, src, reader = -1): boolean. Copies freshly written bytes in (write-through).
  // Native: the copy lands in the arena, so the written Buffer can be freed by V8 at once.
  Napi::Value Insert(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t slot;
    if (info.Length() < 2 || !ToSlot(info[0], &slot) || !info[1].IsTypedArray())
      return ThrowType(env, "insert(slot, src: Uint8Array, reader?)");
    auto src = info[1].As<Napi::Uint8Array>();
    if (src.ByteLength() != cs_) {
      Napi::RangeError::New(env, "insert: src must be exactly one chunk").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    Forget(slot);  // new bytes for this id: the old entry (or load) must never be served again
    uint32_t f = Acquire();
    if (f == kNil) return Napi::Boolean::New(env, false);
    std::memcpy(FramePtr(f), src.Data(), cs_);
    Frame& fr = frames_[f];
    fr.slot = slot;
    index_[slot] = f;
    Admit(f);
    if (info.Length() > 2 && info[2].IsNumber()) NoteReaderOn(fr, info[2].As<Napi::Number>().Int32Value());
    return Napi::Boolean::New(env, true);
  }

  // drop(slot): the chunk was freed or its id reused (invariant 1): never serve it again.
  Napi::Value Drop(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t slot;
    if (info.Length() < 1 || !ToSlot(info[0], &slot)) return ThrowType(env, "drop(slot)");
    ghost_.erase(slot);
    Forget(slot);
    return env.Undefined();
  }

  // has(slot): cached and servable (a load in flight is not).
  Napi::Value Has(const Napi::CallbackInfo& info) {
    int64_t slot;
    uint32_t f;
    return Napi::Boolean::New(info.Env(), ToSlot(info[0], &slot) && Cached(slot, &f) != nullptr);
  }

  // noteReader(slot, reader): records a distinct reader of a cached or loading entry.
  Napi::Value NoteReader(const Napi::CallbackInfo& info) {
    int64_t slot;
    if (info.Length() >= 2 && ToSlot(info[0], &slot) && info[1].IsNumber()) {
      auto it = index_.find(slot);
      if (it != index_.end()) NoteReaderOn(frames_[it->second], info[1].As<Napi::Number>().Int32Value());
    }
    return info.Env().Undefined();
  }

  // addCounters(hits, misses, coalesced): for loads done in TypeScript (a backend without a file).
  Napi::Value AddCounters(const Napi::CallbackInfo& info) {
    for (size_t i = 0; i < 3 && i < info.Length(); i++) {
      if (!info[i].IsNumber()) continue;
      int64_t n = info[i].As<Napi::Number>().Int64Value();
      if (n <= 0) continue;
      (i == 0 ? hits_ : i == 1 ? misses_ : coalesced_) += static_cast<uint64_t>(n);
    }
    return info.Env().Undefined();
  }

  Napi::Value Load(const Napi::CallbackInfo& info);

  // views(): Buffers over the whole arena (one per GiB), frame f at (f % framesPerView) * chunkSize
  // of views[f / framesPerView]. One external Buffer per segment, not per pin: a pin costs no
  // V8 allocation beyond a subarray, and the arena never shows up in arrayBuffers accounting.
  Napi::Value Views(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    size_t perView = kViewBytes / cs_;
    if (perView == 0) perView = 1;
    size_t nviews = nframes_ == 0 ? 0 : (nframes_ + perView - 1) / perView;
    auto arr = Napi::Array::New(env, nviews);
    for (size_t v = 0; v < nviews; v++) {
      size_t first = v * perView;
      size_t count = nframes_ - first < perView ? nframes_ - first : perView;
      // The finalizer holds the arena: a view outliving the cache object still points at mapped memory.
      auto* hold = new std::shared_ptr<Arena>(arena_);
      auto buf = Napi::Buffer<uint8_t>::New(
          env, FramePtr(static_cast<uint32_t>(first)), count * cs_,
          [](Napi::Env, uint8_t*, std::shared_ptr<Arena>* h) { delete h; }, hold);
      arr.Set(static_cast<uint32_t>(v), buf);
    }
    return arr;
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto o = Napi::Object::New(env);
    auto num = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
    num("capacityBytes", static_cast<double>(capacity_));
    num("arenaBytes", static_cast<double>(nframes_) * cs_);
    num("frames", nframes_);
    num("bytes", static_cast<double>(entries_) * cs_);
    num("entries", static_cast<double>(entries_));
    num("hits", static_cast<double>(hits_));
    num("misses", static_cast<double>(misses_));
    num("evictions", static_cast<double>(evictions_));
    num("coalesced", static_cast<double>(coalesced_));
    num("servedBytes", static_cast<double>(served_));
    num("pinned", static_cast<double>(pinnedFrames_));
    num("orphaned", static_cast<double>(orphans_));
    num("loading", static_cast<double>(loading_));
    num("readerRefs", static_cast<double>(readerRefs_));
    num("readahead", static_cast<double>(readahead_));
    num("storeReads", static_cast<double>(storeReads_));
    num("storeReadBytes", static_cast<double>(storeReadBytes_));
    num("ghosts", static_cast<double>(ghost_.size()));
    return o;
  }

  friend class LoadWorker;

  std::shared_ptr<Arena> arena_;
  size_t cs_ = 4096;
  uint64_t capacity_ = 0;
  uint32_t nframes_ = 0;
  std::vector<Frame> frames_;
  std::vector<uint32_t> free_;
  std::unordered_map<int64_t, uint32_t> index_;  // slot -> frame (cached or loading)
  List small_, main_;
  size_t smallTarget_ = 1;
  std::unordered_map<int64_t, uint64_t> ghost_;  // recently evicted ids -> stamp
  std::deque<std::pair<int64_t, uint64_t>> ghostQ_;
  uint64_t ghostStamp_ = 0;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0, coalesced_ = 0, served_ = 0, readahead_ = 0;
  uint64_t storeReads_ = 0, storeReadBytes_ = 0;
  uint64_t entries_ = 0, pinnedFrames_ = 0, orphans_ = 0, loading_ = 0, readerRefs_ = 0;
};

// Reads runs of slots into reserved frames on the libuv pool. Touches nothing but the fd and
// those frames; the cache's state changes back on the JS thread in OnOK/OnError.
class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, ChunkCache* cache, Napi::Object self, int fd, bool dontneed, std::vector<Run> runs,
             std::vector<iovec> iov, std::vector<uint32_t> frames)
      : Napi::AsyncWorker(env, "shoal:cache-load"),
        deferred_(Napi::Promise::Deferred::New(env)),
        self_(Napi::Persistent(self)),  // keeps the cache and its arena alive while a pool thread writes
        cache_(cache), fd_(fd), dontneed_(dontneed), runs_(std::move(runs)), iov_(std::move(iov)),
        frames_(std::move(frames)) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    for (const Run& r : runs_) {
      iovec* v = iov_.data() + r.first;
      size_t n = r.count;
      off_t off = r.offset;
      size_t total = 0;
      for (size_t i = 0; i < n; i++) total += v[i].iov_len;
      while (n > 0) {
        ssize_t got = preadv(fd_, v, static_cast<int>(n), off);
        if (got < 0) {
          if (errno == EINTR) continue;
          err_ = errno;
          return;
        }
        reads_++;
        bytes_ += static_cast<uint64_t>(got);
        // A slot past the end of the sparse file reads as zeroes (as in LocalChunkStore).
        if (got == 0 || (got % 512) != 0) {
          size_t skip = static_cast<size_t>(got);
          for (size_t i = 0; i < n; i++) {
            size_t s = skip < v[i].iov_len ? skip : v[i].iov_len;
            std::memset(static_cast<uint8_t*>(v[i].iov_base) + s, 0, v[i].iov_len - s);
            skip -= s;
          }
          break;
        }
        off += got;
        size_t left = static_cast<size_t>(got);
        while (n > 0 && left >= v->iov_len) {
          left -= v->iov_len;
          v++;
          n--;
        }
        if (n > 0 && left > 0) {
          v->iov_base = static_cast<uint8_t*>(v->iov_base) + left;
          v->iov_len -= left;
        }
      }
      // Buffered fallback (no O_DIRECT on this filesystem): the arena holds the copy, drop the kernel's.
      if (dontneed_) posix_fadvise(fd_, r.offset, static_cast<off_t>(total), POSIX_FADV_DONTNEED);
    }
  }

  void OnOK() override {
    if (err_ != 0) {
      cache_->Complete(frames_, false, reads_, bytes_);
      deferred_.Reject(ErrnoError(Env(), err_, "reading the chunk file into the cache").Value());
      return;
    }
    cache_->Complete(frames_, true, reads_, bytes_);
    deferred_.Resolve(Env().Undefined());
  }

  void OnError(const Napi::Error& e) override {
    cache_->Complete(frames_, false, reads_, bytes_);
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference self_;
  ChunkCache* cache_;
  int fd_;
  bool dontneed_;
  std::vector<Run> runs_;
  std::vector<iovec> iov_;
  std::vector<uint32_t> frames_;
  int err_ = 0;
  uint64_t reads_ = 0, bytes_ = 0;
};

void ChunkCache::Complete(const std::vector<uint32_t>& frames, bool ok, uint64_t reads, uint64_t bytes) {
  storeReads_ += reads;
  storeReadBytes_ += bytes;
  for (uint32_t f : frames) {
    loading_--;
    Frame& fr = frames_[f];
    if (fr.state == kLoading && ok) {
      Admit(f);
    } else {
      // Dropped meanwhile (never stale: these bytes may be the freed chunk's), or the read failed.
      if (fr.state == kLoading) Unindex(f);
      Release(f);
    }
  }
}

// load(fd, slots: number[], reader, readahead: boolean, outcome: Uint8Array): Promise<void> | undefined
// For each slot, outcome[i] = 0 cached (a hit), 1 already loading (coalesced: await that load),
// 2 loading now, 3 not cacheable now (every frame pinned or loading: read it elsewhere).
// Runs of consecutive slots are read with one preadv each, on the thread pool, into the arena
// (O_DIRECT when the fd has it). Resolves undefined at once when nothing is to be read.
Napi::Value ChunkCache::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 5 || !info[0].IsNumber() || !info[1].IsArray() || !info[4].IsTypedArray())
    return ThrowType(env, "load(fd, slots: number[], reader, readahead, outcome: Uint8Array)");
  int fd = info[0].As<Napi::Number>().Int32Value();
  auto slots = info[1].As<Napi::Array>();
  int32_t reader = info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : -1;
  bool ahead = info[3].ToBoolean();
  auto outcome = info[4].As<Napi::Uint8Array>();
  uint32_t n = slots.Length();
  if (outcome.ByteLength() < n) {
    Napi::RangeError::New(env, "load: outcome is shorter than slots").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  uint8_t* out = outcome.Data();
  // Validate every id before touching any state.
  std::vector<int64_t> ids(n);
  for (uint32_t i = 0; i < n; i++) {
    if (!ToSlot(slots.Get(i), &ids[i]) || ids[i] > INT64_MAX / static_cast<int64_t>(cs_))
      return ThrowType(env, "load: slots must be non-negative integers");
  }
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) {
    ErrnoError(env, errno, "load: bad chunk file descriptor").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<Run> runs;
  std::vector<iovec> iov;
  std::vector<uint32_t> reserved;
  int64_t prev = -2;
  for (uint32_t i = 0; i < n; i++) {
    int64_t s = ids[i];
    auto it = index_.find(s);
    if (it != index_.end()) {
      Frame& fr = frames_[it->second];
      if (fr.state == kCached) {
        out[i] = 0;
        if (!ahead) {
          hits_++;
          served_ += cs_;
          Use(fr);
        }
      } else {
        out[i] = 1;
        if (!ahead) coalesced_++;
      }
      if (!ahead) NoteReaderOn(fr, reader);
      continue;
    }
    if (ahead) readahead_++;
    else misses_++;
    uint32_t f = Acquire();
    if (f == kNil) {
      out[i] = 3;
      continue;
    }
    out[i] = 2;
    Frame& fr = frames_[f];
    fr.slot = s;
    fr.state = kLoading;  // indexed (so it coalesces) but hidden from lookups until the read lands
    fr.ahead = ahead;
    index_[s] = f;
    if (!ahead) NoteReaderOn(fr, reader);
    loading_++;
    reserved.push_back(f);
    if (s == prev + 1 && !runs.empty() && runs.back().count < kMaxIov) {
      runs.back().count++;
    } else {
      runs.push_back(Run{static_cast<off_t>(s * static_cast<int64_t>(cs_)), iov.size(), 1});
    }
    iov.push_back(iovec{FramePtr(f), cs_});
    prev = s;
  }
  if (reserved.empty()) return env.Undefined();
  auto* w = new LoadWorker(env, this, Value(), fd, (fl & O_DIRECT) == 0, std::move(runs), std::move(iov),
                           std::move(reserved));
  auto p = w->Promise();
  w->Queue();
  return p;
}

// openDirect(path, writable = false): fd. O_DIRECT so reads into the arena bypass the page cache
// (a chunk is held once). Throws an Error with code EINVAL where the filesystem refuses (tmpfs).
Napi::Value OpenDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) return ThrowType(env, "openDirect(path: string, writable?: boolean)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  bool writable = info.Length() > 1 && info[1].ToBoolean();
  int fd;
  do fd = open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    ErrnoError(env, errno, "open O_DIRECT " + path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// fadviseDontNeed(fd, offset, length): drops clean page-cache pages of a range (after a buffered
// write is synced), since the cache arena already holds the bytes. Node's fs has no fadvise.
Napi::Value FadviseDontNeed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber())
    return ThrowType(env, "fadviseDontNeed(fd, offset, length)");
  int rc = posix_fadvise(info[0].As<Napi::Number>().Int32Value(), static_cast<off_t>(info[1].As<Napi::Number>().Int64Value()),
                         static_cast<off_t>(info[2].As<Napi::Number>().Int64Value()), POSIX_FADV_DONTNEED);
  if (rc != 0) ErrnoError(env, rc, "posix_fadvise").ThrowAsJavaScriptException();
  return env.Undefined();
}

}  // namespace

void InitChunkCache(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeChunkCache", ChunkCache::Define(env));
  exports.Set("openDirect", Napi::Function::New(env, OpenDirect));
  exports.Set("fadviseDontNeed", Napi::Function::New(env, FadviseDontNeed));
}

}  // namespace shoal
