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
         float scale, float* sc, float* o) {
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

// row() with FMA dots and axpys and the exps 8 at a time; masked slots get weight exactly 0 and
// are skipped, so their K/V rows are never read either.
__attribute__((target("avx2,fma"))) void row_avx2(const float* qr, const float* k, const float* v, const float* m,
                                                 int64_t len, int64_t hd, float scale, float* sc, float* o) {
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  float mx = ninf;
  for (int64_t j = 0; j < len; ++j) {
    sc[j] = m[j] == ninf ? ninf : dot_avx2(qr, k + j * hd, hd) * scale + m[j];
    mx = std::max(mx, sc[j]);
  }
  std::fill(o, o + hd, 0.f);
  if (mx == ninf) return;
  int64_t j = 0;
  const __m256 vmx = _mm256_set1_ps(mx), vninf = _mm256_set1_ps(ninf);
  for (; j + 8 <= len; j += 8) {
    const __m256 s8 = _mm256_loadu_ps(sc + j);
    const __m256 e = ek::exp8(_mm256_sub_ps(s8, vmx));
    _mm256_storeu_ps(sc + j, _mm256_andnot_ps(_mm256_cmp_ps(s8, vninf, _CMP_EQ_OQ), e));
  }
  for (; j < len; ++j) sc[j] = sc[j] == ninf ? 0.f : std::exp(sc[j] - mx);
  float sum = 0.f;
  for (j = 0; j < len; ++j) {
    const float e = sc[j];
    sum += e;
    if (e == 0.f) continue;
    const float* vj = v + j * hd;
    const __m256 ev = _mm256_set1_ps(e);
    int64_t d = 0;
    for (; d + 8 <= hd; d += 8)
      _mm256_storeu_ps(o + d, _mm256_fmadd_ps(ev, _mm256_loadu_ps(vj + d), _mm256_loadu_ps(o + d)));
    for (; d < hd; ++d) o[d] += e * vj[d];
  }
  const float inv = 1.f / sum;
  for (int64_t d = 0; d < hd; ++d) o[d] *= inv;
}
#endif

using RowFn = void (*)(const float*, const float*, const float*, const float*, int64_t, int64_t, float, float*,
                       float*);

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
  // work per (head, row): ~2 hd multiply-adds per visible slot
  ek::parallel_rows(H * T, 2 * longest * hd, [&](int64_t a, int64_t b) {
    thread_local std::vector<float> sc;  // scores of one row; grown once per thread
    try {
      if (sc.size() < static_cast<size_t>(S)) sc.resize(S);
    } catch (const std::bad_alloc&) {
      oom = true;
      return;
    }
    for (int64_t i = a; i < b; ++i) {
      const int64_t h = i / T, t = i % T, kvh = h / rep;
      row_fn(q + (h * T + t) * hd, k + kvh * S * hd, v + kvh * S * hd, mask + t * S, len[t], hd, scale,
          sc.data(), out + t * H * hd + h * hd);
    }
  });
  return oom ? EK_NO_MEMORY : EK_OK;
}
