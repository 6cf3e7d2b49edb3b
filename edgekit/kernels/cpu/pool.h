// A small fork-join pool for the row-parallel kernels (parallel.h).
//
// Decoding one token of a small model runs ~150 parallel regions of 2-15 us each, so the cost of
// starting a region matters. The workers here stay awake between regions: they spin on a
// generation counter for up to kSpinUs after each job and only then sleep on a condition
// variable. Measured on the 2-core VM: an empty region costs 0.33 us; the 576x576 w2g64 GEMV on
// 2 threads went from 3.4 us (ExecuTorch's parallel_for) to 3.0 us. The caller takes
// part in every job, and rows are handed out in chunks from one atomic counter.
#ifndef EDGEKIT_POOL_H_
#define EDGEKIT_POOL_H_

#include <stdint.h>

namespace ek {

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);

// fn(ctx, b, e) over [0, n) in chunks of `grain` on `threads` threads (the caller included).
// Runs serially when threads <= 1, or when another job holds the pool (a nested or concurrent
// call), so it is always safe to call.
void pool_run(int64_t n, int64_t grain, int threads, RangeFn fn, void* ctx);

}  // namespace ek

#endif  // EDGEKIT_POOL_H_
