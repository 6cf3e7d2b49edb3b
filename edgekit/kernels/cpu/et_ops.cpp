// ExecuTorch custom operators over the wq_linear kernels, registered into libexecutorch.so's
// operator registry by static initialisers when this library is loaded:
//
//   edgekit::linear_w2.out(Tensor x, Tensor qweight, Tensor scale, Tensor zero,
//                          int group_size, int in_features, *, Tensor(a!) out) -> Tensor(a!)
//   edgekit::linear_w3.out / linear_w4.out / linear_w8.out(... same ...)
//   edgekit::linear_w{2,3,4,8}a8.out(... same ...)  int8 activations per group (ek_linear_wq_a8)
//   edgekit::linear_w{2,4,8}a8_r16.out(..., int in_features, int out_features, *, out)  the same
//                           on weights in the row-interleaved order (ek_linear_wq_a8_r16)
//   edgekit::sdpa_cache.out(Tensor q, Tensor k_cache, Tensor v_cache, Tensor mask, *,
//                           Tensor(a!) out) -> Tensor(a!)         attention over the KV cache
//                           reading only visible slots (attn.h)
//   edgekit::rms_norm.out(Tensor x, Tensor weight, float eps, *, Tensor(a!) out)
//   edgekit::rope.out(Tensor x, Tensor cos, Tensor sin, *, Tensor(a!) out)   x [B, T, H, hd]
//                           -> out [B, H, T, hd], half-split RoPE with full-width tables
//   edgekit::swiglu.out(Tensor gate, Tensor up, *, Tensor(a!) out)         silu(gate) * up
//                           (these three: ew.h; they keep a quantized program's layers free of
//                           XNNPACK delegate calls)
//   edgekit::sdpa_kv.out(q, k, v, Tensor(a!) k_cache, Tensor(b!) v_cache, input_pos, mask, *, out)
//   edgekit::qkv_attn.out(qkv, cos, sin, Tensor(a!) k_cache, Tensor(b!) v_cache, input_pos, mask,
//                         int n_heads, *, out)   RoPE + cache writes + attention on fused q|k|v
//   edgekit::swiglu_gu.out(Tensor gate_up, *, Tensor(a!) out)   swiglu on fused w1|w3
//
// x float32 [..., K] (K = in_features), qweight uint8 [N, row_bytes], scale/zero float16
// [N, ceil(K/g)], group_size <= 0 = one group per row; out float32 [..., N] (resized here).
// The schemas match edgekit/kernels/ops.py (torch.library), which is what export records.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/kernel/kernel_includes.h>

#include <array>
#include <cmath>
#include <cstring>
#include <new>
#include <vector>

#include "attn.h"
#include "ew.h"
#include "wq_linear.h"

namespace edgekit {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

bool all_float(std::initializer_list<const Tensor*> ts) {
  for (const Tensor* t : ts)
    if (t->scalar_type() != ScalarType::Float) return false;
  return true;
}

bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.dim() != b.dim()) return false;
  for (ssize_t d = 0; d < a.dim(); ++d)
    if (a.size(d) != b.size(d)) return false;
  return true;
}

// out = x's shape with the last dim N (a linear's output).
bool resize_last(const Tensor& x, int64_t N, Tensor& out) {
  std::array<SizesType, executorch::runtime::kTensorDimensionLimit> sizes{};
  for (ssize_t d = 0; d + 1 < x.dim(); ++d) sizes[d] = static_cast<SizesType>(x.size(d));
  sizes[x.dim() - 1] = static_cast<SizesType>(N);
  return executorch::runtime::resize_tensor(out, {sizes.data(), static_cast<size_t>(x.dim())}) == Error::Ok;
}

