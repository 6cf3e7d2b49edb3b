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
  // The job and its generation share one cache line: a worker learns that a job started and
  // what it is from one line transfer.
  struct alignas(64) Job {
    std::atomic<uint64_t> generation{0};
    RangeFn fn = nullptr;
    void* ctx = nullptr;
    int64_t n = 0;
    int threads = 1;  // the caller (index 0) and workers 1 .. threads - 1 take part
  };
  // Worker t's last finished generation, on its own line (the caller polls them).
  struct alignas(64) Done {
    std::atomic<uint64_t> generation{0};
  };
  Job job;
  Done done[kMaxThreads];
  std::vector<std::thread> workers;
  std::atomic<int> sleepers{0};
  std::atomic<bool> busy{false};   // a job (or a resize) holds the pool
  std::mutex m;
  std::condition_variable cv;

  // Thread t takes rows [t n / T, (t + 1) n / T) in one call: a fixed split, so nothing is
  // shared between threads while they work.
  void work(int self) const {
    const int64_t b0 = job.n * self / job.threads, b1 = job.n * (self + 1) / job.threads;
    if (b0 < b1) job.fn(job.ctx, b0, b1);
  }

  // `seen` is the generation at creation, read by the caller before it bumps it for the first
  // job this worker must take part in.
  void worker_loop(int index, uint64_t seen) {
    for (;;) {
      uint64_t g = job.generation.load(std::memory_order_acquire);
      if (g == seen) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int spins = 0; (g = job.generation.load(std::memory_order_acquire)) == seen; ++spins) {
          EK_CPU_RELAX();
          if ((spins & 255) == 255 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(kSpinUs)) {
            std::unique_lock<std::mutex> lk(m);
            sleepers.fetch_add(1);  // seq_cst: pairs with the caller's bump-then-check
            cv.wait(lk, [&] { return job.generation.load() != seen; });
            sleepers.fetch_sub(1);
          }
        }
      }
      seen = g;
      if (index + 1 < job.threads) work(index + 1);
      done[index + 1].generation.store(g, std::memory_order_release);
    }
  }

  void resize(int nworkers) {  // only called with `busy` held and no job in flight
    while (static_cast<int>(workers.size()) < nworkers) {
      const int index = static_cast<int>(workers.size());
      const uint64_t start = job.generation.load();
      done[index + 1].generation.store(start, std::memory_order_relaxed);
      workers.emplace_back([this, index, start] { worker_loop(index, start); });
    }
  }

  void run(int64_t n_, int threads_, RangeFn fn_, void* ctx_) {
    resize(threads_ - 1);
    job.fn = fn_;
    job.ctx = ctx_;
    job.n = n_;
    job.threads = threads_;
    const uint64_t g = job.generation.fetch_add(1) + 1;  // seq_cst, then read sleepers: a sleeper either sees it or is woken
    if (sleepers.load() > 0) {
      { std::lock_guard<std::mutex> lk(m); }
      cv.notify_all();
    }
    work(0);
    for (size_t t = 1; t <= workers.size(); ++t)  // every worker, including ones not in this job
      while (done[t].generation.load(std::memory_order_acquire) != g) EK_CPU_RELAX();
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

void pool_run(int64_t n, int64_t grain, int threads, RangeFn fn, void* ctx) {
  if (threads <= 1 || n <= grain) {
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
