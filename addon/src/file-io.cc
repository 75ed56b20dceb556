// File calls Node's fs does not offer: O_DIRECT, fadvise and many-run writes for the local chunk store (server/store/local-chunk-store.ts), flock for the data directory's lock (server/data-dir-lock.ts),
// and page-aligned buffers for O_DIRECT writes (the S3 store's fetch buffers, server/store/s3/fetch-buffers.ts).
#include "file-io.h"

#include <fcntl.h>
#include <linux/aio_abi.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
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

// The arguments of writeRuns and writeRunsDirect: (fd, bufs, counts, positions, runs) checked and
// turned into iovecs, run buffer counts and byte positions; an empty Value when they are good, else
// the thrown error's (undefined).
Napi::Value RunsArgs(const Napi::CallbackInfo& info, const char* usage, std::vector<iovec>* iov, std::vector<uint32_t>* cv, std::vector<off_t>* pv) {
  Napi::Env env = info.Env();
  int64_t fd, runs;
  if (info.Length() < 5 || !ToInt(info[0], 0, 2147483647.0, &fd) || !info[1].IsArray() || !IsTyped(info[2], napi_uint32_array) ||
      !IsTyped(info[3], napi_float64_array) || !ToInt(info[4], 1, 4294967295.0, &runs))
    return ThrowType(env, usage);
  auto bufs = info[1].As<Napi::Array>();
  auto counts = info[2].As<Napi::Uint32Array>();
  auto positions = info[3].As<Napi::Float64Array>();
  if (static_cast<size_t>(runs) > counts.ElementLength() || static_cast<size_t>(runs) > positions.ElementLength()) return ThrowRange(env, "writeRuns: runs is larger than counts or positions");
  cv->resize(static_cast<size_t>(runs));
  pv->resize(static_cast<size_t>(runs));
  uint64_t total = 0;
  for (size_t r = 0; r < cv->size(); r++) {
    const double p = positions[r];
    if (counts[r] == 0 || counts[r] > 1024 || !(p >= 0) || p > kMaxSafe || std::floor(p) != p) return ThrowRange(env, "writeRuns: a run needs 1 to 1024 buffers and a position from 0 to 2^53 - 1");
    (*cv)[r] = counts[r];
    (*pv)[r] = static_cast<off_t>(p);
    total += counts[r];
  }
  if (total != bufs.Length()) return ThrowRange(env, "writeRuns: the counts do not add up to the buffers");
  iov->resize(static_cast<size_t>(total));
  for (uint32_t i = 0; i < bufs.Length(); i++) {
    Napi::Value b = bufs.Get(i);
    if (!IsTyped(b, napi_uint8_array)) return ThrowType(env, usage);
    auto a = b.As<Napi::Uint8Array>();
    (*iov)[i].iov_base = a.Data();
    (*iov)[i].iov_len = a.ByteLength();
  }
  return Napi::Value();
}