template <int BITS, bool A8 = false>
Tensor& linear_wq_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qweight,
                      const Tensor& scale, const Tensor& zero, int64_t group_size,
                      int64_t in_features, Tensor& out) {
  const int64_t K = in_features;
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float,
                      InvalidArgument, out, "edgekit::linear_w%d: x and out must be float32", BITS);
  ET_KERNEL_CHECK_MSG(ctx, x.dim() >= 1 && K > 0 && x.size(x.dim() - 1) == K, InvalidArgument, out,
                      "edgekit::linear_w%d: x last dim must equal in_features %lld", BITS,
                      static_cast<long long>(K));
  ET_KERNEL_CHECK_MSG(ctx, qweight.scalar_type() == ScalarType::Byte && qweight.dim() == 2,
                      InvalidArgument, out, "edgekit::linear_w%d: qweight must be uint8 [N, row_bytes]",
                      BITS);
  const int64_t N = qweight.size(0);
  const int64_t g = group_size <= 0 ? K : group_size;
  const int64_t G = (K + g - 1) / g;
  ET_KERNEL_CHECK_MSG(ctx, qweight.size(1) == ek_row_bytes(K, BITS, group_size), InvalidArgument, out,
                      "edgekit::linear_w%d: qweight has %lld bytes per row, layout needs %lld", BITS,
                      static_cast<long long>(qweight.size(1)),
                      static_cast<long long>(ek_row_bytes(K, BITS, group_size)));
  for (const Tensor* t : {&scale, &zero}) {
    ET_KERNEL_CHECK_MSG(ctx, t->scalar_type() == ScalarType::Half && t->dim() == 2 && t->size(0) == N &&
                             t->size(1) == G,
                        InvalidArgument, out, "edgekit::linear_w%d: scale/zero must be float16 [N, %lld]",
                        BITS, static_cast<long long>(G));
  }
  ET_KERNEL_CHECK_MSG(ctx, resize_last(x, N, out), InvalidArgument, out, "edgekit::linear_w%d: cannot resize out",
                      BITS);
  const int64_t M = x.numel() / K;
  const float* xp = x.const_data_ptr<float>();
  const uint8_t* qp = qweight.const_data_ptr<uint8_t>();
  const auto* sp = static_cast<const uint16_t*>(scale.const_data_ptr());
  const auto* zp = static_cast<const uint16_t*>(zero.const_data_ptr());
  float* yp = out.mutable_data_ptr<float>();
  int st = A8 ? ek_linear_wq_a8(xp, M, K, qp, sp, zp, N, BITS, group_size, yp, EK_IMPL_AUTO)
              : ek_linear_wq(xp, M, K, qp, sp, zp, N, BITS, group_size, yp, nullptr, 0, EK_IMPL_AUTO);
  ET_KERNEL_CHECK_MSG(ctx, st == EK_OK, Internal, out, "edgekit::linear_w%d: %s", BITS,
                      ek_status_str(st));
  return out;
}

Tensor& linear_w2_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qweight,
                      const Tensor& scale, const Tensor& zero, int64_t group_size,
                      int64_t in_features, Tensor& out) {
  return linear_wq_out<2>(ctx, x, qweight, scale, zero, group_size, in_features, out);
}

Tensor& linear_w4_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qweight,
                      const Tensor& scale, const Tensor& zero, int64_t group_size,
                      int64_t in_features, Tensor& out) {
  return linear_wq_out<4>(ctx, x, qweight, scale, zero, group_size, in_features, out);
}

Tensor& linear_w3_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qweight,
                      const Tensor& scale, const Tensor& zero, int64_t group_size,
                      int64_t in_features, Tensor& out) {
  return linear_wq_out<3>(ctx, x, qweight, scale, zero, group_size, in_features, out);
}

Tensor& linear_w8_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qweight,
                      const Tensor& scale, const Tensor& zero, int64_t group_size,
                      int64_t in_features, Tensor& out) {
  return linear_wq_out<8>(ctx, x, qweight, scale, zero, group_size, in_features, out);
}

#define EK_A8_OP(B)                                                                          \
  Tensor& linear_w##B##a8_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qweight, \
                              const Tensor& scale, const Tensor& zero, int64_t group_size,      \
                              int64_t in_features, Tensor& out) {                               \
    return linear_wq_out<B, true>(ctx, x, qweight, scale, zero, group_size, in_features, out);   \
  }
EK_A8_OP(2)
EK_A8_OP(3)
EK_A8_OP(4)
EK_A8_OP(8)
#undef EK_A8_OP

