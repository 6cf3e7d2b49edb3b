// Row-parallel loop (shared by the kernels in this directory) on edgekit's own spinning pool
// (pool.h), as many threads as the ExecuTorch threadpool is set to. Built without
// EDGEKIT_USE_ET_THREADPOOL (the selftest, a cross build) it runs serially.
#ifndef EDGEKIT_PARALLEL_H_
#define EDGEKIT_PARALLEL_H_

#include <stdint.h>

#ifdef EDGEKIT_USE_ET_THREADPOOL
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include "pool.h"
#endif

namespace ek {

// f(begin, end) over [0, N), one block of rows per thread (pool.h); work_per_row (multiply-adds)
// decides whether waking the pool pays: below ~64K multiply-adds in all it costs more than it saves.
template <class F>
void parallel_rows(int64_t N, int64_t work_per_row, const F& f) {
#ifdef EDGEKIT_USE_ET_THREADPOOL
  const int64_t threads = executorch::extension::get_thread_count();
  if (threads > 1 && N > 1 && N * work_per_row >= (1 << 16)) {
    ek::pool_run(N, static_cast<int>(threads),
                 [](void* ctx, int64_t a, int64_t b) { (*static_cast<const F*>(ctx))(a, b); },
                 const_cast<F*>(&f), static_cast<uint64_t>(work_per_row));
    return;
  }
#endif
  (void)work_per_row;
  f(0, N);
}

}  // namespace ek

#endif  // EDGEKIT_PARALLEL_H_
