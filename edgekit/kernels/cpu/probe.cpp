// Machine probes of probe.h.
#include "probe.h"

#include <atomic>
#include <chrono>
#include <system_error>
#include <thread>

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
