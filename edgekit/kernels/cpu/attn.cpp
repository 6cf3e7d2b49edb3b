// Attention over a static KV cache (attn.h). A portable row (scalar code the compiler vectorises
// at the baseline ISA: eight independent partial sums, libm exp) and, picked by CPUID, an AVX2 +
// FMA row with 8-wide exp (vexp.h); the library has no -march, so the portable row is SSE2 only.
#include "attn.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <new>
#include <vector>

#include "dot.h"
#include "parallel.h"
#include "vexp.h"
#include "wq_linear.h"

namespace {

using ek::dot;

// One query row: softmax over the visible slots < len, weighted sum of v.
void row(const float* qr, const float* k, const float* v, const float* m, int64_t len, int64_t hd,
         float scale, float* sc, int32_t* /*idx*/, float* o) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < len; ++j) {
    sc[j] = m[j] == -std::numeric_limits<float>::infinity() ? m[j] : dot(qr, k + j * hd, hd) * scale + m[j];
    mx = std::max(mx, sc[j]);
  }
  std::fill(o, o + hd, 0.f);
  if (mx == -std::numeric_limits<float>::infinity()) return;  // sees nothing: zeros (torch: NaN)
  float sum = 0.f;
  for (int64_t j = 0; j < len; ++j) {
    const float e = sc[j] == -std::numeric_limits<float>::infinity() ? 0.f : std::exp(sc[j] - mx);
    sum += e;
    if (e == 0.f) continue;
    const float* vj = v + j * hd;
    for (int64_t d = 0; d < hd; ++d) o[d] += e * vj[d];
  }
  const float inv = 1.f / sum;
  for (int64_t d = 0; d < hd; ++d) o[d] *= inv;
}

#ifdef EK_VEXP_X86
__attribute__((target("avx2,fma"))) inline float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), a1);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), a0);
  const __m256 v = _mm256_add_ps(a0, a1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  float s = _mm_cvtss_f32(_mm_add_ss(h, _mm_shuffle_ps(h, h, 1)));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// Scores of 8 keys at once: eight FMA accumulators (one per key) over hd, then one transposing
// reduction (hadd tree) gives the 8 dot products in one vector, instead of 8 horizontal sums.
__attribute__((target("avx2,fma"))) inline __m256 dot8_avx2(const float* q, const float* k, int64_t hd) {
  __m256 a[8];
  for (int i = 0; i < 8; ++i) a[i] = _mm256_setzero_ps();
  int64_t d = 0;
  for (; d + 8 <= hd; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
    for (int i = 0; i < 8; ++i) a[i] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + i * hd + d), a[i]);
  }
  const __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
  const __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
  const __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
  __m256 s = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
  if (d < hd) {  // hd not a multiple of 8: the tail of each key in scalar
    alignas(32) float t[8];
    for (int i = 0; i < 8; ++i) {
      float r = 0.f;
      for (int64_t e = d; e < hd; ++e) r += q[e] * k[i * hd + e];
      t[i] = r;
    }
    s = _mm256_add_ps(s, _mm256_load_ps(t));
  }
  return s;
}

