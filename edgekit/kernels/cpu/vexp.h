// exp for 8 floats (AVX2 + FMA), shared by ew.cpp (SwiGLU) and attn.cpp (softmax); internal.
// Callers compile it into functions with target("avx2,fma") and pick them by CPUID.
#ifndef EDGEKIT_VEXP_H_
#define EDGEKIT_VEXP_H_

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define EK_VEXP_X86 1

namespace ek {

// exp(x) for 8 floats: x = n ln2 + r, |r| <= ln2 / 2, exp(r) by the Cephes expf polynomial,
// 2^n through the exponent bits; inputs clamped to +-88.37 (exp(-88.37) ~ 4e-39).
__attribute__((target("avx2,fma"))) inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f)), _mm256_set1_ps(88.3762626647949f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

}  // namespace ek

#endif
#endif  // EDGEKIT_VEXP_H_
