// A small fork-join pool for the row-parallel kernels (parallel.h).
//
// Decoding one token of a small model runs ~120 parallel regions of 2-15 us each, so the cost of
// starting and ending a region matters. The workers stay awake between regions: they spin on a
// generation counter for up to kSpinUs after each job and only then sleep on a condition
// variable. The job's description shares the counter's cache line, and each worker reports
// completion on its own line. A worker outside a job (an earlier call used more threads) sleeps
// until a job needs it and is never waited for. Each thread takes one block of rows in one
// call: no shared counters while working (so no cache-line transfers between cores mid-region).
//
// The blocks are not even: each kind of region (fn, n, work hint, thread count) keeps row shares
// learned from how long each thread took last time (rows per ns, smoothed a quarter of the way
// each call), so a thread that starts later or runs slower gets fewer rows. On this 2-vCPU VM, in
// the "far" state (round trip ~370 ns), a worker sees a job 0.4-0.7 us after it is published and
// then takes ~15% longer per row than the caller (SmolLM2's linears, rdtsc per region; asking
// for all activation lines up front did not change it), so with an even split the caller
// waited ~1.5 us in every region.
//
// Large regions (rows x work hint >= 2^22, ~50 us of rows or more: SmolLM2's head, Qwen2.5's
// gate|up, down and head) also balance inside the region: each thread takes its learned block
// a chunk (~2^18 multiply-adds) at a time from a range on its own cache line, then takes chunks
// off the end of the other blocks. Their sizes vary with how the memory bandwidth is shared from
// one call to the next, which a split learned from earlier calls cannot follow. Alternating
// runs: SmolLM2 w2g64a8 798 -> 813 tok/s (near state, 7 rounds), Qwen2.5 w2g64a8 216 -> 217
// (near, 6) and 213 -> 217 (far, 2). SmolLM2 w2g64a8, 2 threads, alternating
// rounds grouped by state: far 669 -> 753 tok/s median (6 rounds), near 760 -> 759 (4).
//
// Measured on the 2-core VM (whose two vCPUs are sometimes ~80 ns and sometimes ~360 ns apart):
// an empty region costs 80-90 ns near and 450-470 ns far (per-range atomic counters with work
// stealing and one shared pending counter, before: 220 and 720-740 ns). SmolLM2 w2g64a8, 2
// threads, 9 alternating rounds: 614 -> 636 tok/s median.
// Every row is computed the same way whichever thread takes it, so outputs do not depend on the
// split.
#ifndef EDGEKIT_POOL_H_
#define EDGEKIT_POOL_H_

#include <stdint.h>

namespace ek {

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);

// fn(ctx, b, e) over [0, n) on `threads` threads (the caller included): one call per thread (a
// thread may get an empty block, and then no call), or in a large region several calls of a
// chunk each. Every row is passed exactly once.
// Runs serially (one call) when threads <= 1, n <= 1, or another job holds the pool (a nested or
// concurrent call), so it is always safe to call.
// `kind` tells regions with the same fn and n apart (parallel_rows passes its work per row):
// each kind keeps its own learned split.
void pool_run(int64_t n, int threads, RangeFn fn, void* ctx, uint64_t kind = 0);

}  // namespace ek

#endif  // EDGEKIT_POOL_H_
