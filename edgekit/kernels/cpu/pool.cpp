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
  std::vector<std::thread> workers;
  std::atomic<uint64_t> generation{0};
  std::atomic<int> pending{0};     // workers still inside the current job
  // Thread t owns rows [t n / T, (t + 1) n / T) so that each streams one contiguous block; it
  // takes them `grain` at a time from the front, then helps the others from theirs.
  struct alignas(64) Range {
    std::atomic<int64_t> next{0};
    int64_t end = 0;
  };
  static constexpr int kMaxThreads = 64;
  Range ranges[kMaxThreads];
  std::atomic<int> sleepers{0};
  std::atomic<bool> busy{false};   // a job (or a resize) holds the pool
  std::mutex m;
  std::condition_variable cv;
  // the current job; written by the caller before `generation` is bumped
  RangeFn fn = nullptr;
  void* ctx = nullptr;
  int64_t n = 0, grain = 1;
  int threads = 1;  // the caller (index 0) and workers 1 .. threads - 1 take part

  void work(int self) {
    for (int k = 0; k < threads; ++k) {
      Range& r = ranges[(self + k) % threads];
      for (;;) {
        const int64_t b = r.next.fetch_add(grain, std::memory_order_relaxed);
        if (b >= r.end) break;
        fn(ctx, b, std::min(r.end, b + grain));
      }
    }
  }

  // `seen` is the generation at creation, read by the caller before it bumps it for the first
  // job this worker must take part in.
  void worker_loop(int index, uint64_t seen) {
    for (;;) {
      uint64_t g = generation.load(std::memory_order_acquire);
      if (g == seen) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int spins = 0; (g = generation.load(std::memory_order_acquire)) == seen; ++spins) {
          EK_CPU_RELAX();
          if ((spins & 255) == 255 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(kSpinUs)) {
            std::unique_lock<std::mutex> lk(m);
            sleepers.fetch_add(1);  // seq_cst: pairs with the caller's bump-then-check
            cv.wait(lk, [&] { return generation.load() != seen; });
            sleepers.fetch_sub(1);
          }
        }
      }
      seen = g;
      if (index + 1 < threads) work(index + 1);
      pending.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  void resize(int nworkers) {  // only called with `busy` held and no job in flight
    while (static_cast<int>(workers.size()) < nworkers) {
      const int index = static_cast<int>(workers.size());
      const uint64_t start = generation.load();
      workers.emplace_back([this, index, start] { worker_loop(index, start); });
    }
  }

  void run(int64_t n_, int64_t grain_, int threads_, RangeFn fn_, void* ctx_) {
    resize(threads_ - 1);
    fn = fn_;
    ctx = ctx_;
    n = n_;
    grain = grain_;
    threads = threads_;
    for (int t = 0; t < threads; ++t) {
      ranges[t].next.store(n * t / threads, std::memory_order_relaxed);
      ranges[t].end = n * (t + 1) / threads;
    }
    pending.store(static_cast<int>(workers.size()), std::memory_order_relaxed);
    generation.fetch_add(1);  // seq_cst, then read sleepers: a sleeper either sees it or is woken
    if (sleepers.load() > 0) {
      { std::lock_guard<std::mutex> lk(m); }
      cv.notify_all();
    }
    work(0);
    while (pending.load(std::memory_order_acquire) != 0) EK_CPU_RELAX();
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
  p->run(n, std::max<int64_t>(1, grain), std::min(threads, static_cast<int>(Pool::kMaxThreads)), fn, ctx);
  p->busy.store(false, std::memory_order_release);
}

}  // namespace ek