// edgekit::linear_w{2,4,8}a8_r16.out(x, qweight, scale, zero, group_size, in_features,
// out_features, *, out): the a8 linear on weights in the row-interleaved order
// (wq_linear.h ek_linear_wq_a8_r16; qweight uint8 [ceil(N / 16), 16 row_bytes], scale and zero
// float16 [ceil(N / 16), 16 G]).
template <int BITS>
Tensor& linear_r16_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qweight, const Tensor& scale,
                       const Tensor& zero, int64_t group_size, int64_t in_features, int64_t out_features,
                       Tensor& out) {
  const int64_t K = in_features, N = out_features;
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float,
                      InvalidArgument, out, "edgekit::linear_w%da8_r16: x and out must be float32", BITS);
  ET_KERNEL_CHECK_MSG(ctx, x.dim() >= 1 && K > 0 && N > 0 && x.size(x.dim() - 1) == K, InvalidArgument, out,
                      "edgekit::linear_w%da8_r16: x last dim must equal in_features %lld", BITS,
                      static_cast<long long>(K));
  const int64_t nbytes = ek_r16_bytes(N, K, BITS, group_size);
  const int64_t NB = (N + 15) / 16;
  const int64_t g = group_size <= 0 ? K : group_size;
  const int64_t G = (K + g - 1) / g;
  ET_KERNEL_CHECK_MSG(ctx, nbytes > 0 && qweight.scalar_type() == ScalarType::Byte && qweight.dim() == 2 &&
                               qweight.size(0) == NB && qweight.numel() == nbytes,
                      InvalidArgument, out, "edgekit::linear_w%da8_r16: qweight must be uint8 [%lld, %lld]", BITS,
                      static_cast<long long>(NB), static_cast<long long>(nbytes > 0 ? nbytes / NB : 0));
  for (const Tensor* t : {&scale, &zero}) {
    ET_KERNEL_CHECK_MSG(ctx, t->scalar_type() == ScalarType::Half && t->dim() == 2 && t->size(0) == NB &&
                             t->size(1) == 16 * G,
                        InvalidArgument, out, "edgekit::linear_w%da8_r16: scale/zero must be float16 [%lld, %lld]",
                        BITS, static_cast<long long>(NB), static_cast<long long>(16 * G));
  }
  ET_KERNEL_CHECK_MSG(ctx, resize_last(x, N, out), InvalidArgument, out,
                      "edgekit::linear_w%da8_r16: cannot resize out", BITS);
  const int st = ek_linear_wq_a8_r16(x.const_data_ptr<float>(), x.numel() / K, K, qweight.const_data_ptr<uint8_t>(),
                                     static_cast<const uint16_t*>(scale.const_data_ptr()),
                                     static_cast<const uint16_t*>(zero.const_data_ptr()), N, BITS, group_size,
                                     out.mutable_data_ptr<float>(), EK_IMPL_AUTO);
  ET_KERNEL_CHECK_MSG(ctx, st == EK_OK, Internal, out, "edgekit::linear_w%da8_r16: %s", BITS, ek_status_str(st));
  return out;
}

#define EK_R16_OP(B)                                                                                        \
  Tensor& linear_w##B##a8_r16_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& qweight,         \
                                  const Tensor& scale, const Tensor& zero, int64_t group_size,              \
                                  int64_t in_features, int64_t out_features, Tensor& out) {                 \
    return linear_r16_out<B>(ctx, x, qweight, scale, zero, group_size, in_features, out_features, out);     \
  }
EK_R16_OP(2)
EK_R16_OP(4)
EK_R16_OP(8)
#undef EK_R16_OP