// row() for AVX2 + FMA: scores 8 keys at a time (dot8_avx2), exps 8 at a time, and the weighted
// sum of v accumulated in registers 64 columns at a time. Masked slots get weight exactly 0 and
// their V rows are skipped. The same result as row() up to float summation order.
__attribute__((target("avx2,fma"))) void row_avx2(const float* qr, const float* k, const float* v, const float* m,
                                                 int64_t len, int64_t hd, float scale, float* sc, int32_t* idx,
                                                 float* o) {
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  const __m256 vninf = _mm256_set1_ps(ninf), vscale = _mm256_set1_ps(scale);
  __m256 vmx = vninf;
  int64_t j = 0;
  for (; j + 8 <= len; j += 8) {
    const __m256 mv = _mm256_loadu_ps(m + j);
    const __m256 s8 = _mm256_blendv_ps(_mm256_fmadd_ps(dot8_avx2(qr, k + j * hd, hd), vscale, mv), vninf,
                                       _mm256_cmp_ps(mv, vninf, _CMP_EQ_OQ));
    _mm256_storeu_ps(sc + j, s8);
    vmx = _mm256_max_ps(s8, vmx);  // a NaN score is ignored, as std::max(mx, s) in row() does
  }
  __m128 mx4 = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
  mx4 = _mm_max_ps(mx4, _mm_movehl_ps(mx4, mx4));
  float mx = std::max(_mm_cvtss_f32(mx4), _mm_cvtss_f32(_mm_shuffle_ps(mx4, mx4, 1)));
  for (; j < len; ++j) {
    sc[j] = m[j] == ninf ? ninf : dot_avx2(qr, k + j * hd, hd) * scale + m[j];
    mx = std::max(mx, sc[j]);
  }
  std::fill(o, o + hd, 0.f);
  if (mx == ninf) return;
  // Weights, and the visible slots' numbers compacted into idx (room for len), so that the
  // weighted sum of v below has no branch.
  int64_t nvis = 0;
  float sum = 0.f;
  j = 0;
  const __m256 vmax = _mm256_set1_ps(mx);
  for (; j + 8 <= len; j += 8) {
    const __m256 s8 = _mm256_loadu_ps(sc + j);
    const __m256 e = _mm256_andnot_ps(_mm256_cmp_ps(s8, vninf, _CMP_EQ_OQ), ek::exp8(_mm256_sub_ps(s8, vmax)));
    _mm256_storeu_ps(sc + j, e);
  }
  for (; j < len; ++j) sc[j] = sc[j] == ninf ? 0.f : std::exp(sc[j] - mx);
  for (j = 0; j < len; ++j) {
    sum += sc[j];
    if (sc[j] != 0.f) {
      sc[nvis] = sc[j];  // nvis <= j: compacting in place never overwrites an unread weight
      idx[nvis++] = static_cast<int32_t>(j);
    }
  }
  const __m256 inv = _mm256_set1_ps(1.f / sum);
  int64_t d = 0;
  // 64 output columns at a time in 8 registers (8 independent FMA chains). Slots go in blocks of
  // 64 so that a block's V rows stay in L1 across the column passes (hd = 128: two passes);
  // passes over all slots at once made hd = 128 at 2K context slower than a plain axpy.
  const int64_t d64 = hd / 64 * 64;
  if (d64 > 0) {
    for (int64_t n0 = 0; n0 < nvis; n0 += 64) {
      const int64_t n1 = std::min(nvis, n0 + 64);
      for (d = 0; d < d64; d += 64) {
        __m256 a[8];
        for (int c = 0; c < 8; ++c) a[c] = _mm256_loadu_ps(o + d + 8 * c);
        for (int64_t n = n0; n < n1; ++n) {
          const __m256 e = _mm256_set1_ps(sc[n]);
          const float* vj = v + idx[n] * hd + d;
          for (int c = 0; c < 8; ++c) a[c] = _mm256_fmadd_ps(e, _mm256_loadu_ps(vj + 8 * c), a[c]);
        }
        for (int c = 0; c < 8; ++c) _mm256_storeu_ps(o + d + 8 * c, a[c]);
      }
    }
    for (d = 0; d < d64; d += 8) _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_loadu_ps(o + d), inv));
  }
  d = d64;
  for (; d + 8 <= hd; d += 8) {  // 8 columns at a time, two slots a step
    __m256 a0 = _mm256_setzero_ps(), a1 = a0;
    int64_t n = 0;
    for (; n + 2 <= nvis; n += 2) {
      a0 = _mm256_fmadd_ps(_mm256_set1_ps(sc[n]), _mm256_loadu_ps(v + idx[n] * hd + d), a0);
      a1 = _mm256_fmadd_ps(_mm256_set1_ps(sc[n + 1]), _mm256_loadu_ps(v + idx[n + 1] * hd + d), a1);
    }
    if (n < nvis) a0 = _mm256_fmadd_ps(_mm256_set1_ps(sc[n]), _mm256_loadu_ps(v + idx[n] * hd + d), a0);
    _mm256_storeu_ps(o + d, _mm256_mul_ps(_mm256_add_ps(a0, a1), inv));
  }
  for (; d < hd; ++d) {  // remaining columns (hd not a multiple of 8)
    float a = 0.f;
    for (int64_t n = 0; n < nvis; ++n) a += sc[n] * v[idx[n] * hd + d];
    o[d] = a * (1.f / sum);
  }
}
#endif

