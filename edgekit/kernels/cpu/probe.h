/* Machine probes used by the benchmarks (not on any model's path).
 *
 * ek_core_roundtrip_ns: two threads pass one cache line back and forth `iters` times; returns
 * the mean round trip in nanoseconds (0 if a thread could not start). It tells how far apart
 * two cores' caches are, which sets the cost of every fork-join region of the row-parallel
 * kernels: on the 2-vCPU KVM of the benchmarks it reads ~75 ns in one state and ~360 ns in the
 * other (likely vCPUs on one CCD vs on two). The threads are not pinned; on a machine with more
 * cores than two the OS picks which pair it measures. */
#ifndef EDGEKIT_PROBE_H_
#define EDGEKIT_PROBE_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

double ek_core_roundtrip_ns(int64_t iters);

#ifdef __cplusplus
}
#endif
#endif  // EDGEKIT_PROBE_H_