// What attend() needs, checked by every attention op before it writes anything: caches float32
// [1, KV, S, hd] of one shape with KV dividing H, mask float32 [T, S], out float32.
bool attend_args_ok(KernelRuntimeContext& ctx, const char* op, int64_t H, int64_t T, int64_t hd,
                    const Tensor& k_cache, const Tensor& v_cache, const Tensor& mask, const Tensor& out) {
  const bool ok = all_float({&k_cache, &v_cache, &mask, &out}) && k_cache.dim() == 4 && mask.dim() == 2 &&
                  same_shape(k_cache, v_cache) && k_cache.size(0) == 1 && k_cache.size(1) > 0 &&
                  H > 0 && H % k_cache.size(1) == 0 && hd > 0 && k_cache.size(3) == hd && mask.size(0) == T &&
                  mask.size(1) == k_cache.size(2);
  if (!ok) {
    ET_LOG(Error, "edgekit::%s: caches must be float32 [1, KV, S, %lld] with KV dividing %lld heads, "
           "mask float32 [%lld, S], out float32", op, static_cast<long long>(hd), static_cast<long long>(H),
           static_cast<long long>(T));
    ctx.fail(Error::InvalidArgument);
  }
  return ok;
}

// Attention of q (float32 [H, T, hd], contiguous) over the caches; out resized to [1, T, H * hd].
// The arguments passed attend_args_ok. `op` names the calling op in messages.
Tensor& attend(KernelRuntimeContext& ctx, const char* op, const float* q, int64_t H, int64_t T, int64_t hd,
               const Tensor& k_cache, const Tensor& v_cache, const Tensor& mask, Tensor& out) {
  const std::array<SizesType, 3> sizes{1, static_cast<SizesType>(T), static_cast<SizesType>(H * hd)};
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, {sizes.data(), sizes.size()}) == Error::Ok,
                      InvalidArgument, out, "edgekit::%s: cannot resize out", op);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));  // as the model
  const int st = ek_sdpa_cache(q, H, T, hd, k_cache.const_data_ptr<float>(), v_cache.const_data_ptr<float>(),
                               k_cache.size(1), k_cache.size(2), mask.const_data_ptr<float>(), scale,
                               out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, st == EK_OK, Internal, out, "edgekit::%s: %s", op, ek_status_str(st));
  return out;
}

// q float32 [1, H, T, hd]; k_cache, v_cache [1, KV, S, hd]; mask [T, S] additive (0 visible,
// -inf hidden); out [1, T, H * hd].
Tensor& sdpa_cache_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k_cache,
                       const Tensor& v_cache, const Tensor& mask, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, q.scalar_type() == ScalarType::Float && q.dim() == 4 && q.size(0) == 1, InvalidArgument,
                      out, "edgekit::sdpa_cache: q must be float32 [1, heads, seq, hd]");
  const int64_t H = q.size(1), T = q.size(2), hd = q.size(3);
  if (!attend_args_ok(ctx, "sdpa_cache", H, T, hd, k_cache, v_cache, mask, out)) return out;
  return attend(ctx, "sdpa_cache", q.const_data_ptr<float>(), H, T, hd, k_cache, v_cache, mask, out);
}

// input_pos int64 [T] with every slot in [0, S).
bool positions_ok(KernelRuntimeContext& ctx, const char* op, const Tensor& input_pos, int64_t T, int64_t S) {
  if (input_pos.scalar_type() != ScalarType::Long || input_pos.dim() != 1 || input_pos.size(0) != T) {
    ET_LOG(Error, "edgekit::%s: input_pos must be int64 [%lld]", op, static_cast<long long>(T));
    ctx.fail(Error::InvalidArgument);
    return false;
  }
  const int64_t* pos = input_pos.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    if (pos[t] < 0 || pos[t] >= S) {
      ET_LOG(Error, "edgekit::%s: position %lld outside the cache of %lld slots", op,
             static_cast<long long>(pos[t]), static_cast<long long>(S));
      ctx.fail(Error::InvalidArgument);
      return false;
    }
  }
  return true;
}