using RowFn = void (*)(const float*, const float*, const float*, const float*, int64_t, int64_t, float, float*,
                       int32_t*, float*);

RowFn pick_row() {
#ifdef EK_VEXP_X86
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return row_avx2;
#endif
  return row;
}

}  // namespace

extern "C" int ek_sdpa_cache(const float* q, int64_t H, int64_t T, int64_t hd, const float* k,
                             const float* v, int64_t KV, int64_t S, const float* mask, float scale,
                             float* out) {
  return ek_sdpa_cache_impl(q, H, T, hd, k, v, KV, S, mask, scale, out, EK_IMPL_AUTO);
}

extern "C" int ek_sdpa_cache_impl(const float* q, int64_t H, int64_t T, int64_t hd, const float* k,
                                  const float* v, int64_t KV, int64_t S, const float* mask, float scale,
                                  float* out, int impl) {
  if (H <= 0 || T <= 0 || hd <= 0 || KV <= 0 || S <= 0 || H % KV != 0) return EK_BAD_ARG;
  static const RowFn best = pick_row();
  RowFn row_fn = best;
  if (impl == EK_IMPL_SCALAR) {
    row_fn = row;
  } else if (impl == EK_IMPL_AVX2) {
    if (best == row) return EK_UNSUPPORTED;
  } else if (impl != EK_IMPL_AUTO) {
    return EK_UNSUPPORTED;
  }
  // Per row: one past its last visible slot (the rest of the cache is never read).
  thread_local std::vector<int64_t> lens;
  try {
    if (lens.size() < static_cast<size_t>(T)) lens.resize(T);
  } catch (const std::bad_alloc&) {
    return EK_NO_MEMORY;
  }
  int64_t longest = 0;
  for (int64_t t = 0; t < T; ++t) {
    const float* m = mask + t * S;
    int64_t n = S;
    while (n > 0 && m[n - 1] == -std::numeric_limits<float>::infinity()) --n;
    lens[t] = n;
    longest = std::max(longest, n);
  }
  const int64_t rep = H / KV;
  const int64_t* len = lens.data();
  std::atomic<bool> oom{false};
  // work per (head, row), in parallel_rows' units (an int8 linear's multiply-adds): 2 hd
  // float multiply-adds per visible slot, plus its exp and the scattered V reads, counted x4
  ek::parallel_rows(H * T, 8 * longest * hd, [&](int64_t a, int64_t b) {
    // scores of one row, and the AVX2 row's visible slot numbers; grown once per thread
    thread_local std::vector<float> sc;
    thread_local std::vector<int32_t> idx;
    try {
      if (sc.size() < static_cast<size_t>(S)) sc.resize(S);
      if (idx.size() < static_cast<size_t>(S)) idx.resize(S);
    } catch (const std::bad_alloc&) {
      oom = true;
      return;
    }
    for (int64_t i = a; i < b; ++i) {
      const int64_t h = i / T, t = i % T, kvh = h / rep;
      row_fn(q + (h * T + t) * hd, k + kvh * S * hd, v + kvh * S * hd, mask + t * S, len[t], hd, scale,
          sc.data(), idx.data(), out + t * H * hd + h * hd);
    }
  });
  return oom ? EK_NO_MEMORY : EK_OK;
}
