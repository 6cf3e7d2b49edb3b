/* Small per-token operators of a decoder layer, so a quantized ExecuTorch program runs its
 * layers as edgekit calls without XNNPACK delegate calls in between (each of those costs a few
 * microseconds of setup for a few hundred floats of work). float32, contiguous.
 *
 *   ek_rms_norm  out[r, :] = x[r, :] * (1 / sqrt(mean(x[r, :]^2) + eps)) * w        x [R, D]
 *   ek_rope_half x [B, T, H, hd] -> out [B, H, T, hd] (the transpose to heads-first is fused):
 *                out = x * cos[t] + rot(x) * sin[t], rot(x) = cat(-x[hd/2:], x[:hd/2]),
 *                cos/sin [T, hd] full width (edgekit/export/transforms.py)
 *   ek_rope_heads one token's heads x [H, hd] -> out + h * out_stride for each head h (the same
 *                rotation, cos/sin the token's [hd] rows): writes straight into a cache row or a
 *                heads-first buffer
 *   ek_swiglu    out = silu(g) * u = g / (1 + exp(-g)) * u                         n values
 *
 * The reference is the model code (edgekit/models/llama.py); results agree to float rounding
 * (summation order, and exp: a Cephes-style polynomial, within 2 ulp, on AVX2). Return EK_OK or
 * EK_BAD_ARG. */
#ifndef EDGEKIT_EW_H_
#define EDGEKIT_EW_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int ek_rms_norm(const float* x, const float* w, int64_t R, int64_t D, float eps, float* out);
int ek_rope_half(const float* x, const float* cos, const float* sin, int64_t B, int64_t T, int64_t H,
                 int64_t hd, float* out);
int ek_rope_heads(const float* x, const float* cos, const float* sin, int64_t H, int64_t hd, float* out,
                  int64_t out_stride);
int ek_swiglu(const float* g, const float* u, int64_t n, float* out);

#ifdef __cplusplus
}
#endif
#endif  // EDGEKIT_EW_H_