// edgekit::sdpa_kv: the KV-cache writes and sdpa_cache in one call (three fewer ops per layer:
// two index_put and the transpose of v). q [1, H, T, hd], k [1, KV, T, hd] (RoPE'd, head-major),
// v [1, T, KV, hd] (as the projection left it); k_cache, v_cache [1, KV, S, hd], written in
// place at slots input_pos [T] (int64, each in [0, S)); mask [T, S]; out [1, T, H * hd].
Tensor& sdpa_kv_out(KernelRuntimeContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v,
                    Tensor& k_cache, Tensor& v_cache, const Tensor& input_pos, const Tensor& mask,
                    Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, all_float({&q, &k, &v}) && q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && q.size(0) == 1,
                      InvalidArgument, out, "edgekit::sdpa_kv: q, k and v must be float32 and 4-D");
  const int64_t H = q.size(1), T = q.size(2), hd = q.size(3);
  if (!attend_args_ok(ctx, "sdpa_kv", H, T, hd, k_cache, v_cache, mask, out)) return out;
  const int64_t KV = k_cache.size(1), S = k_cache.size(2);
  ET_KERNEL_CHECK_MSG(ctx, k.size(0) == 1 && k.size(1) == KV && k.size(2) == T && k.size(3) == hd &&
                           v.size(0) == 1 && v.size(1) == T && v.size(2) == KV && v.size(3) == hd,
                      InvalidArgument, out, "edgekit::sdpa_kv: k and v do not agree with q and the caches");
  if (!positions_ok(ctx, "sdpa_kv", input_pos, T, S)) return out;
  const int64_t* pos = input_pos.const_data_ptr<int64_t>();
  const float* kp = k.const_data_ptr<float>();
  const float* vp = v.const_data_ptr<float>();
  float* kc = k_cache.mutable_data_ptr<float>();
  float* vc = v_cache.mutable_data_ptr<float>();
  const size_t row = static_cast<size_t>(hd) * sizeof(float);
  for (int64_t h = 0; h < KV; ++h) {
    for (int64_t t = 0; t < T; ++t) {
      std::memcpy(kc + (h * S + pos[t]) * hd, kp + (h * T + t) * hd, row);
      std::memcpy(vc + (h * S + pos[t]) * hd, vp + (t * KV + h) * hd, row);
    }
  }
  return attend(ctx, "sdpa_kv", q.const_data_ptr<float>(), H, T, hd, k_cache, v_cache, mask, out);
}

// edgekit::qkv_attn: from the fused q|k|v projection to the attention output in one call (what
// took two rope, three slice and three view ops and an sdpa_kv). qkv [1, T, (H + 2 KV) hd]
// float32 (rows q heads, k heads, v heads); cos, sin [T, hd]; caches [1, KV, S, hd] written in
// place at input_pos [T]; mask [T, S]; out [1, T, H hd]. RoPE'd k goes straight into its cache
// row, v is copied; RoPE'd q goes to a per-thread buffer (grown once, no allocation in steady
// state), heads-first for the attention kernel.
Tensor& qkv_attn_out(KernelRuntimeContext& ctx, const Tensor& qkv, const Tensor& cos, const Tensor& sin,
                     Tensor& k_cache, Tensor& v_cache, const Tensor& input_pos, const Tensor& mask, int64_t n_heads,
                     Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, all_float({&qkv, &cos, &sin}) && qkv.dim() == 3 && qkv.size(0) == 1 && k_cache.dim() == 4 &&
                           cos.dim() == 2 && sin.dim() == 2,
                      InvalidArgument, out,
                      "edgekit::qkv_attn: qkv must be float32 [1, T, width], caches 4-D, cos/sin [T, hd]");
  const int64_t T = qkv.size(1), W = qkv.size(2), H = n_heads, hd = k_cache.size(3);
  if (!attend_args_ok(ctx, "qkv_attn", H, T, hd, k_cache, v_cache, mask, out)) return out;
  const int64_t KV = k_cache.size(1), S = k_cache.size(2);
  ET_KERNEL_CHECK_MSG(ctx, hd % 2 == 0 && W == (H + 2 * KV) * hd && cos.size(0) == T && cos.size(1) == hd &&
                           sin.size(0) == T && sin.size(1) == hd,
                      InvalidArgument, out,
                      "edgekit::qkv_attn: need an even head dim and qkv width (%lld + 2 x %lld) x %lld, got %lld",
                      static_cast<long long>(H), static_cast<long long>(KV), static_cast<long long>(hd),
                      static_cast<long long>(W));
  if (!positions_ok(ctx, "qkv_attn", input_pos, T, S)) return out;
  thread_local std::vector<float> qbuf;
  try {
    if (qbuf.size() < static_cast<size_t>(H * T * hd)) qbuf.resize(H * T * hd);
  } catch (const std::bad_alloc&) {
    ET_KERNEL_CHECK_MSG(ctx, false, MemoryAllocationFailed, out, "edgekit::qkv_attn: out of memory");
  }
  const int64_t* pos = input_pos.const_data_ptr<int64_t>();
  const float* x = qkv.const_data_ptr<float>();
  const float* cp = cos.const_data_ptr<float>();
  const float* sp = sin.const_data_ptr<float>();
  float* kc = k_cache.mutable_data_ptr<float>();
  float* vc = v_cache.mutable_data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const float* row = x + t * W;
    const int st = ek_rope_heads(row, cp + t * hd, sp + t * hd, H, hd, qbuf.data() + t * hd, T * hd) |
                   ek_rope_heads(row + H * hd, cp + t * hd, sp + t * hd, KV, hd, kc + pos[t] * hd, S * hd);
    ET_KERNEL_CHECK_MSG(ctx, st == EK_OK, InvalidArgument, out, "edgekit::qkv_attn: RoPE failed");
    for (int64_t h = 0; h < KV; ++h)
      std::memcpy(vc + (h * S + pos[t]) * hd, row + (H + KV + h) * hd, static_cast<size_t>(hd) * sizeof(float));
  }
  return attend(ctx, "qkv_attn", qbuf.data(), H, T, hd, k_cache, v_cache, mask, out);
}

