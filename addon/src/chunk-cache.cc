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
#include "args.h"
#include "errno-error.h"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <thread>
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

// Unmapped when the cache object and every Buffer view of it are gone.
struct Arena {
  uint8_t* base = nullptr;
  size_t size = 0;
  // The populator (StartPopulator): bytes faulted in from the start so far; stop ends it early;
  // paused holds it between steps (prefault(false): the daemon is serving work that does not fill the cache).
  std::atomic<uint64_t> prefaulted{0};
  std::atomic<bool> stop{false};
  std::atomic<bool> paused{false};
  // Set as the populator ends, however it ends (the whole arena in, stop, or ENOMEM part way): what
  // the daemon's steering timer waits for, since prefaulted may never reach the arena's size.
  std::atomic<bool> populatorDone{false};
  ~Arena() {
    if (base) munmap(base, size);
  }
};

// --cache-prefault on: on a VM the first write to a page is costly (here 1.5-1.8 s per GiB even with
// huge pages), and a cold read from S3 paid ~2 s of CPU per GiB for it on its critical path. So a
// thread of idle priority (SCHED_IDLE: it runs only when a CPU has nothing else to do) faults the whole
// arena in with MADV_POPULATE_WRITE, from the start, where frames are handed out first. That call never
// changes a page's bytes, so frames in use are safe; a frame it has not reached yet is faulted by its
// first write, as without it. RSS becomes the full cache size. Idle priority is not enough here: while
// it faults, writes ran 30% slower (1 GiB, local store: 3.4-3.6 s against 2.6-2.8 s; the host's side of
// a fault holds the vCPU whatever the guest's priorities), so the daemon pauses it while it serves
// requests that do not fill the cache (ChunkCache.prefault). (Faulting only a bounded way ahead of the
// frames in use was tried as a default, and lost: the populator's faults, concurrent with the loads',
// cost more CPU than they saved, 7.5-8.3 s against 7.1-7.7 s for a cold 1 GiB read.)
constexpr size_t kPopulateStep = 4u << 20;

// false where the kernel lacks MADV_POPULATE_WRITE (before Linux 5.14): the arena stays lazy.
bool StartPopulator(const std::shared_ptr<Arena>& arena) {
#ifdef MADV_POPULATE_WRITE
  if (arena->size == 0) return false;
  if (madvise(arena->base, 0, MADV_POPULATE_WRITE) != 0) return false;
  std::thread([a = arena] {
    sched_param sp{};
    if (pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp) != 0) setpriority(PRIO_PROCESS, 0, 19);
    for (size_t done = 0; done < a->size && !a->stop.load(std::memory_order_relaxed);) {
      if (a->paused.load(std::memory_order_relaxed)) {
        usleep(10000);
        continue;
      }
      size_t len = a->size - done < kPopulateStep ? a->size - done : kPopulateStep;
      if (madvise(a->base + done, len, MADV_POPULATE_WRITE) != 0) break;  // ENOMEM: what the host cannot give stays lazy
      done += len;
      a->prefaulted.store(done, std::memory_order_relaxed);
    }
    a->populatorDone.store(true, std::memory_order_release);
  }).detach();
  return true;
#else
  (void)arena;
  return false;
#endif
}

constexpr size_t kHugePage = 2u << 20;

// Maps the arena on a 2 MiB boundary and asks for transparent huge pages. Why: the first write
// to an anonymous page is the arena's dominant fill cost on VMs (measured here: 3.9 s to touch
// 1 GiB of 4 KiB pages, 1.5-1.8 s with 2 MiB pages; a cold read from S3 fills the arena at the
// wire's rate), and a multi-GiB arena of small frames otherwise spends its TLB on 4 KiB pages.
// Memory is still committed only as it is touched, 2 MiB at a time.
uint8_t* MapArena(size_t size) {
  size_t span = size + kHugePage;
  void* m = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return nullptr;
  uintptr_t raw = reinterpret_cast<uintptr_t>(m);
  uintptr_t base = (raw + kHugePage - 1) & ~static_cast<uintptr_t>(kHugePage - 1);
  if (base > raw) munmap(m, base - raw);  // trim the unaligned head and tail: Arena unmaps base..size
  uintptr_t end = base + size, mapEnd = raw + span;
  if (mapEnd > end) munmap(reinterpret_cast<void*>(end), mapEnd - end);
  uint8_t* p = reinterpret_cast<uint8_t*>(base);
#ifdef MADV_HUGEPAGE
  madvise(p, size, MADV_HUGEPAGE);  // advisory: where THP is off or "never", 4 KiB pages serve as before
#endif
#ifdef MADV_DONTDUMP
  madvise(p, size, MADV_DONTDUMP);  // a core dump need not carry gigabytes of cached volume data
#endif
  return p;
}

