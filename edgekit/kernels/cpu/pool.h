// A small fork-join pool for the row-parallel kernels (parallel.h).
//
// Decoding one token of a small model runs ~120 parallel regions of 2-15 us each, so the cost of
// starting and ending a region matters. The workers stay awake between regions: they spin on a
// generation counter for up to kSpinUs after each job and only then sleep on a condition
// variable. The job's description shares the counter's cache line, and each worker reports
// completion on its own line. A worker outside a job (an earlier call used more threads) sleeps
// until a job needs it and is never waited for. Thread t takes rows [t n / T, (t + 1) n / T) in one call: no shared
// counters while working (so no cache-line transfers between cores mid-region).
//
// Measured on the 2-core VM (whose two vCPUs are sometimes ~80 ns and sometimes ~360 ns apart):
// an empty region costs 80-90 ns near and 450-470 ns far (per-range atomic counters with work
// stealing and one shared pending counter, before: 220 and 720-740 ns). SmolLM2 w2g64a8, 2
// threads, 9 alternating rounds: 614 -> 636 tok/s median.
// The cost of the fixed split: a core that runs slower (a little core, a preempted vCPU) holds
// the region up; with stealing the other thread would take its rows. Every row is computed
// the same way whichever thread takes it, so outputs do not depend on the split.
#ifndef EDGEKIT_POOL_H_
#define EDGEKIT_POOL_H_

#include <stdint.h>

namespace ek {

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);

// fn(ctx, b, e) over [0, n) on `threads` threads (the caller included), one call per thread.
// Runs serially (one call) when threads <= 1, n <= 1, or another job holds the pool (a nested or
// concurrent call), so it is always safe to call.
void pool_run(int64_t n, int threads, RangeFn fn, void* ctx);

}  // namespace ek

#endif  // EDGEKIT_POOL_H_