// x [..., D], weight [D]; out like x.
Tensor& rms_norm_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, double eps, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, all_float({&x, &weight, &out}), InvalidArgument, out,
                      "edgekit::rms_norm: x, weight and out must be float32");
  ET_KERNEL_CHECK_MSG(ctx, x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(x.dim() - 1),
                      InvalidArgument, out, "edgekit::rms_norm: weight must be [D], D = x's last dim");
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, x.sizes()) == Error::Ok, InvalidArgument, out,
                      "edgekit::rms_norm: cannot resize out");
  const int64_t D = weight.size(0);
  const int st = ek_rms_norm(x.const_data_ptr<float>(), weight.const_data_ptr<float>(), x.numel() / D, D,
                             static_cast<float>(eps), out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, st == EK_OK, InvalidArgument, out, "edgekit::rms_norm: %s", ek_status_str(st));
  return out;
}

// x [B, T, H, hd]; cos, sin [T, hd]; out [B, H, T, hd].
Tensor& rope_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, all_float({&x, &cos, &sin, &out}), InvalidArgument, out,
                      "edgekit::rope: all tensors must be float32");
  ET_KERNEL_CHECK_MSG(ctx, x.dim() == 4 && cos.dim() == 2 && sin.dim() == 2 && cos.size(0) == x.size(1) &&
                           cos.size(1) == x.size(3) && sin.size(0) == cos.size(0) && sin.size(1) == cos.size(1),
                      InvalidArgument, out, "edgekit::rope: x must be [B, T, H, hd], cos/sin [T, hd]");
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), hd = x.size(3);
  const std::array<SizesType, 4> sizes{static_cast<SizesType>(B), static_cast<SizesType>(H),
                                       static_cast<SizesType>(T), static_cast<SizesType>(hd)};
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, {sizes.data(), sizes.size()}) == Error::Ok,
                      InvalidArgument, out, "edgekit::rope: cannot resize out");
  const int st = ek_rope_half(x.const_data_ptr<float>(), cos.const_data_ptr<float>(), sin.const_data_ptr<float>(),
                              B, T, H, hd, out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, st == EK_OK, InvalidArgument, out, "edgekit::rope: %s", ek_status_str(st));
  return out;
}

