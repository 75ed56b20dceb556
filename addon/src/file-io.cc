// File calls Node's fs does not offer: O_DIRECT, fadvise and many-run writes for the local chunk store (server/store/local-chunk-store.ts), flock for the data directory's lock (server/data-dir-lock.ts),
// and page-aligned buffers for O_DIRECT writes (the S3 store's fetch buffers, server/store/s3/fetch-buffers.ts).
#include "file-io.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "args.h"
#include "errno-error.h"

namespace shoal {
namespace {

// openDirect(path, writable = false): fd. O_DIRECT so reads into the cache arena bypass the page
// cache (a chunk is held once). Throws an Error with code EINVAL where the filesystem refuses (tmpfs).
Napi::Value OpenDirect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool writable;
  if (info.Length() < 1 || !info[0].IsString() || !ToBoolArg(info, 1, false, &writable))
    return ThrowType(env, "openDirect(path: string, writable?: boolean)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd;
  do fd = open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_DIRECT | O_CLOEXEC);
  while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    ErrnoError(env, errno, "open O_DIRECT " + path).ThrowAsJavaScriptException();
    return env.Undefined();
  }
  return Napi::Number::New(env, fd);
}

// fadviseDontNeed(fd, offset, length): Promise<void>. Drops clean page-cache pages of a range (after a
// buffered write is synced), since the cache arena already holds the bytes. Node's fs has no fadvise.
// On the thread pool: the call can wait on writeback of the range (pages written again after the sync
// began), and on the event loop it did, up to ~100 ms at a time in bench:soak (a stall trace showed the
// main thread neither running nor waiting for a CPU across it).
class FadviseWorker : public Napi::AsyncWorker {
 public:
  FadviseWorker(Napi::Env env, int fd, off_t off, off_t len)
      : Napi::AsyncWorker(env, "shoal:fadvise"), deferred_(Napi::Promise::Deferred::New(env)), fd_(fd), off_(off), len_(len) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { rc_ = posix_fadvise(fd_, off_, len_, POSIX_FADV_DONTNEED); }
  void OnOK() override {
    if (rc_ == 0) deferred_.Resolve(Env().Undefined());
    else deferred_.Reject(ErrnoError(Env(), rc_, "posix_fadvise").Value());
  }
  void OnError(const Napi::Error& e) override { deferred_.Reject(e.Value()); }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  off_t off_;
  off_t len_;
  int rc_ = 0;
};

Napi::Value FadviseDontNeed(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd, off, len;
  if (info.Length() < 3 || !ToInt(info[0], 0, 2147483647.0, &fd) || !ToInt(info[1], 0, kMaxSafe, &off) || !ToInt(info[2], 0, kMaxSafe, &len))
    return ThrowType(env, "fadviseDontNeed(fd, offset, length)");
  auto* w = new FadviseWorker(env, static_cast<int>(fd), static_cast<off_t>(off), static_cast<off_t>(len));
  auto p = w->Promise();
  w->Queue();
  return p;
}

