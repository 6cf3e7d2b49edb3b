// Per-token decoder operators (ew.h). Loops are written so the compiler vectorises them; SwiGLU's
// exp has an explicit AVX2 path (a libm call per element would cost more than the op saves).
#include "ew.h"

#include <cmath>

#include "dot.h"
#include "vexp.h"
#include "wq_linear.h"

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

int ek_rope_heads(const float* x, const float* cos, const float* sin, int64_t H, int64_t hd, float* out,
                  int64_t out_stride) {
  if (!x || !cos || !sin || !out || H <= 0 || hd <= 0 || hd % 2) return EK_BAD_ARG;
  const int64_t half = hd / 2;
  for (int64_t h = 0; h < H; ++h) {
    const float* xi = x + h * hd;
    float* o = out + h * out_stride;
    for (int64_t i = 0; i < half; ++i) o[i] = xi[i] * cos[i] + (-xi[i + half]) * sin[i];
    for (int64_t i = half; i < hd; ++i) o[i] = xi[i] * cos[i] + xi[i - half] * sin[i];
  }
  return EK_OK;
}

int ek_rope_half(const float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                 int64_t hd, float* out) {
  if (!x || !cos || !sin || !out || B <= 0 || T <= 0 || H <= 0 || hd <= 0 || hd % 2) return EK_BAD_ARG;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      ek_rope_heads(x + (b * T + t) * H * hd, cos + t * hd, sin + t * hd, H, hd, out + (b * H * T + t) * hd,
                    T * hd);
  return EK_OK;
}

namespace {

#ifdef EK_VEXP_X86
__attribute__((target("avx2,fma"))) int64_t swiglu_avx2(const float* g, const float* u, int64_t n, float* out) {
  const __m256 one = _mm256_set1_ps(1.f), sign = _mm256_set1_ps(-0.f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 gv = _mm256_loadu_ps(g + i);
    const __m256 e = ek::exp8(_mm256_xor_ps(gv, sign));  // exp(-g)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(gv, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
  }
  return i;
}
#endif

}  // namespace

int ek_swiglu(const float* g, const float* u, int64_t n, float* out) {
  if (!g || !u || !out || n <= 0) return EK_BAD_ARG;
  int64_t i = 0;
#ifdef EK_VEXP_X86
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) i = swiglu_avx2(g, u, n, out);
#endif
  for (; i < n; ++i) out[i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  return EK_OK;
}