Tensor& swiglu_out(KernelRuntimeContext& ctx, const Tensor& gate, const Tensor& up, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, all_float({&gate, &up, &out}) && same_shape(gate, up), InvalidArgument, out,
                      "edgekit::swiglu: gate and up must be float32 of one shape");
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, gate.sizes()) == Error::Ok, InvalidArgument,
                      out, "edgekit::swiglu: cannot resize out");
  const int st = ek_swiglu(gate.const_data_ptr<float>(), up.const_data_ptr<float>(), gate.numel(),
                           out.mutable_data_ptr<float>());
  ET_KERNEL_CHECK_MSG(ctx, st == EK_OK, InvalidArgument, out, "edgekit::swiglu: %s", ek_status_str(st));
  return out;
}

// edgekit::swiglu_gu: swiglu on the fused w1|w3 projection: gate_up [..., 2F] (each row's gate
// then its up) -> out [..., F] (two slice ops fewer per layer than swiglu(gate, up)).
Tensor& swiglu_gu_out(KernelRuntimeContext& ctx, const Tensor& gate_up, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, all_float({&gate_up, &out}) && gate_up.dim() >= 1 && gate_up.size(gate_up.dim() - 1) % 2 == 0,
                      InvalidArgument, out, "edgekit::swiglu_gu: gate_up must be float32 [..., 2F]");
  std::array<SizesType, executorch::runtime::kTensorDimensionLimit> sizes{};
  for (ssize_t d = 0; d < gate_up.dim(); ++d) sizes[d] = static_cast<SizesType>(gate_up.size(d));
  const int64_t F = gate_up.size(gate_up.dim() - 1) / 2;
  sizes[gate_up.dim() - 1] = static_cast<SizesType>(F);
  ET_KERNEL_CHECK_MSG(ctx,
                      executorch::runtime::resize_tensor(out, {sizes.data(), static_cast<size_t>(gate_up.dim())}) ==
                          Error::Ok,
                      InvalidArgument, out, "edgekit::swiglu_gu: cannot resize out");
  const float* gu = gate_up.const_data_ptr<float>();
  float* o = out.mutable_data_ptr<float>();
  for (int64_t r = 0, R = F ? gate_up.numel() / (2 * F) : 0; r < R; ++r) {
    const int st = ek_swiglu(gu + r * 2 * F, gu + r * 2 * F + F, F, o + r * F);
    ET_KERNEL_CHECK_MSG(ctx, st == EK_OK, InvalidArgument, out, "edgekit::swiglu_gu: %s", ek_status_str(st));
  }
  return out;
}

}  // namespace
}  // namespace edgekit

EXECUTORCH_LIBRARY(edgekit, "linear_w2.out", edgekit::linear_w2_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w4.out", edgekit::linear_w4_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w3.out", edgekit::linear_w3_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w8.out", edgekit::linear_w8_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w2a8.out", edgekit::linear_w2a8_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w3a8.out", edgekit::linear_w3a8_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w4a8.out", edgekit::linear_w4a8_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w8a8.out", edgekit::linear_w8a8_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w2a8_r16.out", edgekit::linear_w2a8_r16_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w4a8_r16.out", edgekit::linear_w4a8_r16_out);
EXECUTORCH_LIBRARY(edgekit, "linear_w8a8_r16.out", edgekit::linear_w8a8_r16_out);
EXECUTORCH_LIBRARY(edgekit, "sdpa_cache.out", edgekit::sdpa_cache_out);
EXECUTORCH_LIBRARY(edgekit, "sdpa_kv.out", edgekit::sdpa_kv_out);
EXECUTORCH_LIBRARY(edgekit, "rms_norm.out", edgekit::rms_norm_out);
EXECUTORCH_LIBRARY(edgekit, "rope.out", edgekit::rope_out);
EXECUTORCH_LIBRARY(edgekit, "swiglu.out", edgekit::swiglu_out);
EXECUTORCH_LIBRARY(edgekit, "qkv_attn.out", edgekit::qkv_attn_out);
EXECUTORCH_LIBRARY(edgekit, "swiglu_gu.out", edgekit::swiglu_gu_out);

// Lets a loader (and the tests) check that this library's registrations ran.
extern "C" int ek_et_ops_registered(void) { return 18; }