struct Frame {
  int64_t slot = -1;
  uint32_t prev = kNil, next = kNil;
  uint32_t pins = 0;
  State state = kFree;
  Queue queue = kNone;
  uint8_t freq = 0;  // 0..3, S3-FIFO use counter
  bool ahead = false;  // loaded by readahead and not read yet: its first read is not a re-use
  uint32_t load = 0;   // while loading: the id of the load filling it (reserve()'s loadId)
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

class ReadWorker;

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
                        InstanceMethod<&ChunkCache::Reserve>("reserve"),
                        InstanceMethod<&ChunkCache::Complete>("complete"),
                        InstanceMethod<&ChunkCache::ReadFile>("readFile"),
                        InstanceMethod<&ChunkCache::Views>("views"),
                        InstanceMethod<&ChunkCache::Prefault>("prefault"),
                        InstanceMethod<&ChunkCache::Stats>("stats")});
  }

  // new NativeChunkCache(capacityBytes, chunkSize): floor(capacity / chunkSize) frames in one mmap.
  explicit ChunkCache(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ChunkCache>(info) {
    Napi::Env env = info.Env();
    int64_t cap, cs;
    if (info.Length() < 2 || !ToInt(info[0], 0, kMaxSafe, &cap) || !ToInt(info[1], 0, kMaxSafe, &cs)) {
      ThrowType(env, "new NativeChunkCache(capacityBytes: number, chunkSize: number)");
      return;
    }
    // O_DIRECT needs page-aligned, page-multiple buffers: chunk sizes are powers of two >= 4 KiB.
    if (cs < 4096 || cs > (1 << 30) || (cs & (cs - 1)) != 0) {
      Napi::RangeError::New(env, "chunkSize must be a power of two from 4096 to 2^30").ThrowAsJavaScriptException();
      return;
    }
    cs_ = static_cast<size_t>(cs);
    capacity_ = static_cast<uint64_t>(cap);
    uint64_t n = capacity_ / cs_;
    if (n >= kNil) n = kNil - 1;
    arena_ = std::make_shared<Arena>();
    if (n > 0) {
      size_t size = static_cast<size_t>(n) * cs_;
      uint8_t* p = MapArena(size);
      if (p == nullptr) {
        ErrnoError(env, errno, "cannot map the chunk cache arena").ThrowAsJavaScriptException();
        return;
      }
      arena_->base = p;
      arena_->size = size;
    }
    nframes_ = static_cast<uint32_t>(n);
    frames_.resize(nframes_);
    free_.reserve(nframes_);
    for (uint32_t i = nframes_; i-- > 0;) free_.push_back(i);
    index_.reserve(nframes_);
    smallTarget_ = nframes_ / 10 > 0 ? nframes_ / 10 : 1;
  }

  ~ChunkCache() {
    if (arena_) arena_->stop = true;  // null if the constructor threw on its arguments
  }

  uint8_t* FramePtr(uint32_t f) const { return arena_->base + static_cast<size_t>(f) * cs_; }

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
  // Every method checks its arguments first (args.h): a wrong array type, a NaN or an index out
  // of range is a TypeError/RangeError before any state changes.

  // lookupCopy(slot, dst: Uint8Array, dstOff, from, len, reader, count = true): boolean. Copies on a hit.
  // Native so that the hit path is one call: index lookup, S3-FIFO bump, memcpy out of the arena.
  Napi::Value LookupCopy(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t slot, dstOff, from, len;
    int32_t reader;
    bool count;
    if (info.Length() < 6 || !ToSlot(info[0], &slot) || !IsTyped(info[1], napi_uint8_array) || !ToInt(info[2], 0, kMaxSafe, &dstOff) ||
        !ToInt(info[3], 0, kMaxSafe, &from) || !ToInt(info[4], 0, kMaxSafe, &len) || !ToReader(info[5], &reader) || !ToBoolArg(info, 6, true, &count))
      return ThrowType(env, "lookupCopy(slot, dst: Uint8Array, dstOff, from, len, reader, count?: boolean)");
    auto dst = info[1].As<Napi::Uint8Array>();
    if (static_cast<uint64_t>(from + len) > cs_ || static_cast<uint64_t>(dstOff + len) > dst.ByteLength())
      return ThrowRange(env, "lookupCopy: range out of bounds");
    uint32_t f;
    Frame* fr = Cached(slot, &f);
    if (!fr) return Napi::Boolean::New(env, false);
    std::memcpy(dst.Data() + dstOff, FramePtr(f) + from, static_cast<size_t>(len));
    if (count) {
      hits_++;
      served_ += static_cast<uint64_t>(len);
      Use(*fr);
      NoteReaderOn(*fr, reader);
    }
    return Napi::Boolean::New(env, true);
  }

  // gather(slots: Float64Array, n, out: Uint8Array, outOff, skip, length, reader, hit: Uint8Array, count = true): misses.
  // One request over n consecutive chunks: chunk k covers request bytes [k*cs - skip, (k+1)*cs - skip)
  // within [0, length), written at out[outOff + ...]. hit[k] = 1 copied, 0 miss, 2 slot < 0 (a hole:
  // untouched). Why native: a JS->C++ call costs ~1 us on the build VM (perf: mostly the call
  // itself), so a 128 KiB read is one call, not 32.
  Napi::Value Gather(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t n, outOff, skip, length;
    int32_t reader;
    bool count;
    if (info.Length() < 8 || !IsTyped(info[0], napi_float64_array) || !ToInt(info[1], 0, kMaxSafe, &n) || !IsTyped(info[2], napi_uint8_array) ||
        !ToInt(info[3], 0, kMaxSafe, &outOff) || !ToInt(info[4], 0, kMaxSafe, &skip) || !ToInt(info[5], 0, kMaxSafe, &length) ||
        !ToReader(info[6], &reader) || !IsTyped(info[7], napi_uint8_array) || !ToBoolArg(info, 8, true, &count))
      return ThrowType(env, "gather(slots: Float64Array, n, out: Uint8Array, outOff, skip, length, reader, hit: Uint8Array, count?: boolean)");
    auto slots = info[0].As<Napi::Float64Array>();
    auto out = info[2].As<Napi::Uint8Array>();
    auto hit = info[7].As<Napi::Uint8Array>();
    int64_t cs = static_cast<int64_t>(cs_);
    if (static_cast<uint64_t>(n) > slots.ElementLength() || static_cast<uint64_t>(n) > hit.ByteLength() || skip >= cs ||
        static_cast<uint64_t>(outOff + length) > out.ByteLength() || skip + length > n * cs)
      return ThrowRange(env, "gather: range out of bounds");
    uint8_t* dst = out.Data() + outOff;
    uint8_t* hp = hit.Data();
    const double* sp = slots.Data();
    int64_t misses = 0;
    for (size_t k = 0; k < static_cast<size_t>(n); k++) {
      int64_t cStart = static_cast<int64_t>(k) * cs - skip;  // where chunk k starts, relative to the request
      int64_t from = cStart < 0 ? -cStart : 0;
      int64_t to = length - cStart < cs ? length - cStart : cs;
      double d = sp[k];
      if (!(d >= 0) || d > kMaxSafe) {
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

  // pin(slot, reader, count = true): frame number (view it through views()), or -1 on a miss.
  // The frame's memory is not reused until unpin(frame), even if it is evicted or dropped.
  // count = false right after this caller's own load (already counted as a miss).
  Napi::Value Pin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t slot;
    int32_t reader;
    bool count;
    if (info.Length() < 2 || !ToSlot(info[0], &slot) || !ToReader(info[1], &reader) || !ToBoolArg(info, 2, true, &count))
      return ThrowType(env, "pin(slot, reader, count?: boolean)");
    uint32_t f;
    Frame* fr = Cached(slot, &f);
    if (!fr) return Napi::Number::New(env, -1);
    if (count) {
      hits_++;
      served_ += cs_;
      Use(*fr);
      NoteReaderOn(*fr, reader);
    }
    if (fr->pins++ == 0) pinnedFrames_++;
    return Napi::Number::New(env, f);
  }

  // unpin(frame): ends one pin; an evicted or dropped frame returns to the free list with its last pin.
  Napi::Value Unpin(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t f;
    if (info.Length() < 1 || !ToInt(info[0], 0, kMaxSafe, &f)) return ThrowType(env, "unpin(frame)");
    if (f >= nframes_ || frames_[f].pins == 0) return ThrowRange(env, "unpin: the frame is not pinned");
    UnpinFrame(static_cast<uint32_t>(f));
    return env.Undefined();
  }

  // pinMany(slots: Float64Array, n, frames: Int32Array, reader, count): number of misses.
  // frames[k] = the pinned frame of slots[k], or -1 (a miss, or slot < 0: a hole). All or
  // nothing: on any miss every pin taken here is dropped again (frames all -1 for stored slots).
  // Native and batched: a multi-chunk reply is sent as views of the arena (no copy, no reply
  // buffer per request), and one call per request instead of one per 4 KiB chunk (~1 us each).
  Napi::Value PinMany(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t n;
    int32_t reader;
    bool count;
    if (info.Length() < 5 || !IsTyped(info[0], napi_float64_array) || !ToInt(info[1], 0, 4294967295.0, &n) ||
        !IsTyped(info[2], napi_int32_array) || !ToReader(info[3], &reader) || !ToBoolArg(info, 4, true, &count))
      return ThrowType(env, "pinMany(slots: Float64Array, n, frames: Int32Array, reader, count: boolean)");
    auto slots = info[0].As<Napi::Float64Array>();
    auto frames = info[2].As<Napi::Int32Array>();
    if (static_cast<uint64_t>(n) > slots.ElementLength() || static_cast<uint64_t>(n) > frames.ElementLength())
      return ThrowRange(env, "pinMany: n exceeds an array");
    uint32_t misses = 0;
    for (size_t k = 0; k < static_cast<size_t>(n); k++) {
      double d = slots[k];
      frames[k] = -1;
      if (!(d >= 0) || d > kMaxSafe) continue;
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
      for (size_t k = 0; k < static_cast<size_t>(n); k++)
        if (frames[k] >= 0) {
          UnpinFrame(static_cast<uint32_t>(frames[k]));
          frames[k] = -1;
        }
      return Napi::Number::New(env, misses);
    }
    if (count)
      for (size_t k = 0; k < static_cast<size_t>(n); k++) {
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
    int64_t n;
    if (info.Length() < 2 || !IsTyped(info[0], napi_int32_array) || !ToInt(info[1], 0, 4294967295.0, &n))
      return ThrowType(env, "unpinMany(frames: Int32Array, n)");
    auto frames = info[0].As<Napi::Int32Array>();
    if (static_cast<uint64_t>(n) > frames.ElementLength()) return ThrowRange(env, "unpinMany: n exceeds the array");
    for (size_t k = 0; k < static_cast<size_t>(n); k++)
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

  // insert(slot, src: Uint8Array, reader = -1): boolean. Copies freshly written bytes in (write-through).
  // Native: the copy lands in the arena, so the written Buffer can be freed by V8 at once.
  Napi::Value Insert(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t slot;
    int32_t reader = -1;
    if (info.Length() < 2 || !ToSlot(info[0], &slot) || !IsTyped(info[1], napi_uint8_array) ||
        (info.Length() > 2 && !info[2].IsUndefined() && !ToReader(info[2], &reader)))
      return ThrowType(env, "insert(slot, src: Uint8Array, reader?)");
    auto src = info[1].As<Napi::Uint8Array>();
    if (src.ByteLength() != cs_) return ThrowRange(env, "insert: src must be exactly one chunk");
    Forget(slot);  // new bytes for this id: the old entry (or load) must never be served again
    uint32_t f = Acquire();
    if (f == kNil) return Napi::Boolean::New(env, false);
    std::memcpy(FramePtr(f), src.Data(), cs_);
    Frame& fr = frames_[f];
    fr.slot = slot;
    index_[slot] = f;
    Admit(f);
    NoteReaderOn(fr, reader);
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
    Napi::Env env = info.Env();
    int64_t slot;
    if (info.Length() < 1 || !ToSlot(info[0], &slot)) return ThrowType(env, "has(slot)");
    uint32_t f;
    return Napi::Boolean::New(env, Cached(slot, &f) != nullptr);
  }

  // reserve(slots: Float64Array, n, reader, readahead: boolean, outcome: Uint8Array, frames: Uint32Array,
  //         loadId, loads: Uint32Array): reserved.
  // The first half of the cache's one miss path (server/cache/chunk-cache.ts): for each slot,
  // outcome[i] = 0 cached (a hit), 1 already loading (coalesced: await that load, whose id is
  // loads[i]), 2 reserved now for load `loadId` (a frame is set aside, indexed so later misses
  // coalesce, hidden from lookups), 3 not cacheable now (every frame pinned or loading). The frames
  // reserved are written to frames[0..reserved), in slot order; the caller has the store fill them,
  // then calls complete(). (The load's id lives in its frames, so the caller keeps one entry per load
  // to find it by, not one per chunk: a cold read of 1 GiB set and deleted 262,144 map entries.)
  Napi::Value Reserve(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t n, loadId;
    int32_t reader;
    bool ahead;
    if (info.Length() < 8 || !IsTyped(info[0], napi_float64_array) || !ToInt(info[1], 0, 4294967295.0, &n) || !ToReader(info[2], &reader) ||
        !ToBoolArg(info, 3, false, &ahead) || !IsTyped(info[4], napi_uint8_array) || !IsTyped(info[5], napi_uint32_array) ||
        !ToInt(info[6], 1, 4294967295.0, &loadId) || !IsTyped(info[7], napi_uint32_array))
      return ThrowType(env, "reserve(slots: Float64Array, n, reader, readahead: boolean, outcome: Uint8Array, frames: Uint32Array, loadId, loads: Uint32Array)");
    auto slots = info[0].As<Napi::Float64Array>();
    auto outcome = info[4].As<Napi::Uint8Array>();
    auto frames = info[5].As<Napi::Uint32Array>();
    auto loads = info[7].As<Napi::Uint32Array>();
    if (static_cast<uint64_t>(n) > slots.ElementLength() || static_cast<uint64_t>(n) > outcome.ByteLength() ||
        static_cast<uint64_t>(n) > frames.ElementLength() || static_cast<uint64_t>(n) > loads.ElementLength())
      return ThrowRange(env, "reserve: n exceeds an array");
    // Every id is checked before any state changes.
    for (size_t i = 0; i < static_cast<size_t>(n); i++) {
      double d = slots[i];
      if (!(d >= 0) || d > kMaxSafe || std::floor(d) != d) return ThrowType(env, "reserve: slots must be non-negative integers");
    }
    uint8_t* out = outcome.Data();
    uint32_t reserved = 0;
    for (size_t i = 0; i < static_cast<size_t>(n); i++) {
      int64_t s = static_cast<int64_t>(slots[i]);
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
          loads[i] = fr.load;
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
      fr.state = kLoading;  // indexed (so it coalesces) but hidden from lookups until complete()
      fr.ahead = ahead;
      fr.load = static_cast<uint32_t>(loadId);
      index_[s] = f;
      if (!ahead) NoteReaderOn(fr, reader);
      loading_++;
      frames[reserved++] = f;
    }
    return Napi::Number::New(env, reserved);
  }

  // complete(frames: Uint32Array, n, ok: boolean): the store has filled (ok) or failed to fill
  // frames reserved by reserve(). Filled frames enter the cache unless drop() cancelled them
  // meanwhile (never stale: the bytes may be a freed chunk's); the rest go back to the free list.
  Napi::Value Complete(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t n;
    bool ok;
    if (info.Length() < 3 || !IsTyped(info[0], napi_uint32_array) || !ToInt(info[1], 0, 4294967295.0, &n) || !info[2].IsBoolean())
      return ThrowType(env, "complete(frames: Uint32Array, n, ok: boolean)");
    ok = info[2].As<Napi::Boolean>().Value();
    auto frames = info[0].As<Napi::Uint32Array>();
    if (static_cast<uint64_t>(n) > frames.ElementLength()) return ThrowRange(env, "complete: n exceeds the array");
    for (size_t k = 0; k < static_cast<size_t>(n); k++)
      if (!Reserved(frames[k])) return ThrowRange(env, "complete: a frame is not reserved for a load");
    for (size_t k = 0; k < static_cast<size_t>(n); k++) {
      uint32_t f = frames[k];
      loading_--;
      Frame& fr = frames_[f];
      if (fr.state == kLoading && ok) {
        Admit(f);
      } else {
        if (fr.state == kLoading) Unindex(f);
        Release(f);
      }
    }
    return env.Undefined();
  }

  bool Reserved(uint32_t f) const { return f < nframes_ && (frames_[f].state == kLoading || frames_[f].state == kCancelled); }

  Napi::Value ReadFile(const Napi::CallbackInfo& info);

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

  // prefault(run = true): faults the whole arena in, in the background (StartPopulator, once), or holds
  // the populator (false) until the next prefault(true). True if a populator was started (now or
  // before): false where the kernel cannot, and for a hold with none to hold.
  Napi::Value Prefault(const Napi::CallbackInfo& info) {
    const bool run = info.Length() == 0 || info[0].ToBoolean().Value();
    arena_->paused.store(!run, std::memory_order_relaxed);
    if (!populating_ && run) populating_ = StartPopulator(arena_);
    return Napi::Boolean::New(info.Env(), populating_);
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    auto o = Napi::Object::New(env);
    auto num = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
    num("capacityBytes", static_cast<double>(capacity_));
    num("arenaBytes", static_cast<double>(nframes_) * cs_);
    num("prefaultedBytes", static_cast<double>(arena_->prefaulted.load(std::memory_order_relaxed)));
    o.Set("prefaulting", Napi::Boolean::New(env, populating_ && !arena_->populatorDone.load(std::memory_order_acquire)));
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
    num("ghosts", static_cast<double>(ghost_.size()));
    return o;
  }

  friend class ReadWorker;

  std::shared_ptr<Arena> arena_;
  size_t cs_ = 4096;
  uint64_t capacity_ = 0;
  uint32_t nframes_ = 0;
  std::vector<Frame> frames_;
  std::vector<uint32_t> free_;
  std::unordered_map<int64_t, uint32_t> index_;  // slot -> frame (cached or loading)
  List small_, main_;
  size_t smallTarget_ = 1;
  bool populating_ = false;  // prefault() started the arena's populator
  std::unordered_map<int64_t, uint64_t> ghost_;  // recently evicted ids -> stamp
  std::deque<std::pair<int64_t, uint64_t>> ghostQ_;
  uint64_t ghostStamp_ = 0;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0, coalesced_ = 0, served_ = 0, readahead_ = 0;
  uint64_t entries_ = 0, pinnedFrames_ = 0, orphans_ = 0, loading_ = 0, readerRefs_ = 0;
};

// Reads file ranges into reserved frames on the libuv pool, for a store that keeps chunks in a
// local file (server/store/local-chunk-store.ts decides the offsets; the cache knows no layout).
// Touches nothing but the fd and those frames: reserved frames stay hidden from lookups and are
// not reused until complete(), which the caller runs after this settles.
class ReadWorker : public Napi::AsyncWorker {
 public:
  ReadWorker(Napi::Env env, Napi::Object self, int fd, bool dontneed, std::vector<Run> runs, std::vector<iovec> iov)
      : Napi::AsyncWorker(env, "shoal:cache-read"),
        deferred_(Napi::Promise::Deferred::New(env)),
        self_(Napi::Persistent(self)),  // keeps the cache and its arena alive while a pool thread writes
        fd_(fd), dontneed_(dontneed), runs_(std::move(runs)), iov_(std::move(iov)) {}

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
        // Past the end of a sparse file (a slot never synced before a crash) reads as zeroes.
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
      deferred_.Reject(ErrnoError(Env(), err_, "reading chunks into the cache").Value());
      return;
    }
    deferred_.Resolve(Napi::Number::New(Env(), static_cast<double>(reads_)));
  }

  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  Napi::ObjectReference self_;
  int fd_;
  bool dontneed_;
  std::vector<Run> runs_;
  std::vector<iovec> iov_;
  int err_ = 0;
  uint64_t reads_ = 0;
};

// readFile(fd, frames: Uint32Array, offsets: Float64Array, n): Promise<number of preadv calls>.
// Fills frames[k] (reserved by reserve()) from byte offset offsets[k] of fd, on the thread pool;
// runs of back-to-back offsets are one preadv each (O_DIRECT when the fd has it: frames are
// page-aligned, so a chunk is held once, not also in the page cache). Does not complete the frames.
Napi::Value ChunkCache::ReadFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd, n;
  if (info.Length() < 4 || !ToInt(info[0], 0, 2147483647.0, &fd) || !IsTyped(info[1], napi_uint32_array) ||
      !IsTyped(info[2], napi_float64_array) || !ToInt(info[3], 0, 4294967295.0, &n))
    return ThrowType(env, "readFile(fd, frames: Uint32Array, offsets: Float64Array, n)");
  auto frames = info[1].As<Napi::Uint32Array>();
  auto offsets = info[2].As<Napi::Float64Array>();
  if (static_cast<uint64_t>(n) > frames.ElementLength() || static_cast<uint64_t>(n) > offsets.ElementLength())
    return ThrowRange(env, "readFile: n exceeds an array");
  for (size_t k = 0; k < static_cast<size_t>(n); k++) {
    double o = offsets[k];
    // Only frames set aside for a load may be written: a cached or pinned frame is being served.
    if (!Reserved(frames[k])) return ThrowRange(env, "readFile: a frame is not reserved for a load");
    if (!(o >= 0) || o > kMaxSafe || std::fmod(o, static_cast<double>(cs_)) != 0)
      return ThrowRange(env, "readFile: offsets must be non-negative multiples of the chunk size");
  }
  int fl = fcntl(static_cast<int>(fd), F_GETFL);
  if (fl < 0) {
    ErrnoError(env, errno, "readFile: bad file descriptor").ThrowAsJavaScriptException();
    return env.Undefined();
  }
  std::vector<Run> runs;
  std::vector<iovec> iov;
  iov.reserve(static_cast<size_t>(n));
  for (size_t k = 0; k < static_cast<size_t>(n); k++) {
    off_t off = static_cast<off_t>(offsets[k]);
    if (!runs.empty() && runs.back().count < kMaxIov && off == runs.back().offset + static_cast<off_t>(runs.back().count * cs_)) {
      runs.back().count++;
    } else {
      runs.push_back(Run{off, iov.size(), 1});
    }
    iov.push_back(iovec{FramePtr(frames[k]), cs_});
  }
  if (runs.empty()) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(Napi::Number::New(env, 0));
    return d.Promise();
  }
  auto* w = new ReadWorker(env, Value(), static_cast<int>(fd), (fl & O_DIRECT) == 0, std::move(runs), std::move(iov));
  auto p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void InitChunkCache(Napi::Env env, Napi::Object exports) {
  exports.Set("NativeChunkCache", ChunkCache::Define(env));
}

}  // namespace shoal