// Checks the arguments (RunsArgs) and queues a Worker (WriteRunsWorker or WriteRunsDirectWorker) on them.
template <class Worker>
Napi::Value QueueRuns(const Napi::CallbackInfo& info, const char* usage) {
  std::vector<iovec> iov;
  std::vector<uint32_t> cv;
  std::vector<off_t> pv;
  Napi::Value err = RunsArgs(info, usage, &iov, &cv, &pv);
  if (!err.IsEmpty()) return err;
  auto* w = new Worker(info.Env(), info[0].As<Napi::Number>().Int32Value(), std::move(iov), std::move(cv), std::move(pv), info[1].As<Napi::Array>());
  auto p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value WriteRuns(const Napi::CallbackInfo& info) {
  return QueueRuns<WriteRunsWorker>(info, "writeRuns(fd, bufs: Buffer[], counts: Uint32Array, positions: Float64Array, runs)");
}

// writeRunsDirect(fd, bufs, counts, positions, runs): Promise<Int32Array>, the errno of each run (0:
// written). As writeRuns, for a descriptor opened O_DIRECT: in one thread-pool job the runs are copied
// into page-aligned memory and submitted together through Linux AIO, so the disk takes them in parallel,
// then the job waits for all of them. Why: a buffered 4 KiB write copies into a page the kernel
// allocates, later written back by the commit's fdatasync and dropped again (the shared cache already
// holds the chunk); measured in C on this machine's disk, 4 KiB writes to random places at 32 a batch
// cost 2.9-3.5 us of CPU each this way against 6.4-6.5 us buffered (the writeback and the drop
// included), and 1 MiB writes 44-46 us against 200-216 us. Failures are per run; a short write is
// finished with pwrite.
class WriteRunsDirectWorker : public Napi::AsyncWorker {
 public:
  WriteRunsDirectWorker(Napi::Env env, int fd, std::vector<iovec> iov, std::vector<uint32_t> counts, std::vector<off_t> pos, Napi::Array bufs)
      : Napi::AsyncWorker(env, "shoal:writeRunsDirect"),
        deferred_(Napi::Promise::Deferred::New(env)),
        fd_(fd),
        iov_(std::move(iov)),
        counts_(std::move(counts)),
        pos_(std::move(pos)),
        errs_(counts_.size(), 0),
        bufs_(Napi::Persistent(bufs.As<Napi::Object>())) {}
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    // Per pool thread, kept for the process: the aligned copy of a batch and an AIO context (io_setup
    // per job would cost a syscall pair and kernel memory each time).
    thread_local uint8_t* staging = nullptr;
    thread_local size_t stagingBytes = 0;
    thread_local aio_context_t ctx = 0;
    thread_local bool noAio = false;
    const size_t runs = counts_.size();
    std::vector<size_t> at(runs), len(runs);
    size_t total = 0;
    {
      size_t b = 0;
      for (size_t r = 0; r < runs; r++) {
        size_t n = 0;
        for (uint32_t k = 0; k < counts_[r]; k++) n += iov_[b + k].iov_len;
        b += counts_[r];
        at[r] = total;
        len[r] = n;
        total += (n + 4095) & ~static_cast<size_t>(4095);
      }
    }
    // A thread keeps up to kKeptStaging for the next job; a larger batch (a write of tens of MiB) gets
    // memory of its own, given back when it is written.
    uint8_t* buf = staging;
    std::unique_ptr<void, decltype(&free)> own(nullptr, &free);
    if (total > stagingBytes) {
      void* p = nullptr;
      if (posix_memalign(&p, 4096, std::max(total, kMinStaging)) != 0) {
        for (auto& e : errs_) e = ENOMEM;
        return;
      }
      buf = static_cast<uint8_t*>(p);
      if (total <= kKeptStaging) {
        free(staging);
        staging = buf;
        stagingBytes = std::max(total, kMinStaging);
      } else {
        own.reset(p);
      }
    }
    {
      size_t b = 0;
      for (size_t r = 0; r < runs; r++) {
        uint8_t* dst = buf + at[r];
        for (uint32_t k = 0; k < counts_[r]; k++, b++) {
          memcpy(dst, iov_[b].iov_base, iov_[b].iov_len);
          dst += iov_[b].iov_len;
        }
      }
    }
    if (ctx == 0 && !noAio && syscall(SYS_io_setup, kAioEvents, &ctx) < 0) {
      ctx = 0;
      noAio = true;  // no AIO here (a limit reached, a kernel without it): synchronous writes, still direct
    }
    std::vector<size_t> queued;
    if (!noAio) queued.reserve(runs);
    for (size_t r = 0; r < runs; r++) {
      if (len[r] % 512 != 0 || pos_[r] % 512 != 0) errs_[r] = EINVAL;  // O_DIRECT would refuse it
      else if (noAio) Finish(r, buf + at[r], len[r], 0);
      else queued.push_back(r);
    }
    // Submit up to kAioEvents at a time, then collect them before submitting more. The context is this
    // thread's alone, so nothing else is in flight in it.
    std::vector<iocb> cbs(std::min(queued.size(), static_cast<size_t>(kAioEvents)));
    std::vector<iocb*> ptrs(cbs.size());
    std::vector<io_event> events(cbs.size());
    size_t next = 0;
    while (next < queued.size()) {
      const size_t n = std::min(queued.size() - next, cbs.size());
      for (size_t i = 0; i < n; i++) {
        const size_t r = queued[next + i];
        memset(&cbs[i], 0, sizeof(iocb));
        cbs[i].aio_fildes = static_cast<uint32_t>(fd_);
        cbs[i].aio_lio_opcode = IOCB_CMD_PWRITE;
        cbs[i].aio_buf = reinterpret_cast<uint64_t>(buf + at[r]);
        cbs[i].aio_nbytes = len[r];
        cbs[i].aio_offset = pos_[r];
        cbs[i].aio_data = r;
        ptrs[i] = &cbs[i];
      }
      size_t submitted = 0;
      bool cutShort = false;
      while (submitted < n) {
        long s = syscall(SYS_io_submit, ctx, static_cast<long>(n - submitted), ptrs.data() + submitted);
        if (s > 0) {
          submitted += static_cast<size_t>(s);
          continue;
        }
        if (s < 0 && errno == EINTR) continue;
        if (submitted > 0 && s < 0 && errno == EAGAIN) {  // collect what is in flight, then go on
          cutShort = true;
          break;
        }
        // Refused (a system-wide AIO limit, a descriptor AIO will not take): these synchronously.
        for (size_t i = submitted; i < n; i++) Finish(queued[next + i], buf + at[queued[next + i]], len[queued[next + i]], 0);
        break;
      }
      size_t done = 0;
      while (done < submitted) {
        long g = syscall(SYS_io_getevents, ctx, 1L, static_cast<long>(submitted - done), events.data(), nullptr);
        if (g < 0) {
          if (errno == EINTR) continue;
          // Cannot happen with a valid context; the writes' outcome is unknown, so they failed.
          const int e = errno;
          for (size_t i = 0; i < submitted; i++) errs_[queued[next + i]] = e;
          return;
        }
        for (long k = 0; k < g; k++) {
          const size_t r = static_cast<size_t>(events[k].data);
          const long long res = static_cast<long long>(events[k].res);
          if (res < 0) errs_[r] = static_cast<int>(-res);
          else if (static_cast<size_t>(res) < len[r]) Finish(r, buf + at[r], len[r], static_cast<size_t>(res));
        }
        done += static_cast<size_t>(g);
      }
      // The refused ones were finished above; where EAGAIN cut the submission short the rest go round again.
      next += cutShort ? submitted : n;
    }
  }

  void OnOK() override {
    bufs_.Reset();
    auto out = Napi::Int32Array::New(Env(), errs_.size());
    for (size_t r = 0; r < errs_.size(); r++) out[r] = errs_[r];
    deferred_.Resolve(out);
  }
  void OnError(const Napi::Error& e) override {
    bufs_.Reset();
    deferred_.Reject(e.Value());
  }

 private:
  static constexpr long kAioEvents = 256;
  static constexpr size_t kMinStaging = 1 << 20;
  static constexpr size_t kKeptStaging = 8 << 20;

  // Writes run r's bytes [from, n) with pwrite on the calling thread.
  void Finish(size_t r, const uint8_t* p, size_t n, size_t from) {
    while (from < n) {
      ssize_t w = pwrite(fd_, p + from, n - from, pos_[r] + static_cast<off_t>(from));
      if (w < 0) {
        if (errno == EINTR) continue;
        errs_[r] = errno;
        return;
      }
      if (w == 0) {
        errs_[r] = EIO;
        return;
      }
      from += static_cast<size_t>(w);
    }
  }

  Napi::Promise::Deferred deferred_;
  int fd_;
  std::vector<iovec> iov_;
  std::vector<uint32_t> counts_;
  std::vector<off_t> pos_;
  std::vector<int32_t> errs_;
  Napi::ObjectReference bufs_;
};

Napi::Value WriteRunsDirect(const Napi::CallbackInfo& info) {
  return QueueRuns<WriteRunsDirectWorker>(info, "writeRunsDirect(fd, bufs: Buffer[], counts: Uint32Array, positions: Float64Array, runs)");
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
  exports.Set("writeRunsDirect", Napi::Function::New(env, WriteRunsDirect));
  exports.Set("tryLock", Napi::Function::New(env, TryLock));
  exports.Set("alignedBuffer", Napi::Function::New(env, AlignedBuffer));
}

}  // namespace shoal