// writeRuns(fd, bufs: Buffer[], counts: Uint32Array, positions: Float64Array, runs): Promise<void>.
// Writes run r, the next counts[r] buffers of bufs, at byte positions[r] (pwritev, a short write
// carried on), every run on one thread-pool thread. Why: a write batch of many short runs (a 1 MiB
// write whose chunks go to freed slots scattered over the chunk file) was one pwritev per run on the
// event loop: after 15 s of 4K random writes, 23% of the event loop's time in 1M writes at QD8
// (server/store/batched-writes.ts). Rejects with the errno error of the first run that failed, its
// `runsWritten` the runs before it (written).
class WriteRunsWorker : public Napi::AsyncWorker {
 public:
  WriteRunsWorker(Napi::Env env, int fd, std::vector<iovec> iov, std::vector<uint32_t> counts, std::vector<off_t> pos, Napi::Array bufs)
      : Napi::AsyncWorker(env, "shoal:writeRuns"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fd_(fd),
        iov_(std::move(iov)),
        counts_(std::move(counts)),
        pos_(std::move(pos)),
        bufs_(Napi::Persistent(bufs.As<Napi::Object>())) {}  // the buffers stay alive until written
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    size_t first = 0;
    for (size_t r = 0; r < counts_.size(); r++) {
      iovec* v = iov_.data() + first;
      int n = static_cast<int>(counts_[r]);
      off_t at = pos_[r];
      first += counts_[r];
      while (n > 0) {
        ssize_t w = pwritev(fd_, v, n, at);
        if (w < 0) {
          if (errno == EINTR) continue;
          err_ = errno;
          failedRun_ = r;
          return;
        }
        at += w;
        while (n > 0 && static_cast<size_t>(w) >= v->iov_len) {
          w -= static_cast<ssize_t>(v->iov_len);
          v++;
          n--;
        }
        if (n > 0) {  // short write: the rest of this buffer, then the next ones
          v->iov_base = static_cast<uint8_t*>(v->iov_base) + w;
          v->iov_len -= static_cast<size_t>(w);
        }
      }
    }
  }
  void OnOK() override {
    bufs_.Reset();
    if (err_ == 0) return deferred_.Resolve(Env().Undefined());
    auto e = ErrnoError(Env(), err_, "pwritev");
    e.Set("runsWritten", Napi::Number::New(Env(), static_cast<double>(failedRun_)));
    deferred_.Reject(e.Value());
  }
  void OnError(const Napi::Error& e) override {
    bufs_.Reset();
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  std::vector<iovec> iov_;
  std::vector<uint32_t> counts_;
  std::vector<off_t> pos_;
  Napi::ObjectReference bufs_;
  int err_ = 0;
  size_t failedRun_ = 0;
};

Napi::Value WriteRuns(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* usage = "writeRuns(fd, bufs: Buffer[], counts: Uint32Array, positions: Float64Array, runs)";
  int64_t fd, runs;
  if (info.Length() < 5 || !ToInt(info[0], 0, 2147483647.0, &fd) || !info[1].IsArray() || !IsTyped(info[2], napi_uint32_array) ||
      !IsTyped(info[3], napi_float64_array) || !ToInt(info[4], 1, 4294967295.0, &runs))
    return ThrowType(env, usage);
  auto bufs = info[1].As<Napi::Array>();
  auto counts = info[2].As<Napi::Uint32Array>();
  auto positions = info[3].As<Napi::Float64Array>();
  if (static_cast<size_t>(runs) > counts.ElementLength() || static_cast<size_t>(runs) > positions.ElementLength()) return ThrowRange(env, "writeRuns: runs is larger than counts or positions");
  std::vector<uint32_t> cv(static_cast<size_t>(runs));
  std::vector<off_t> pv(static_cast<size_t>(runs));
  uint64_t total = 0;
  for (size_t r = 0; r < cv.size(); r++) {
    const double p = positions[r];
    if (counts[r] == 0 || counts[r] > 1024 || !(p >= 0) || p > kMaxSafe || std::floor(p) != p) return ThrowRange(env, "writeRuns: a run needs 1 to 1024 buffers and a position from 0 to 2^53 - 1");
    cv[r] = counts[r];
    pv[r] = static_cast<off_t>(p);
    total += counts[r];
  }
  if (total != bufs.Length()) return ThrowRange(env, "writeRuns: the counts do not add up to the buffers");
  std::vector<iovec> iov(static_cast<size_t>(total));
  for (uint32_t i = 0; i < bufs.Length(); i++) {
    Napi::Value b = bufs.Get(i);
    if (!IsTyped(b, napi_uint8_array)) return ThrowType(env, usage);
    auto a = b.As<Napi::Uint8Array>();
    iov[i].iov_base = a.Data();
    iov[i].iov_len = a.ByteLength();
  }
  auto* w = new WriteRunsWorker(env, static_cast<int>(fd), std::move(iov), std::move(cv), std::move(pv), bufs);
  auto p = w->Promise();
  w->Queue();
  return p;
}

// tryLock(fd): flock(LOCK_EX | LOCK_NB); true if taken, false if another open file holds it. Node's
// fs has no flock, and the data directory's lock must be one the kernel drops when its holder dies
// (kill -9 included), so a pid file alone would not do (server/data-dir-lock.ts).
Napi::Value TryLock(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t fd;
  if (info.Length() < 1 || !ToInt(info[0], 0, 2147483647.0, &fd)) return ThrowType(env, "tryLock(fd)");
  int rc;
  do rc = flock(static_cast<int>(fd), LOCK_EX | LOCK_NB);
  while (rc < 0 && errno == EINTR);
  if (rc == 0) return Napi::Boolean::New(env, true);
  if (errno == EWOULDBLOCK) return Napi::Boolean::New(env, false);
  ErrnoError(env, errno, "flock").ThrowAsJavaScriptException();
  return env.Undefined();
}

// alignedBuffer(bytes): a Buffer of `bytes` (rounded up to 4 KiB) at a page boundary, outside the V8
// heap, unmapped when collected. Why: O_DIRECT needs page-aligned memory, which Buffer.alloc does not
// give; and the caller keeps these for reuse, so the memory stays backed (on a VM that charges for the
// first touch of a page, a fresh 2 MiB Buffer per fetched range cost more than the copy into it).
Napi::Value AlignedBuffer(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t bytes;
  if (info.Length() < 1 || !ToInt(info[0], 1, static_cast<double>(1ull << 32), &bytes)) return ThrowType(env, "alignedBuffer(bytes: 1..2^32)");
  size_t size = (static_cast<size_t>(bytes) + 4095) & ~static_cast<size_t>(4095);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    ErrnoError(env, errno, "cannot map an aligned buffer").ThrowAsJavaScriptException();
    return env.Undefined();
  }
#ifdef MADV_HUGEPAGE
  if (size >= (2u << 20)) madvise(p, size, MADV_HUGEPAGE);  // fewer faults for the first fill (advisory)
#endif
  return Napi::Buffer<uint8_t>::New(env, static_cast<uint8_t*>(p), static_cast<size_t>(bytes), [size](Napi::Env, uint8_t* data) { munmap(data, size); });
}

}  // namespace

void InitFileIo(Napi::Env env, Napi::Object exports) {
  exports.Set("openDirect", Napi::Function::New(env, OpenDirect));
  exports.Set("fadviseDontNeed", Napi::Function::New(env, FadviseDontNeed));
  exports.Set("writeRuns", Napi::Function::New(env, WriteRuns));
  exports.Set("tryLock", Napi::Function::New(env, TryLock));
  exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBuffer));
}

}  // namespace shoal
