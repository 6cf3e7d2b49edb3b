// The runner's greedy pick (header-only, no ExecuTorch dependency, so a test compiles it alone:
// tests/test_native.py::test_greedy_argmax_matches_numpy).
#ifndef EDGEKIT_ARGMAX_H_
#define EDGEKIT_ARGMAX_H_

#include <stdint.h>

#include <algorithm>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace edgekit {

// Greedy pick: the first index of the maximum, as std::max_element (and torch.argmax, NaN aside).
// The AVX2 path finds the maximum 32 floats a step, then the first slot equal to it: ~3 us over
// SmolLM2's 49152 logits instead of ~25 us for the scalar loop (its compare carries a dependency
// from one element to the next). A row holding a NaN takes the scalar loop, so both agree.
inline int64_t argmax_scalar(const float* x, int64_t n) {
  return static_cast<int64_t>(std::max_element(x, x + n) - x);
}

#if defined(__x86_64__)
__attribute__((target("avx2"))) inline int64_t argmax_avx2(const float* x, int64_t n) {
  if (n < 32) return argmax_scalar(x, n);
  __m256 m[4] = {_mm256_loadu_ps(x), _mm256_loadu_ps(x + 8), _mm256_loadu_ps(x + 16), _mm256_loadu_ps(x + 24)};
  __m256 nan = _mm256_setzero_ps();  // any NaN seen (max_ps would drop one kept in m)
  for (int c = 0; c < 4; ++c) nan = _mm256_or_ps(nan, _mm256_cmp_ps(m[c], m[c], _CMP_UNORD_Q));
  int64_t i = 32;
  for (; i + 32 <= n; i += 32)
    for (int c = 0; c < 4; ++c) {
      const __m256 v = _mm256_loadu_ps(x + i + 8 * c);
      nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
      m[c] = _mm256_max_ps(m[c], v);
    }
  if (_mm256_movemask_ps(nan) != 0) return argmax_scalar(x, n);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3])));
  float mx = *std::max_element(lanes, lanes + 8);
  for (int64_t j = i; j < n; ++j) {  // the tail
    if (x[j] != x[j]) return argmax_scalar(x, n);
    mx = std::max(mx, x[j]);
  }
  const __m256 vm = _mm256_set1_ps(mx);
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    const int hit = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + j), vm, _CMP_EQ_OQ));
    if (hit) return j + __builtin_ctz(static_cast<unsigned>(hit));
  }
  for (; j < n; ++j)
    if (x[j] == mx) return j;
  return 0;  // not reached: mx is one of the values
}
#endif

inline int64_t greedy_argmax(const float* x, int64_t n) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return argmax_avx2(x, n);
#endif
  return argmax_scalar(x, n);
}

}  // namespace edgekit

#endif  // EDGEKIT_ARGMAX_H_
