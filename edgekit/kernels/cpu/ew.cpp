// Per-token decoder operators (ew.h). Loops are written so the compiler vectorises them; SwiGLU's
// exp has an explicit AVX2 path (a libm call per element would cost more than the op saves).
#include "ew.h"

#include <cmath>

#include "dot.h"
#include "wq_linear.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define EK_EW_X86 1
#endif

int ek_rms_norm(const float* x, const float* w, int64_t R, int64_t D, float eps, float* out) {
  if (!x || !w || !out || R <= 0 || D <= 0) return EK_BAD_ARG;
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = x + r * D;
    const float ss = ek::dot(xr, xr, D);
    const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
    float* o = out + r * D;
    for (int64_t k = 0; k < D; ++k) o[k] = xr[k] * inv * w[k];
  }
  return EK_OK;
}

int ek_rope_half(const float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                 int64_t hd, float* out) {
  if (!x || !cos || !sin || !out || B <= 0 || T <= 0 || H <= 0 || hd <= 0 || hd % 2) return EK_BAD_ARG;
  const int64_t half = hd / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* c = cos + t * hd;
      const float* s = sin + t * hd;
      for (int64_t h = 0; h < H; ++h) {
        const float* xi = x + ((b * T + t) * H + h) * hd;
        float* o = out + ((b * H + h) * T + t) * hd;
        for (int64_t i = 0; i < half; ++i) o[i] = xi[i] * c[i] + (-xi[i + half]) * s[i];
        for (int64_t i = half; i < hd; ++i) o[i] = xi[i] * c[i] + xi[i - half] * s[i];
      }
    }
  return EK_OK;
}

namespace {

#ifdef EK_EW_X86
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

__attribute__((target("avx2,fma"))) int64_t swiglu_avx2(const float* g, const float* u, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 e = exp8(_mm256_xor_ps(gv, sign));  // exp(-g)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
  }
  return i;
}
#endif

}  // namespace

int ek_swiglu(const float* g, const float* u, int64_t n, float* out) {
  if (!g || !u || !out || n <= 0) return EK_BAD_ARG;
  int64_t i = 0;
#ifdef EK_EW_X86
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) i = swiglu_avx2(g, u, n, out);
#endif
  for (; i < n; ++i) out[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  return EK_OK;
}
