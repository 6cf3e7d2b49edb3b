// Fork-join pool of pool.h.
#include "pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EK_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define EK_CPU_RELAX() asm volatile("yield" ::: "memory")
#else
#define EK_CPU_RELAX() ((void)0)
#endif

namespace ek {
namespace {

constexpr int64_t kSpinUs = 500;  // how long an idle worker spins before it sleeps

struct Pool {
  static constexpr int kMaxThreads = 64;
  // The job's word: its generation << 8 | its thread count, so a worker learns from one load
  // whether it takes part. Only a participant reads the rest of the job, which shares the word's
  // cache line (one transfer tells it everything), and only participants are waited for: a
  // worker outside the job (an earlier call used more threads) never holds it up, and the job
  // is not rewritten until every participant has finished reading it.
  struct alignas(64) Job {
    std::atomic<uint64_t> word{0};
    RangeFn fn = nullptr;
    void* ctx = nullptr;
    int64_t n = 0;
  };
  // Worker t's last finished job word, and whether it sleeps, on its own line (the caller polls
  // them for the job's participants only).
  struct alignas(64) Done {
    std::atomic<uint64_t> word{0};
    std::atomic<bool> asleep{false};
  };
  Job job;
  Done done[kMaxThreads];
  std::vector<std::thread> workers;
  std::atomic<bool> busy{false};   // a job (or a resize) holds the pool
  std::mutex m;
  std::condition_variable cv;

  // Thread t takes rows [t n / T, (t + 1) n / T) in one call: a fixed split, so nothing is
  // shared between threads while they work.
  // `threads`: the caller (index 0) and workers 1 .. threads - 1 take part.
  void work(int self, int threads) const {
    const int64_t b0 = job.n * self / threads, b1 = job.n * (self + 1) / threads;
    if (b0 < b1) job.fn(job.ctx, b0, b1);
  }

  static bool takes_part(int self, uint64_t w) { return self < static_cast<int>(w & 0xff); }

  // Sleep until a job after `seen` that includes worker `self` is published.
  void sleep_until_needed(int self, uint64_t seen) {
    std::unique_lock<std::mutex> lk(m);
    done[self].asleep.store(true);  // seq_cst: pairs with the caller's publish-then-check
    cv.wait(lk, [&] {
      const uint64_t w = job.word.load();
      return w != seen && takes_part(self, w);
    });
    done[self].asleep.store(false, std::memory_order_relaxed);
  }

  // Worker `self` (1 ..): spins on the job word for up to kSpinUs after its last job, then
  // sleeps. A job it is not part of sends it to sleep at once: it never spins on a core the
  // job's threads need. `seen` is the job word at creation, read by the caller before it
  // publishes the first job this worker may take part in.
  void worker_loop(int self, uint64_t seen) {
    for (;;) {
      uint64_t w = job.word.load(std::memory_order_acquire);
      const auto t0 = std::chrono::steady_clock::now();
      for (int spins = 0; w == seen; w = job.word.load(std::memory_order_acquire)) {
        EK_CPU_RELAX();
        if ((++spins & 255) == 0 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(kSpinUs)) {
          sleep_until_needed(self, seen);
          w = job.word.load(std::memory_order_acquire);
          break;
        }
      }
      if (w == seen) continue;
      seen = w;
      if (takes_part(self, w)) {
        work(self, static_cast<int>(w & 0xff));
        done[self].word.store(w, std::memory_order_release);
      } else {
        sleep_until_needed(self, seen);
      }
    }
  }

  void resize(int nworkers) {  // only called with `busy` held and no job in flight
    while (static_cast<int>(workers.size()) < nworkers) {
      const int index = static_cast<int>(workers.size());
      const uint64_t start = job.word.load();
      workers.emplace_back([this, index, start] { worker_loop(index + 1, start); });
    }
  }

  void run(int64_t n_, int threads_, RangeFn fn_, void* ctx_) {
    resize(threads_ - 1);
    job.fn = fn_;
    job.ctx = ctx_;
    job.n = n_;
    const uint64_t w = ((job.word.load(std::memory_order_relaxed) >> 8) + 1) << 8 | static_cast<uint64_t>(threads_);
    job.word.store(w);  // seq_cst, then read the participants' sleep flags: a sleeper sees it or is woken
    bool wake = false;
    for (int t = 1; t < threads_; ++t) wake = wake || done[t].asleep.load();
    if (wake) {
      { std::lock_guard<std::mutex> lk(m); }
      cv.notify_all();
    }
    work(0, threads_);
    for (int t = 1; t < threads_; ++t)
      while (done[t].word.load(std::memory_order_acquire) != w) EK_CPU_RELAX();
  }
};

// Never destroyed: workers may still be spinning when the process exits. A forked child has
// none of the parent's workers, so it starts a fresh pool (the old one is left behind).
Pool* g_pool = nullptr;
std::mutex g_pool_mutex;

Pool* pool() {
  std::lock_guard<std::mutex> lk(g_pool_mutex);
  if (!g_pool) {
    static const int registered = pthread_atfork(nullptr, nullptr, [] { g_pool = nullptr; });
    (void)registered;
    g_pool = new Pool();
  }
  return g_pool;
}

}  // namespace

void pool_run(int64_t n, int threads, RangeFn fn, void* ctx) {
  if (threads <= 1 || n <= 1) {
    fn(ctx, 0, n);
    return;
  }
  Pool* p = pool();
  bool expected = false;
  if (!p->busy.compare_exchange_strong(expected, true, std::memory_order_acquire)) {
    fn(ctx, 0, n);  // nested or concurrent call
    return;
  }
  p->run(n, std::min(threads, static_cast<int>(Pool::kMaxThreads)), fn, ctx);
  p->busy.store(false, std::memory_order_release);
}

}  // namespace ek
