// Machine probes of probe.h.
#include "probe.h"

#include <atomic>
#include <chrono>
#include <system_error>
#include <thread>
#include <vector>

#include "pool.h"

extern "C" double ek_core_roundtrip_ns(int64_t iters) {
  if (iters <= 0) return 0.0;
  alignas(64) std::atomic<int64_t> flag{0};
  std::thread peer;
  try {
    peer = std::thread([&] {
      for (int64_t i = 0; i < iters; ++i) {
        while (flag.load(std::memory_order_acquire) != 2 * i + 1) {
        }
        flag.store(2 * i + 2, std::memory_order_release);
      }
    });
  } catch (const std::system_error&) {
    return 0.0;
  }
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i) {
    flag.store(2 * i + 1, std::memory_order_release);
    while (flag.load(std::memory_order_acquire) != 2 * i + 2) {
    }
  }
  const double ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  peer.join();
  return ns / static_cast<double>(iters);
}

namespace {

struct BalanceCtx {
  std::thread::id caller;
  int64_t n, fast_ns, slow_ns;
  bool hold;
  std::atomic<int64_t> caller_rows{0};
  std::vector<std::atomic<int32_t>>* hits;
};

void spin_ns(int64_t ns) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::nanoseconds(ns);
  while (std::chrono::steady_clock::now() < end) {
  }
}

void balance_rows(void* p, int64_t b, int64_t e) {
  auto* c = static_cast<BalanceCtx*>(p);
  const bool is_caller = std::this_thread::get_id() == c->caller;
  if (!is_caller && c->hold) {
    // hold: a worker's chunk waits until the caller has run every other row (at most 2 s), which
    // it can only do by taking rows from the worker's block
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (c->caller_rows.load() < c->n - (e - b) && std::chrono::steady_clock::now() < give_up) {
    }
  }
  for (int64_t i = b; i < e; ++i) {
    (*c->hits)[i].fetch_add(1, std::memory_order_relaxed);
    spin_ns(is_caller ? c->fast_ns : c->slow_ns);
    if (is_caller) c->caller_rows.fetch_add(1);
  }
}

}  // namespace

extern "C" int ek_pool_balance_probe(int threads, int calls, int64_t n, int64_t fast_ns, int64_t slow_ns,
                                     uint64_t kind, int hold, double* caller_share, int64_t* bad_rows) {
  if (threads < 1 || calls < 1 || n < 1 || n > (int64_t{1} << 24) || fast_ns < 0 || slow_ns < 0 || !caller_share ||
      !bad_rows)
    return -1;
  std::vector<std::atomic<int32_t>> hits(n);
  BalanceCtx c;
  c.caller = std::this_thread::get_id();
  c.n = n;
  c.hold = hold != 0;
  c.fast_ns = fast_ns;
  c.slow_ns = slow_ns;
  c.hits = &hits;
  *bad_rows = 0;
  for (int k = 0; k < calls; ++k) {
    for (auto& h : hits) h.store(0, std::memory_order_relaxed);
    c.caller_rows.store(0);
    ek::pool_run(n, threads, balance_rows, &c, kind);
    for (auto& h : hits) *bad_rows += h.load(std::memory_order_relaxed) != 1;
  }
  *caller_share = static_cast<double>(c.caller_rows.load()) / static_cast<double>(n);
  return 0;
}
