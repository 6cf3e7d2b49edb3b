/* Machine probes used by the benchmarks (not on any model's path).
 *
 * ek_core_roundtrip_ns: two threads pass one cache line back and forth `iters` times; returns
 * the mean round trip in nanoseconds (0 if a thread could not start). It tells how far apart
 * two cores' caches are, which sets the cost of every fork-join region of the row-parallel
 * kernels: on the 2-vCPU KVM of the benchmarks it reads ~75 ns in one state and ~360 ns in the
 * other (likely vCPUs on one CCD vs on two). The threads are not pinned; on a machine with more
 * cores than two the OS picks which pair it measures.
 *
 * ek_pool_balance_probe: `calls` pool regions of n rows on `threads` threads (pool.h, work hint
 * `kind` per row: n * kind >= 2^22 makes the region large, so its threads steal), where a
 * row taken by any thread but the caller costs `slow_ns` ns of spinning and a caller's row
 * costs `fast_ns`; with `hold`, a worker's first rows also wait (up to 2 s) until the caller has
 * run every other row of the region. Writes the caller's share of the rows in the last region to
 * *caller_share and
 * the number of (region, row) pairs not run exactly once to *bad_rows. Returns 0, or -1 when an
 * argument is out of range. Shows that the pool's learned split moves rows away from a slower
 * thread without losing or repeating a row. */
#ifndef EDGEKIT_PROBE_H_
#define EDGEKIT_PROBE_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

double ek_core_roundtrip_ns(int64_t iters);
int ek_pool_balance_probe(int threads, int calls, int64_t n, int64_t fast_ns, int64_t slow_ns,
                          uint64_t kind, int hold, double* caller_share, int64_t* bad_rows);

#ifdef __cplusplus
}
#endif
#endif  // EDGEKIT_PROBE_H_
