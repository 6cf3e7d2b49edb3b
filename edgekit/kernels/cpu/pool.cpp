// Fork-join pool of pool.h.
#include "pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
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
  // With kMaxBalanced threads or fewer (and n < 2^32), cut[t - 1] is where thread t's rows
  // start (split() below, in the job's line too); otherwise the split is even.
  // chunk > 0: a large region (kStealWork multiply-adds or more), whose threads take their
  // blocks `chunk` rows at a time from a shared range and then take chunks off the end of the
  // others' blocks (steal_work()).
  static constexpr int kMaxBalanced = 7;
  struct alignas(64) Job {
    std::atomic<uint64_t> word{0};
    RangeFn fn = nullptr;
    void* ctx = nullptr;
    int64_t n = 0;
    uint32_t cut[kMaxBalanced - 1] = {};
    uint32_t balanced = 0;  // cut holds the split (else it is even)
    uint32_t chunk = 0;
  };
  static_assert(sizeof(Job) == 64, "the job is one cache line");
  // Worker t's last finished job word, and whether it sleeps, on its own line (the caller polls
  // them for the job's participants only).
  struct alignas(64) Done {
    std::atomic<uint64_t> word{0};
    std::atomic<bool> asleep{false};
    int64_t end_ns = 0;  // when the worker finished its rows (written before `word`)
    int64_t rows = 0;    // how many rows it ran (stealing moves rows between threads)
  };
  // Thread t's rows not yet taken, [lo, hi) as lo | hi << 32, on its own line: the owner takes
  // chunks from lo, others take them from hi once their own range is empty.
  struct alignas(64) Range {
    std::atomic<uint64_t> lohi{0};
  };
  static constexpr uint64_t kStealWork = uint64_t{1} << 22;  // n x work hint: ~50 us of rows or more
  Range ranges[kMaxBalanced];
  // Row shares per kind of region (fn, n, the caller's work hint, threads), learned from how
  // long each thread took: a direct-mapped table only the caller touches (under `busy`).
  struct Shares {
    uint64_t key = 0;
    float w[kMaxBalanced] = {};
  };
  static constexpr int kSlots = 64;
  Shares shares[kSlots];
  Job job;
  Done done[kMaxThreads];
  std::vector<std::thread> workers;
  std::atomic<bool> busy{false};   // a job (or a resize) holds the pool
  std::mutex m;
  std::condition_variable cv;

  // Thread t's block of rows (the learned split, or even). Outside large regions it takes the
  // block in one call, so nothing is shared between threads while they work. `threads`: the
  // caller (index 0) and workers 1 .. threads - 1 take part.
  void bounds(int self, int threads, int64_t* b0, int64_t* b1) const {
    if (job.balanced) {
      *b0 = self == 0 ? 0 : job.cut[self - 1];
      *b1 = self == threads - 1 ? job.n : job.cut[self];
    } else {
      *b0 = job.n * self / threads;
      *b1 = job.n * (self + 1) / threads;
    }
  }
  // Runs thread `self`'s rows; returns how many it ran.
  int64_t work(int self, int threads) {
    if (job.chunk) return steal_work(self, threads);
    int64_t b0, b1;
    bounds(self, threads, &b0, &b1);
    if (b0 < b1) job.fn(job.ctx, b0, b1);
    return b1 - b0;
  }

  // Takes `chunk` rows from the low end of range r (owner) or the high end (anyone else).
  bool take(int r, bool owner, int64_t* b, int64_t* e) {
    const uint64_t chunk = job.chunk;
    uint64_t cur = ranges[r].lohi.load(std::memory_order_relaxed);
    for (;;) {
      const uint64_t lo = cur & 0xffffffffu, hi = cur >> 32;
      if (lo >= hi) return false;
      const uint64_t k = hi - lo < chunk ? hi - lo : chunk;
      const uint64_t next = owner ? (lo + k) | hi << 32 : lo | (hi - k) << 32;
      if (ranges[r].lohi.compare_exchange_weak(cur, next, std::memory_order_relaxed)) {
        *b = static_cast<int64_t>(owner ? lo : hi - k);
        *e = static_cast<int64_t>(owner ? lo + k : hi);
        return true;
      }
    }
  }

  // A large region: the learned block first, a chunk at a time (an uncontended CAS on the
  // thread's own line per chunk), then chunks off the end of the other blocks, so whichever
  // thread is behind at the end (memory bandwidth shared unevenly, a preempted vCPU) is helped
  // instead of waited for.
  int64_t steal_work(int self, int threads) {
    int64_t b, e, rows = 0;
    while (take(self, true, &b, &e)) {
      job.fn(job.ctx, b, e);
      rows += e - b;
    }
    for (int k = 1; k < threads; ++k) {
      const int r = (self + k) % threads;
      while (take(r, false, &b, &e)) {
        job.fn(job.ctx, b, e);
        rows += e - b;
      }
    }
    return rows;
  }

  static int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // The split: thread t's share of the rows is w[t] of its region kind, rows per nanosecond as
  // last measured, smoothed. Equal times are its fixed point, so a thread that starts later
  // (a worker sees the job one core-to-core transfer after it is published) or runs slower (a
  // little core, a busy vCPU, a longer path to memory) gets fewer rows (pool.h).
  Shares* split(int64_t n, int threads, uint64_t key) {
    Shares* sh = &shares[(key ^ (key >> 17) ^ (key >> 31)) % kSlots];
    if (sh->key != key) {
      sh->key = key;
      for (int t = 0; t < threads; ++t) sh->w[t] = 1.f / static_cast<float>(threads);
    }
    float acc = 0.f;
    for (int t = 1; t < threads; ++t) {
      acc += sh->w[t - 1];
      job.cut[t - 1] = static_cast<uint32_t>(std::min<int64_t>(n, std::llround(static_cast<double>(acc) * n)));
    }
    return sh;
  }

  // After the job: measured rows per ns of each thread, folded into the shares (a quarter of
  // the way), each kept >= 1/4 of an even share so that a thread never drops out for good.
  void learn(Shares* sh, int threads, int64_t t0, int64_t end0, int64_t rows0) {
    float rate[kMaxBalanced], total = 0.f;
    for (int t = 0; t < threads; ++t) {
      const int64_t rows = t == 0 ? rows0 : done[t].rows;
      const int64_t dt = (t == 0 ? end0 : done[t].end_ns) - t0;
      if (rows <= 0 || dt <= 0) return;  // nothing measured for some thread: keep the shares
      rate[t] = static_cast<float>(rows) / static_cast<float>(dt);
      total += rate[t];
    }
    const float floor = 0.25f / static_cast<float>(threads);
    float sum = 0.f;
    for (int t = 0; t < threads; ++t) {
      sh->w[t] = std::max(floor, 0.75f * sh->w[t] + 0.25f * rate[t] / total);
      sum += sh->w[t];
    }
    for (int t = 0; t < threads; ++t) sh->w[t] /= sum;
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
        done[self].rows = work(self, static_cast<int>(w & 0xff));
        done[self].end_ns = now_ns();
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

  void run(int64_t n_, int threads_, RangeFn fn_, void* ctx_, uint64_t kind) {
    resize(threads_ - 1);
    job.fn = fn_;
    job.ctx = ctx_;
    job.n = n_;
    const bool balanced = threads_ <= kMaxBalanced && n_ < (int64_t{1} << 32);
    Shares* sh = nullptr;
    if (balanced) {
      uint64_t key = reinterpret_cast<uintptr_t>(fn_) * 0x9E3779B97F4A7C15ull;
      key ^= static_cast<uint64_t>(n_) * 0xC2B2AE3D27D4EB4Full ^ kind * 0x165667B19E3779F9ull;
      key ^= static_cast<uint64_t>(threads_) << 56;
      sh = split(n_, threads_, key);
    }
    job.balanced = balanced;
    // Large regions steal: chunks of ~2^18 multiply-adds (a few us), at least 8 rows.
    job.chunk = 0;
    if (balanced && kind > 0 && static_cast<uint64_t>(n_) * kind >= kStealWork) {
      job.chunk = static_cast<uint32_t>(std::max<uint64_t>(8, (uint64_t{1} << 18) / kind));
      for (int t = 0; t < threads_; ++t) {
        int64_t b0, b1;
        bounds(t, threads_, &b0, &b1);
        ranges[t].lohi.store(static_cast<uint64_t>(b0) | static_cast<uint64_t>(b1) << 32, std::memory_order_relaxed);
      }
    }
    const int64_t t0 = balanced ? now_ns() : 0;
    const uint64_t w = ((job.word.load(std::memory_order_relaxed) >> 8) + 1) << 8 | static_cast<uint64_t>(threads_);
    job.word.store(w);  // seq_cst, then read the participants' sleep flags: a sleeper sees it or is woken
    bool wake = false;
    for (int t = 1; t < threads_; ++t) wake = wake || done[t].asleep.load();
    if (wake) {
      { std::lock_guard<std::mutex> lk(m); }
      cv.notify_all();
    }
    const int64_t rows0 = work(0, threads_);
    const int64_t end0 = balanced ? now_ns() : 0;
    for (int t = 1; t < threads_; ++t)
      while (done[t].word.load(std::memory_order_acquire) != w) EK_CPU_RELAX();
    if (balanced) learn(sh, threads_, t0, end0, rows0);
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

void pool_run(int64_t n, int threads, RangeFn fn, void* ctx, uint64_t kind) {
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
  p->run(n, std::min(threads, static_cast<int>(Pool::kMaxThreads)), fn, ctx, kind);
  p->busy.store(false, std::memory_order_release);
}

}  // namespace ek
