// Attention over a static KV cache (attn.h). Scalar code written so the compiler vectorises
// the hd-long loops (eight independent partial sums; no -ffast-math needed).
#include "attn.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <new>
#include <vector>

#include "dot.h"
#include "parallel.h"
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

}  // namespace

extern "C" int ek_sdpa_cache(const float* q, int64_t H, int64_t T, int64_t hd, const float* k,
                             const float* v, int64_t KV, int64_t S, const float* mask, float scale,
                             float* out) {
  if (H <= 0 || T <= 0 || hd <= 0 || KV <= 0 || S <= 0 || H % KV != 0) return EK_BAD_ARG;
  // Per row: one past its last visible slot (the rest of the cache is never read).
  thread_local std::vector<int64_t> lens;
  try {
    if (lens.size() < static_cast<size_t>(T)) lens.resize(T);
  } catch (const std::bad_alloc&) {
    return EK_NO_MEMORY;
  }
  for (int64_t t = 0; t < T; ++t) {
    const float* m = mask + t * S;
    int64_t n = S;
    while (n > 0 && m[n - 1] == -std::numeric_limits<float>::infinity()) --n;
    lens[t] = n;
  }
  const int64_t rep = H / KV;
  const int64_t* len = lens.data();
  std::atomic<bool> oom{false};
  ek::parallel_rows(H * T, S * hd / 8, [&](int64_t a, int64_t b) {
    thread_local std::vector<float> sc;  // scores of one row; grown once per thread
    try {
      if (sc.size() < static_cast<size_t>(S)) sc.resize(S);
    } catch (const std::bad_alloc&) {
      oom = true;
      return;
    }
    for (int64_t i = a; i < b; ++i) {
      const int64_t h = i / T, t = i % T, kvh = h / rep;
      row(q + (h * T + t) * hd, k + kvh * S * hd, v + kvh * S * hd, mask + t * S, len[t], hd, scale,
          sc.data(), out + t * H * hd + h * hd);
    }
  });
  return oom ? EK_NO_MEMORY : EK_OK;
}
