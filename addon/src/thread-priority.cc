// Scheduling priority of the libuv thread pool's threads, which Node cannot set (os.setPriority takes a
// process). Why: on a machine whose cores are all busy, the pool's threads (chunk-file writes, BLAKE3
// of large writes, LMDB's commits) took the cores from the event loop, which then waited for a CPU in
// the middle of its turn: a stall trace of bench:soak (bench/stall-trace.mjs) found the event loop
// runnable but not running for 20-48 ms in its gaps of 40-63 ms, while the daemon's other threads ran
// 48-67 ms in the same windows. Linux gives each thread its own nice value (setpriority on a thread id).
#include "thread-priority.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "args.h"
#include "errno-error.h"

namespace shoal {
namespace {

// Holds every job until all have started, so that each of the pool's threads takes exactly one.
struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  int waiting = 0;
  int total;
  std::vector<double> tids;
  int err = 0;
  explicit Gate(int n) : total(n) {}
};

class NiceWorker : public Napi::AsyncWorker {
 public:
  NiceWorker(Napi::Env env, std::shared_ptr<Gate> gate, int nice, Napi::Promise::Deferred deferred, bool last)
      : Napi::AsyncWorker(env, "shoal:poolNice"), gate_(std::move(gate)), nice_(nice), deferred_(deferred), last_(last) {}

  void Execute() override {
    pid_t tid = static_cast<pid_t>(syscall(SYS_gettid));
    int rc = setpriority(PRIO_PROCESS, static_cast<id_t>(tid), nice_);
    int e = rc == 0 ? 0 : errno;
    std::unique_lock<std::mutex> lock(gate_->mu);
    if (e != 0 && gate_->err == 0) gate_->err = e;
    gate_->tids.push_back(static_cast<double>(tid));
    if (++gate_->waiting == gate_->total) {
      gate_->cv.notify_all();
      return;
    }
    // Bounded: a pool smaller than asked (or a thread busy with a long job) must not hold the rest forever.
    gate_->cv.wait_for(lock, std::chrono::seconds(5), [this] { return gate_->waiting >= gate_->total; });
  }

  // The last job queued settles the promise: its Execute returned only once every job had started
  // (each records its thread first) or the gate timed out.
  void OnOK() override {
    if (last_) Settle();
  }
  void OnError(const Napi::Error& e) override {
    if (last_) deferred_.Reject(e.Value());
  }

 private:
  void Settle() {
    Napi::Env env = Env();
    std::lock_guard<std::mutex> lock(gate_->mu);
    if (gate_->err != 0) {
      deferred_.Reject(ErrnoError(env, gate_->err, "setpriority").Value());
      return;
    }
    Napi::Array out = Napi::Array::New(env, gate_->tids.size());
    for (size_t i = 0; i < gate_->tids.size(); i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, gate_->tids[i]));
    deferred_.Resolve(out);
  }

  std::shared_ptr<Gate> gate_;
  int nice_;
  Napi::Promise::Deferred deferred_;
  bool last_;
};

// setPoolNice(threads, nice): Promise<number[]>. Runs one job on each of the pool's `threads` threads
// at once and sets that thread's nice value; resolves with the thread ids reached (fewer than
// `threads` if the pool is smaller or a thread stayed busy for 5 s).
Napi::Value SetPoolNice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t threads, nice;
  if (info.Length() < 2 || !ToInt(info[0], 1, 1024, &threads) || !ToInt(info[1], 0, 19, &nice))
    return ThrowType(env, "setPoolNice(threads: 1..1024, nice: 0..19)");
  auto gate = std::make_shared<Gate>(static_cast<int>(threads));
  auto deferred = Napi::Promise::Deferred::New(env);
  for (int64_t i = 0; i < threads; i++) (new NiceWorker(env, gate, static_cast<int>(nice), deferred, i == threads - 1))->Queue();
  return deferred.Promise();
}

}  // namespace

void InitThreadPriority(Napi::Env env, Napi::Object exports) {
  exports.Set("setPoolNice", Napi::Function::New(env, SetPoolNice, "setPoolNice"));
}

}  // namespace shoal
