// Group-quantized linear kernels (see wq_linear.h for the layout and the API contract).
//
// SIMD strategy: the codes of one 8-byte load are widened to 8 int32 lanes (one lane per byte);
// shifting all lanes by b*j and masking gives codes k = CPB*i + j (i = lane, CPB = 8/b codes
// per byte), i.e. a strided subset of the block. Instead of gathering x with that stride in
// the inner loop, x is permuted once per call (prep_x) so those 8 activations are contiguous:
//   xp[blk*BLOCK + 8*j + i] = x[blk*BLOCK + CPB*i + j] * 2^-(b*j),  BLOCK = 8*CPB codes per 8 bytes
// (the 2^-(b*j) undoes masking code j in place instead of shifting it down).
// The dot product is order-independent, so row n contributes
//   y[m, n] = sum_g scale[n,g] * <u[n, group g], xp[m, group g]> + zero[n,g] * xsum[m, g]
// where xsum[m, g] is the plain sum of x over the group's real (unpadded) columns, also
// computed once per call. Codes of padded columns are zero and xp is zero there, so padding
// never contributes.
#include "wq_linear.h"

#include "parallel.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <new>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define EK_HAVE_X86 1
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#define EK_HAVE_NEON 1
#if defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif
#endif

#ifdef EDGEKIT_USE_ET_THREADPOOL
#include <executorch/runtime/kernel/thread_parallel_interface.h>
// libexecutorch_threadpool.so exports these but the wheel ships no header for them.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

namespace {

struct Shape {
  int64_t M, K, N;
  int bits;
  int64_t g;          // columns per group
  int64_t G;          // groups per row
  int64_t K_pad;      // G * g
  int64_t row_bytes;  // ceil(K_pad * bits / 8)
};

float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (mant == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = 1;
      while (!(mant & 0x400u)) {
        mant <<= 1;
        --e;
      }
      mant &= 0x3ffu;
      bits = sign | (static_cast<uint32_t>(e + 112) << 23) | (mant << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline uint32_t code_at(const uint8_t* row, int64_t k, int bits, int64_t row_bytes) {
  int64_t i = static_cast<int64_t>(bits) * k;
  int64_t byte = i >> 3;
  uint32_t w = row[byte];
  if (byte + 1 < row_bytes) w |= static_cast<uint32_t>(row[byte + 1]) << 8;
  return (w >> (i & 7)) & ((1u << bits) - 1u);
}

// ---- scalar reference ------------------------------------------------------------------------
void rows_scalar(const Shape& s, const float* x, const uint8_t* qw, const uint16_t* sc,
                 const uint16_t* zr, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = qw + n * s.row_bytes;
    for (int64_t m = 0; m < s.M; ++m) {
      const float* xm = x + m * s.K;
      float total = 0.f;
      for (int64_t g = 0; g < s.G; ++g) {
        int64_t k0 = g * s.g, k1 = std::min(s.K, k0 + s.g);
        float acc = 0.f, xs = 0.f;
        for (int64_t k = k0; k < k1; ++k) {
          acc += xm[k] * static_cast<float>(code_at(row, k, s.bits, s.row_bytes));
          xs += xm[k];
        }
        total += half_to_float(sc[n * s.G + g]) * acc + half_to_float(zr[n * s.G + g]) * xs;
      }
      y[m * s.N + n] = total;
    }
  }
}

// ---- shared SIMD preparation -----------------------------------------------------------------
int64_t simd_block(int bits) { return 8 * (8 / bits); }

bool simd_shape_ok(int bits, int64_t g) {
  return (bits == 2 || bits == 4) && g % simd_block(bits) == 0;
}

// xp [M, K_pad] permuted activations, xsum [M, G] per-group sums of real columns.
void prep_x(const Shape& s, const float* x, float* xp, float* xsum) {
  const int cpb = 8 / s.bits;
  const int64_t block = simd_block(s.bits);
  // The kernels mask code j in place (value u * 2^(bits*j)) instead of shifting it down, so
  // slot j of x is pre-scaled by 2^-(bits*j): exact, and one instruction less per 8 codes.
  float slot_scale[4];
  for (int j = 0; j < cpb; ++j) slot_scale[j] = std::ldexp(1.0f, -s.bits * j);
  for (int64_t m = 0; m < s.M; ++m) {
    const float* xm = x + m * s.K;
    float* out = xp + m * s.K_pad;
    for (int64_t b0 = 0; b0 < s.K_pad; b0 += block) {
      for (int j = 0; j < cpb; ++j) {
        for (int i = 0; i < 8; ++i) {
          int64_t k = b0 + static_cast<int64_t>(cpb) * i + j;
          out[b0 + 8 * j + i] = k < s.K ? xm[k] * slot_scale[j] : 0.f;
        }
      }
    }
    for (int64_t g = 0; g < s.G; ++g) {
      int64_t k0 = g * s.g, k1 = std::min(s.K, k0 + s.g);
      float acc = 0.f;
      for (int64_t k = k0; k < k1; ++k) acc += xm[k];
      xsum[m * s.G + g] = acc;
    }
  }
}

// ---- AVX2 + FMA ------------------------------------------------------------------------------
#ifdef EK_HAVE_X86
__attribute__((target("avx2,fma,f16c"))) inline float hsum256(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_hadd_ps(lo, lo);
  lo = _mm_hadd_ps(lo, lo);
  return _mm_cvtss_f32(lo);
}

// Code j of each lane (lane i holds byte i of the block), masked in place, as floats:
// u[CPB*i + j] * 2^(BITS*j) (prep_x scales the matching x by 2^-(BITS*j)). The shifted mask is
// a constant the compiler hoists out of the loop.
template <int BITS, int J>
__attribute__((target("avx2,fma,f16c"))) inline __m256 codes_avx2(__m256i v, __m256i mask) {
  return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_slli_epi32(mask, J * BITS)));
}

// y[m0..m0+MT) at output row n. MT == 1 (decode) keeps one accumulator per code slot j so the
// FMA chains are independent; MT == 4 (prefill) shares each decoded vector across 4 rows of x
// with two accumulators per row. Scale and zero are converted with F16C.
template <int BITS, int MT>
__attribute__((target("avx2,fma,f16c"))) void tile_avx2(const Shape& s, const float* xp,
                                                         const float* xsum, const uint8_t* row,
                                                         const uint16_t* sc, const uint16_t* zr,
                                                         int64_t n, int64_t m0, float* y) {
  constexpr int CPB = 8 / BITS;
  constexpr int BLOCK = 8 * CPB;
  constexpr int NACC = MT == 1 ? CPB : 2;  // accumulators per x row
  const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
  const int64_t blocks = s.g / BLOCK;
  const int64_t ldx = s.K_pad;
  __m256 racc[MT];
  float zacc[MT];
  for (int t = 0; t < MT; ++t) {
    racc[t] = _mm256_setzero_ps();
    zacc[t] = 0.f;
  }
  const uint8_t* p = row;
  for (int64_t g = 0; g < s.G; ++g) {
    __m256 acc[MT][NACC];
    for (int t = 0; t < MT; ++t)
      for (int a = 0; a < NACC; ++a) acc[t][a] = _mm256_setzero_ps();
    const float* xg = xp + m0 * ldx + g * s.g;
    for (int64_t b = 0; b < blocks; ++b, p += 8, xg += BLOCK) {
      const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
      __m256 f[CPB];
      f[0] = codes_avx2<BITS, 0>(v, mask);
      f[1] = codes_avx2<BITS, 1>(v, mask);
      if constexpr (CPB == 4) {
        f[2] = codes_avx2<BITS, 2>(v, mask);
        f[3] = codes_avx2<BITS, 3>(v, mask);
      }
      for (int j = 0; j < CPB; ++j) {
        for (int t = 0; t < MT; ++t) {
          __m256& a = acc[t][j % NACC];
          a = _mm256_fmadd_ps(f[j], _mm256_loadu_ps(xg + t * ldx + 8 * j), a);
        }
      }
    }
    const __m256 sv = _mm256_set1_ps(_cvtsh_ss(sc[n * s.G + g]));
    const float z = _cvtsh_ss(zr[n * s.G + g]);
    for (int t = 0; t < MT; ++t) {
      __m256 sum = acc[t][0];
      for (int a = 1; a < NACC; ++a) sum = _mm256_add_ps(sum, acc[t][a]);
      racc[t] = _mm256_fmadd_ps(sv, sum, racc[t]);
      zacc[t] += z * xsum[(m0 + t) * s.G + g];
    }
  }
  for (int t = 0; t < MT; ++t) y[(m0 + t) * s.N + n] = hsum256(racc[t]) + zacc[t];
}

template <int BITS>
__attribute__((target("avx2,fma,f16c"))) void rows_avx2(const Shape& s, const float* xp,
                                                    const float* xsum, const uint8_t* qw,
                                                    const uint16_t* sc, const uint16_t* zr,
                                                    float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = qw + n * s.row_bytes;
    int64_t m = 0;
    for (; m + 4 <= s.M; m += 4) tile_avx2<BITS, 4>(s, xp, xsum, row, sc, zr, n, m, y);
    for (; m < s.M; ++m) tile_avx2<BITS, 1>(s, xp, xsum, row, sc, zr, n, m, y);
  }
}

bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                         __builtin_cpu_supports("f16c");
  return ok;
}
#else
bool cpu_has_avx2() { return false; }
#endif

// ---- NEON (aarch64) --------------------------------------------------------------------------
#ifdef EK_HAVE_NEON
template <int BITS, int MT>
void tile_neon(const Shape& s, const float* xp, const float* xsum, const uint8_t* row,
               const uint16_t* sc, const uint16_t* zr, int64_t n, int64_t m0, float* y) {
  constexpr int CPB = 8 / BITS;
  constexpr int BLOCK = 8 * CPB;
  const int64_t blocks = s.g / BLOCK;
  float32x4_t racc[MT];
  float zacc[MT];
  for (int t = 0; t < MT; ++t) {
    racc[t] = vdupq_n_f32(0.f);
    zacc[t] = 0.f;
  }
  const uint8_t* p = row;
  for (int64_t g = 0; g < s.G; ++g) {
    float32x4_t gacc[MT][2];
    for (int t = 0; t < MT; ++t) gacc[t][0] = gacc[t][1] = vdupq_n_f32(0.f);
    const float* xg = xp + m0 * s.K_pad + g * s.g;
    for (int64_t b = 0; b < blocks; ++b, p += 8) {
      uint16x8_t h = vmovl_u8(vld1_u8(p));
      uint32x4_t lo = vmovl_u16(vget_low_u16(h));   // bytes 0..3 -> lanes i = 0..3
      uint32x4_t hi = vmovl_u16(vget_high_u16(h));  // bytes 4..7 -> lanes i = 4..7
      for (int j = 0; j < CPB; ++j) {
        // Masked in place: u * 2^(BITS*j); prep_x pre-scaled x's slot j by 2^-(BITS*j).
        const uint32x4_t mj = vdupq_n_u32(((1u << BITS) - 1u) << (j * BITS));
        float32x4_t f0 = vcvtq_f32_u32(vandq_u32(lo, mj));
        float32x4_t f1 = vcvtq_f32_u32(vandq_u32(hi, mj));
        for (int t = 0; t < MT; ++t) {
          const float* xa = xg + t * s.K_pad + b * BLOCK + 8 * j;
          gacc[t][0] = vfmaq_f32(gacc[t][0], f0, vld1q_f32(xa));
          gacc[t][1] = vfmaq_f32(gacc[t][1], f1, vld1q_f32(xa + 4));
        }
      }
    }
    const float sv = half_to_float(sc[n * s.G + g]);
    const float z = half_to_float(zr[n * s.G + g]);
    for (int t = 0; t < MT; ++t) {
      racc[t] = vfmaq_n_f32(racc[t], vaddq_f32(gacc[t][0], gacc[t][1]), sv);
      zacc[t] += z * xsum[(m0 + t) * s.G + g];
    }
  }
  for (int t = 0; t < MT; ++t) y[(m0 + t) * s.N + n] = vaddvq_f32(racc[t]) + zacc[t];
}

template <int BITS>
void rows_neon(const Shape& s, const float* xp, const float* xsum, const uint8_t* qw,
               const uint16_t* sc, const uint16_t* zr, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = qw + n * s.row_bytes;
    int64_t m = 0;
    for (; m + 4 <= s.M; m += 4) tile_neon<BITS, 4>(s, xp, xsum, row, sc, zr, n, m, y);
    for (; m < s.M; ++m) tile_neon<BITS, 1>(s, xp, xsum, row, sc, zr, n, m, y);
  }
}
#endif

// ---- threading -------------------------------------------------------------------------------
using ek::parallel_rows;

bool make_shape(int64_t M, int64_t K, int64_t N, int bits, int64_t group_size, Shape* s) {
  if (M <= 0 || K <= 0 || N <= 0) return false;
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) return false;
  s->M = M;
  s->K = K;
  s->N = N;
  s->bits = bits;
  s->g = group_size <= 0 ? K : group_size;
  s->G = (K + s->g - 1) / s->g;
  s->K_pad = s->G * s->g;
  s->row_bytes = (s->K_pad * bits + 7) / 8;
  return true;
}

int pick(const Shape& s) {
  if (simd_shape_ok(s.bits, s.g)) {
#ifdef EK_HAVE_NEON
    return EK_IMPL_NEON;
#endif
    if (cpu_has_avx2()) return EK_IMPL_AVX2;
  }
  return EK_IMPL_SCALAR;
}


// ---- int8 activations (a8) -------------------------------------------------------------------
// x is quantized per group (wq_linear.h). The SIMD kernels read the codes of a 16-byte unit
// with one shift + mask per code slot j (lane i holds code CPB*i + j), so xq is permuted like
// prep_x does: a 32-byte chunk (two units h = 0, 1) reads
//   xq_p[c0 + 32*j + 16*h + i] = xq[c0 + 16*CPB*h + CPB*i + j]
// and a lone 16-byte unit reads xq_p[c0 + 16*j + i] = xq[c0 + CPB*i + j]. Chunks run over the
// whole row when a group is one unit (pairs of groups; G odd leaves a lone unit at the end),
// else over each group (a group of 16 bytes mod 32 ends in a lone unit).

bool a8_simd_ok(int bits, int64_t g) {
  return (bits == 2 || bits == 4 || bits == 8) && (g * bits) % 128 == 0;
}

struct A8 {
  int8_t* xq;     // [M, K_pad], permuted for SIMD (plain order for the scalar reference)
  float* dx;      // [M, G]
  float* xsum;    // [M, G]
};

// Chunks of U = 2 units, the last maybe U = 1 (the lone unit): xq_p[c0 + 16*U*j + 16*h + i].
inline void permute_run(const int8_t* in, int8_t* out, int64_t nbytes, int cpb) {
  for (int64_t b = 0; b < nbytes;) {
    const int64_t U = std::min<int64_t>(2, (nbytes - b) / 16), c0 = b * cpb;
    for (int64_t h = 0; h < U; ++h)
      for (int i = 0; i < 16; ++i)
        for (int j = 0; j < cpb; ++j) out[c0 + 16 * U * j + 16 * h + i] = in[c0 + 16 * cpb * h + cpb * i + j];
    b += 16 * U;
  }
}

// Quantize one group of n real columns (of g; the rest are zero) to int8: amax/127 steps,
// round half to even. Returns amax through *amax_out and the plain sum of x through *xs_out.
void quant_group(const float* x, int64_t n, int64_t g, int8_t* q, float* amax_out, float* xs_out) {
  float amax = 0.f, xs = 0.f;
  for (int64_t k = 0; k < n; ++k) {
    amax = std::fmax(amax, std::fabs(x[k]));
    xs += x[k];
  }
  const float inv = amax > 0.f ? 127.f / amax : 0.f;
  for (int64_t k = 0; k < g; ++k) {
    int v = 0;
    if (k < n) v = static_cast<int>(std::max(-127.f, std::min(127.f, std::nearbyint(x[k] * inv))));
    q[k] = static_cast<int8_t>(v);
  }
  *amax_out = amax;
  *xs_out = xs;
}

#ifdef EK_HAVE_X86
// permute_run for 2 and 4 bits with SSSE3 shuffles, 16 bytes at a time: a byte shuffle gathers
// each code slot's bytes of a 16-byte block (CPB slots of 16 / CPB bytes), then a dword (2
// bits) or qword (4 bits) transpose of 16 / CPB blocks gives each slot's 16 bytes of the unit.
// The same bytes to the same places as permute_run (scalar: ~1 ns a byte, ~25 us a SmolLM2 token).
__attribute__((target("avx2"))) void permute_run_ssse3(const int8_t* in, int8_t* out, int64_t nbytes, int cpb) {
  for (int64_t b = 0; b < nbytes;) {
    const int64_t U = std::min<int64_t>(2, (nbytes - b) / 16), c0 = b * cpb;
    for (int64_t h = 0; h < U; ++h) {
      const int8_t* src = in + c0 + 16 * cpb * h;
      int8_t* dst = out + c0 + 16 * h;
      const int64_t stride = 16 * U;  // between one slot's 16 bytes and the next slot's
      auto ld = [&](int blk) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16 * blk)); };
      auto st = [&](int j, __m128i v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + stride * j), v); };
      if (cpb == 4) {
        const __m128i sh = _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        const __m128i a0 = _mm_shuffle_epi8(ld(0), sh), a1 = _mm_shuffle_epi8(ld(1), sh);
        const __m128i a2 = _mm_shuffle_epi8(ld(2), sh), a3 = _mm_shuffle_epi8(ld(3), sh);
        const __m128i l01 = _mm_unpacklo_epi32(a0, a1), h01 = _mm_unpackhi_epi32(a0, a1);
        const __m128i l23 = _mm_unpacklo_epi32(a2, a3), h23 = _mm_unpackhi_epi32(a2, a3);
        st(0, _mm_unpacklo_epi64(l01, l23));
        st(1, _mm_unpackhi_epi64(l01, l23));
        st(2, _mm_unpacklo_epi64(h01, h23));
        st(3, _mm_unpackhi_epi64(h01, h23));
      } else {  // cpb == 2
        const __m128i sh = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
        const __m128i a0 = _mm_shuffle_epi8(ld(0), sh), a1 = _mm_shuffle_epi8(ld(1), sh);
        st(0, _mm_unpacklo_epi64(a0, a1));
        st(1, _mm_unpackhi_epi64(a0, a1));
      }
    }
    b += 16 * U;
  }
}

// quant_group for a full group of n % 8 == 0 columns, 8 at a time: the same amax (max is
// order-free), the same products and rounding (cvtps rounds half to even, |x * inv| <= 127 so
// the saturating packs never clip), a sum in a different order. The scalar loop above called
// libm fmax/nearbyint per element and cost ~4.5 ns per column, a third of a 576 x 576 w2 GEMV.
__attribute__((target("avx2,fma"))) void quant_group_avx2(const float* x, int64_t n, int8_t* q,
                                                          float* amax_out, float* xs_out) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 mx = _mm256_setzero_ps(), sm = _mm256_setzero_ps();
  for (int64_t k = 0; k < n; k += 8) {
    const __m256 v = _mm256_loadu_ps(x + k);
    mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v));
    sm = _mm256_add_ps(sm, v);
  }
  __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
  m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
  const float amax = _mm_cvtss_f32(m4);
  __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(sm), _mm256_extractf128_ps(sm, 1));
  s4 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
  s4 = _mm_add_ss(s4, _mm_shuffle_ps(s4, s4, 1));
  const __m256 inv = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
  for (int64_t k = 0; k < n; k += 8) {
    const __m256i i32 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), inv));
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(i16, i16));
  }
  *amax_out = amax;
  *xs_out = _mm_cvtss_f32(s4);
}
#endif

// The r16 kernels' activation order (wq_r16_x86.h): in each 16-byte chunk of a group, slot j
// of dword d's byte b (code CPB (4 d + b) + j) meets out[(CPB d + j) 4 + b]. 16 / (4 CPB) dwords
// per chunk: a 4x4 byte transpose for 2 bits, two 2x4 ones for 4 bits, nothing for 8.
inline int r16_src(int p, int cpb) {  // out[p] = in[r16_src(p)] within a chunk
  const int b = p % 4, j = (p / 4) % cpb, e = p / (4 * cpb);
  return 4 * cpb * e + cpb * b + j;
}
void r16_permute(const int8_t* in, int8_t* out, int64_t nbytes, int cpb) {
  for (int64_t c = 0; c < nbytes; c += 16)
    for (int p = 0; p < 16; ++p) out[c + p] = in[c + r16_src(p, cpb)];
}
#ifdef EK_HAVE_X86
__attribute__((target("avx2"))) void r16_permute_ssse3(const int8_t* in, int8_t* out, int64_t nbytes, int cpb) {
  alignas(16) int8_t idx[16];
  for (int p = 0; p < 16; ++p) idx[p] = static_cast<int8_t>(r16_src(p, cpb));
  const __m128i sh = _mm_load_si128(reinterpret_cast<const __m128i*>(idx));
  for (int64_t c = 0; c < nbytes; c += 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + c),
                     _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + c)), sh));
}
#endif

// PERM_R16_REF: plain order, quantized like PERM_R16 (the AVX2 group quantizer sums xsum in
// another order than the scalar one), so the r16 reference matches the r16 SIMD rows bit for bit.
enum Perm { PERM_PLAIN = 0, PERM_PAIRS = 1, PERM_R16 = 2, PERM_R16_REF = 3 };

void prep_a8(const Shape& s, const float* x, const A8& a, int perm) {
  const bool permute = perm == PERM_PAIRS || perm == PERM_R16;
  const int cpb = 8 / s.bits;
  const int64_t gb = s.g * s.bits / 8;  // bytes per group (SIMD shapes only)
  thread_local std::vector<int8_t> plain;
  if (permute && plain.size() < static_cast<size_t>(s.K_pad)) plain.resize(s.K_pad);
#ifdef EK_HAVE_X86
  const bool vec = perm != PERM_PLAIN && s.g % 8 == 0 && cpu_has_avx2();
#endif
  for (int64_t m = 0; m < s.M; ++m) {
    const float* xm = x + m * s.K;
    int8_t* q = permute ? plain.data() : a.xq + m * s.K_pad;
    for (int64_t g = 0; g < s.G; ++g) {
      const int64_t k0 = g * s.g, n = std::min(s.K, k0 + s.g) - k0;
      float amax, xs;
#ifdef EK_HAVE_X86
      if (vec && n == s.g)
        quant_group_avx2(xm + k0, n, q + k0, &amax, &xs);
      else
#endif
        quant_group(xm + k0, n, s.g, q + k0, &amax, &xs);
      a.dx[m * s.G + g] = amax / 127.f;
      a.xsum[m * s.G + g] = xs;
    }
    if (perm == PERM_R16) {
      int8_t* out = a.xq + m * s.K_pad;
      auto run = r16_permute;
#ifdef EK_HAVE_X86
      if (vec) run = r16_permute_ssse3;
#endif
      if (cpb == 1) std::memcpy(out, q, s.K_pad);
      else run(q, out, s.K_pad, cpb);
    } else if (permute) {
      int8_t* out = a.xq + m * s.K_pad;
      auto run = permute_run;
#ifdef EK_HAVE_X86
      if (vec && (cpb == 2 || cpb == 4)) run = permute_run_ssse3;
#endif
      if (gb == 16) {
        run(q, out, s.G * gb, cpb);
      } else {
        for (int64_t g = 0; g < s.G; ++g) run(q + g * s.g, out + g * s.g, gb, cpb);
      }
    }
  }
}

void rows_scalar_a8(const Shape& s, const A8& a, const uint8_t* qw, const uint16_t* sc,
                    const uint16_t* zr, float* y, int64_t n0, int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = qw + n * s.row_bytes;
    for (int64_t m = 0; m < s.M; ++m) {
      const int8_t* xq = a.xq + m * s.K_pad;
      float total = 0.f;
      for (int64_t g = 0; g < s.G; ++g) {
        int64_t k0 = g * s.g, k1 = std::min(s.K, k0 + s.g);
        int32_t isum = 0;
        for (int64_t k = k0; k < k1; ++k)
          isum += static_cast<int32_t>(code_at(row, k, s.bits, s.row_bytes)) * xq[k];
        total += half_to_float(sc[n * s.G + g]) * a.dx[m * s.G + g] * static_cast<float>(isum) +
                 half_to_float(zr[n * s.G + g]) * a.xsum[m * s.G + g];
      }
      y[m * s.N + n] = total;
    }
  }
}

// ---- row-interleaved (r16) layout ------------------------------------------------------------
// wq_linear.h, ek_linear_wq_a8_r16. Byte i of row n's canonical packed row sits at
// r16_byte(n, i): block n / 16, group i / ub, dword (i % ub) / 4, row lane n % 16, byte i % 4.
inline int64_t r16_byte(const Shape& s, int64_t n, int64_t i) {
  const int64_t ub = s.row_bytes / s.G, g = i / ub, d = (i % ub) / 4;
  return (n / 16) * s.G * 16 * ub + (g * (ub / 4) + d) * 64 + (n % 16) * 4 + i % 4;
}

bool r16_ok(int bits, int64_t g) { return a8_simd_ok(bits, g); }

// Block blk of the r16 weights: its codes, scales and zeros, and how many of its 16 rows are real.
struct R16Block {
  const uint8_t* w;
  const uint16_t* s;
  const uint16_t* z;
  int64_t rows;
};
inline R16Block r16_block(const Shape& s, const uint8_t* qw, const uint16_t* sc, const uint16_t* zr, int64_t blk) {
  return {qw + blk * s.G * 16 * (s.row_bytes / s.G), sc + blk * s.G * 16, zr + blk * s.G * 16,
          std::min<int64_t>(16, s.N - 16 * blk)};
}

// The reference: plain-order xq, codes read through r16_byte, and per row exactly the SIMD
// kernels' float steps (f = fma(isum, scale * dx, f), z = fma(zero, xsum, z), y = f + z), so
// every implementation gives bit-identical outputs.
void rows_scalar_r16(const Shape& s, const A8& a, const uint8_t* qw, const uint16_t* sc,
                     const uint16_t* zr, float* y, int64_t b0, int64_t b1) {
  for (int64_t n = 16 * b0; n < std::min(s.N, 16 * b1); ++n) {
    const int64_t blk = n / 16, r = n % 16;
    for (int64_t m = 0; m < s.M; ++m) {
      const int8_t* xq = a.xq + m * s.K_pad;
      float f = 0.f, z = 0.f;
      for (int64_t g = 0; g < s.G; ++g) {
        int32_t isum = 0;
        for (int64_t k = g * s.g; k < (g + 1) * s.g; ++k) {
          const int64_t bit = k * s.bits;
          const uint32_t code = (qw[r16_byte(s, n, bit / 8)] >> (bit % 8)) & ((1u << s.bits) - 1u);
          isum += static_cast<int32_t>(code) * xq[k];
        }
        const int64_t si = (blk * s.G + g) * 16 + r;
        f = std::fma(static_cast<float>(isum), half_to_float(sc[si]) * a.dx[m * s.G + g], f);
        z = std::fma(half_to_float(zr[si]), a.xsum[m * s.G + g], z);
      }
      y[m * s.N + n] = f + z;
    }
  }
}

#ifdef EK_HAVE_X86
// Bytes ahead of the row being read (wq_a8_x86.h). In-process A/B of the streamed 30-layer
// SmolLM2 sweep, 2 threads: 1024 -> 28.2-30.1 GB/s, 3072-4096 -> 29.2-30.9.
#define EK_PREFETCH 4096
namespace a8_avx2 {
#define EK_TGT __attribute__((target("avx2,fma,f16c")))
#define EK_VNNI 0
#define EK_AVX512 0
#include "wq_a8_x86.h"  // NOLINT(build/include)
#include "wq_r16_x86.h"  // NOLINT(build/include)
#undef EK_TGT
#undef EK_VNNI
#undef EK_AVX512
}  // namespace a8_avx2
namespace a8_vnni {
#define EK_TGT __attribute__((target("avx2,fma,f16c,avxvnni")))
#define EK_VNNI 1
#define EK_AVX512 0
#include "wq_a8_x86.h"  // NOLINT(build/include)
#include "wq_r16_x86.h"  // NOLINT(build/include)
#undef EK_TGT
#undef EK_VNNI
#undef EK_AVX512
}  // namespace a8_vnni
namespace a8_v512 {
#define EK_TGT __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,gfni")))
#define EK_VNNI 1
#define EK_AVX512 1
#include "wq_a8_x86.h"  // NOLINT(build/include)
#include "wq_r16_x86.h"  // NOLINT(build/include)
#undef EK_TGT
#undef EK_VNNI
#undef EK_AVX512
}  // namespace a8_v512

bool cpu_has_avxvnni() {  // CPUID leaf 7 subleaf 1, EAX bit 4 (gcc 12 cannot query it by name)
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid_count(7, 1, a, b, c, d);
    return cpu_has_avx2() && ((a >> 4) & 1u);
  }();
  return ok;
}

// libgcc's checks include the OS saving the zmm state (XCR0). GFNI: every CPU with AVX512-VNNI
// so far has it (Ice Lake, Sapphire Rapids, Zen 4, Zen 5); checked anyway.
bool cpu_has_avx512vnni() {
  static const bool ok = cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                         __builtin_cpu_supports("gfni");
  return ok;
}
#endif

#ifdef EK_HAVE_NEON
namespace a8_neon {
#define EK_TGT
#define EK_DOTPROD 0
#include "wq_a8_neon.h"  // NOLINT(build/include)
#include "wq_r16_neon.h"  // NOLINT(build/include)
#undef EK_TGT
#undef EK_DOTPROD
}  // namespace a8_neon
namespace a8_neondot {
// gcc 12's arm_neon.h declares vdotq_s32 under target("arch=armv8.2-a+dotprod") and an
// always_inline callee's target must be a subset of its caller's, so "+dotprod" alone fails to
// inline it; clang names the feature "dotprod".
#if defined(__clang__)
#define EK_TGT __attribute__((target("dotprod")))
#else
#define EK_TGT __attribute__((target("arch=armv8.2-a+dotprod")))
#endif
#define EK_DOTPROD 1
#include "wq_a8_neon.h"  // NOLINT(build/include)
#include "wq_r16_neon.h"  // NOLINT(build/include)
#undef EK_TGT
#undef EK_DOTPROD
}  // namespace a8_neondot

#if defined(__linux__) && !defined(HWCAP_ASIMDDP)
#define HWCAP_ASIMDDP (1 << 20)
#endif

// SDOT (FEAT_DotProd) at run time: the kernel's hwcap bit on Linux and Android; elsewhere only
// what the build's -march guarantees.
bool cpu_has_dotprod() {
#if defined(__linux__)
  static const bool ok = (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
  return ok;
#elif defined(__ARM_FEATURE_DOTPROD)
  return true;
#else
  return false;
#endif
}
#endif

// Mean seconds per call of `call` over `iters` back-to-back calls after one untimed call, or a
// negative status when that first call fails.
template <class F>
double time_calls(int iters, const F& call) {
  if (iters < 1) return -EK_BAD_ARG;
  int st = call();
  if (st != EK_OK) return -st;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) call();
  std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
  return dt.count() / iters;
}

// EDGEKIT_A8_IMPL=scalar|avx2|avxvnni|avx512vnni|neon|neondot overrides the automatic pick (for A/B
// benchmarks of whole programs); a name this CPU or shape cannot run is ignored.
int forced_a8(const Shape& s) {
  static const int forced = [] {
    const char* e = std::getenv("EDGEKIT_A8_IMPL");
    if (!e) return -1;
    const std::pair<const char*, int> names[] = {{"scalar", EK_IMPL_SCALAR}, {"avx2", EK_IMPL_AVX2},
                                                 {"avxvnni", EK_IMPL_AVXVNNI}, {"avx512vnni", EK_IMPL_AVX512VNNI},
                                                 {"neon", EK_IMPL_NEON},
                                                 {"neondot", EK_IMPL_NEON_DOTPROD}};
    for (const auto& [name, impl] : names)
      if (std::strcmp(e, name) == 0) return impl;
    return -1;
  }();
  if (forced == EK_IMPL_SCALAR) return forced;
  if (forced < 0 || !ek_impl_available(forced) || !a8_simd_ok(s.bits, s.g)) return -1;
  return forced;
}

int pick_a8(const Shape& s) {
  if (const int f = forced_a8(s); f >= 0) return f;
#ifdef EK_HAVE_X86
  // AVX-512 only where its two-row 512-bit kernel runs (one group per 16-byte unit, 2 or 4 bits);
  // the other shapes run the one-row AVX2 code recompiled, which was slower there (w8 per
  // channel 37.5 -> 41.3 us, w2g128 39.9 -> 42.4 us, 1 thread).
  if (a8_simd_ok(s.bits, s.g) && (s.bits == 2 || s.bits == 4) && s.g * s.bits / 8 == 16 && cpu_has_avx512vnni())
    return EK_IMPL_AVX512VNNI;
  if (a8_simd_ok(s.bits, s.g) && cpu_has_avxvnni()) return EK_IMPL_AVXVNNI;
#endif
  if (a8_simd_ok(s.bits, s.g) && cpu_has_avx2()) return EK_IMPL_AVX2;
#ifdef EK_HAVE_NEON
  if (a8_simd_ok(s.bits, s.g)) return cpu_has_dotprod() ? EK_IMPL_NEON_DOTPROD : EK_IMPL_NEON;
#endif
  return EK_IMPL_SCALAR;
}

int linear_a8(const float* x, const Shape& s, const uint8_t* qw, const uint16_t* sc,
              const uint16_t* zr, float* y, int impl) {
  if (impl == EK_IMPL_AUTO) impl = pick_a8(s);
  if (impl != EK_IMPL_SCALAR &&
      ((impl != EK_IMPL_AVX2 && impl != EK_IMPL_AVXVNNI && impl != EK_IMPL_AVX512VNNI && impl != EK_IMPL_NEON &&
        impl != EK_IMPL_NEON_DOTPROD) ||
       !ek_impl_available(impl) ||
       !a8_simd_ok(s.bits, s.g)))
    return EK_UNSUPPORTED;
  // Grown once per thread and reused: no allocation per call in steady state.
  thread_local std::vector<int8_t> qbuf;
  thread_local std::vector<float> fbuf;
  try {
    if (qbuf.size() < static_cast<size_t>(s.M * s.K_pad)) qbuf.resize(s.M * s.K_pad);
    if (fbuf.size() < static_cast<size_t>(2 * s.M * s.G)) fbuf.resize(2 * s.M * s.G);
  } catch (const std::bad_alloc&) {
    return EK_NO_MEMORY;
  }
  A8 a{qbuf.data(), fbuf.data(), fbuf.data() + s.M * s.G};
  prep_a8(s, x, a, impl != EK_IMPL_SCALAR ? PERM_PAIRS : PERM_PLAIN);
  if (impl == EK_IMPL_SCALAR) {
    parallel_rows(s.N, s.M * s.K, [&](int64_t b0, int64_t b1) { rows_scalar_a8(s, a, qw, sc, zr, y, b0, b1); });
    return EK_OK;
  }
#ifdef EK_HAVE_X86
  using Rows = void (*)(const Shape&, const A8&, const uint8_t*, const uint16_t*, const uint16_t*, float*,
                        int64_t, int64_t);
  static const Rows table[3][3] = {  // [avx2, avxvnni, avx512vnni][bits 2, 4, 8]
      {a8_avx2::rows_avx2_a8<2>, a8_avx2::rows_avx2_a8<4>, a8_avx2::rows_avx2_a8<8>},
      {a8_vnni::rows_avx2_a8<2>, a8_vnni::rows_avx2_a8<4>, a8_vnni::rows_avx2_a8<8>},
      {a8_v512::rows_avx2_a8<2>, a8_v512::rows_avx2_a8<4>, a8_v512::rows_avx2_a8<8>}};
  const int isa = impl == EK_IMPL_AVX512VNNI ? 2 : impl == EK_IMPL_AVXVNNI ? 1 : 0;
  const Rows rows = table[isa][s.bits == 2 ? 0 : s.bits == 4 ? 1 : 2];
  parallel_rows(s.N, s.M * s.K, [&](int64_t b0, int64_t b1) { rows(s, a, qw, sc, zr, y, b0, b1); });
  return EK_OK;
#elif defined(EK_HAVE_NEON)
  thread_local std::vector<int32_t> qsbuf;  // 8 bits: per-group sums of xq (wq_a8_neon.h)
  if (s.bits == 8) {
    try {
      if (qsbuf.size() < static_cast<size_t>(s.M * s.G)) qsbuf.resize(s.M * s.G);
    } catch (const std::bad_alloc&) {
      return EK_NO_MEMORY;
    }
    a8_neon::a8_neon_qsum(s, a, qsbuf.data());
  }
  const int32_t* qs = qsbuf.data();
  using Rows = void (*)(const Shape&, const A8&, const int32_t*, const uint8_t*, const uint16_t*,
                        const uint16_t*, float*, int64_t, int64_t);
  static const Rows table[2][3] = {  // [dotprod][bits 2, 4, 8]
      {a8_neon::rows_neon_a8<2>, a8_neon::rows_neon_a8<4>, a8_neon::rows_neon_a8<8>},
      {a8_neondot::rows_neon_a8<2>, a8_neondot::rows_neon_a8<4>, a8_neondot::rows_neon_a8<8>}};
  const Rows rows = table[impl == EK_IMPL_NEON_DOTPROD][s.bits == 2 ? 0 : s.bits == 4 ? 1 : 2];
  parallel_rows(s.N, s.M * s.K, [&](int64_t b0, int64_t b1) { rows(s, a, qs, qw, sc, zr, y, b0, b1); });
  return EK_OK;
#else
  return EK_UNSUPPORTED;
#endif
}

// pick_a8 for the r16 layout: the same instruction sets (and EDGEKIT_A8_IMPL override); AVX-512
// takes every r16 shape (no pair / one-row split as in pick_a8).
int pick_r16(const Shape& s) {
  if (const int f = forced_a8(s); f >= 0) return f;
#ifdef EK_HAVE_X86
  if (r16_ok(s.bits, s.g) && cpu_has_avx512vnni()) return EK_IMPL_AVX512VNNI;
#endif
  return pick_a8(s);
}

int linear_a8_r16(const float* x, const Shape& s, const uint8_t* qw, const uint16_t* sc,
                  const uint16_t* zr, float* y, int impl) {
  if (!r16_ok(s.bits, s.g)) return EK_UNSUPPORTED;
  if (impl == EK_IMPL_AUTO) impl = pick_r16(s);
  if (!ek_impl_available(impl)) return EK_UNSUPPORTED;  // also any other ISA's impl (or an unknown one)
  thread_local std::vector<int8_t> qbuf;
  thread_local std::vector<float> fbuf;
  try {
    if (qbuf.size() < static_cast<size_t>(s.M * s.K_pad)) qbuf.resize(s.M * s.K_pad);
    if (fbuf.size() < static_cast<size_t>(2 * s.M * s.G)) fbuf.resize(2 * s.M * s.G);
  } catch (const std::bad_alloc&) {
    return EK_NO_MEMORY;
  }
  A8 a{qbuf.data(), fbuf.data(), fbuf.data() + s.M * s.G};
  const int64_t NB = (s.N + 15) / 16;
  const int64_t work = 16 * s.M * s.K;  // multiply-adds per block
  if (impl == EK_IMPL_SCALAR) {
    prep_a8(s, x, a, PERM_R16_REF);
    parallel_rows(NB, work, [&](int64_t b0, int64_t b1) { rows_scalar_r16(s, a, qw, sc, zr, y, b0, b1); });
    return EK_OK;
  }
  prep_a8(s, x, a, PERM_R16);
#ifdef EK_HAVE_X86
  using Rows = void (*)(const Shape&, const A8&, const uint8_t*, const uint16_t*, const uint16_t*, float*,
                        int64_t, int64_t);
  static const Rows table[3][3] = {  // [avx2, avxvnni, avx512vnni][bits 2, 4, 8]
      {a8_avx2::rows_r16<2>, a8_avx2::rows_r16<4>, a8_avx2::rows_r16<8>},
      {a8_vnni::rows_r16<2>, a8_vnni::rows_r16<4>, a8_vnni::rows_r16<8>},
      {a8_v512::rows_r16<2>, a8_v512::rows_r16<4>, a8_v512::rows_r16<8>}};
  const int isa = impl == EK_IMPL_AVX512VNNI ? 2 : impl == EK_IMPL_AVXVNNI ? 1 : 0;
  const Rows rows = table[isa][s.bits == 2 ? 0 : s.bits == 4 ? 1 : 2];
  parallel_rows(NB, work, [&](int64_t b0, int64_t b1) { rows(s, a, qw, sc, zr, y, b0, b1); });
  return EK_OK;
#elif defined(EK_HAVE_NEON)
  thread_local std::vector<int32_t> qsbuf;  // 8 bits: per-group sums of xq (wq_r16_neon.h)
  if (s.bits == 8) {
    try {
      if (qsbuf.size() < static_cast<size_t>(s.M * s.G)) qsbuf.resize(s.M * s.G);
    } catch (const std::bad_alloc&) {
      return EK_NO_MEMORY;
    }
    a8_neon::a8_neon_qsum(s, a, qsbuf.data());
  }
  const int32_t* qs = qsbuf.data();
  using Rows = void (*)(const Shape&, const A8&, const int32_t*, const uint8_t*, const uint16_t*,
                        const uint16_t*, float*, int64_t, int64_t);
  static const Rows table[2][3] = {  // [dotprod][bits 2, 4, 8]
      {a8_neon::rows_r16_neon<2>, a8_neon::rows_r16_neon<4>, a8_neon::rows_r16_neon<8>},
      {a8_neondot::rows_r16_neon<2>, a8_neondot::rows_r16_neon<4>, a8_neondot::rows_r16_neon<8>}};
  const Rows rows = table[impl == EK_IMPL_NEON_DOTPROD][s.bits == 2 ? 0 : s.bits == 4 ? 1 : 2];
  parallel_rows(NB, work, [&](int64_t b0, int64_t b1) { rows(s, a, qs, qw, sc, zr, y, b0, b1); });
  return EK_OK;
#else
  return EK_UNSUPPORTED;
#endif
}

}  // namespace

extern "C" {

int64_t ek_row_bytes(int64_t K, int bits, int64_t group_size) {
  Shape s;
  return make_shape(1, K, 1, bits, group_size, &s) ? s.row_bytes : -1;
}

size_t ek_linear_wq_workspace_floats(int64_t M, int64_t K, int bits, int64_t group_size) {
  Shape s;
  if (!make_shape(M, K, 1, bits, group_size, &s)) return 0;
  return static_cast<size_t>(M * (s.K_pad + s.G));
}

int ek_impl_available(int impl) {
  switch (impl) {
    case EK_IMPL_AUTO:
    case EK_IMPL_SCALAR:
      return 1;
    case EK_IMPL_AVX2:
      return cpu_has_avx2() ? 1 : 0;
    case EK_IMPL_AVXVNNI:
#ifdef EK_HAVE_X86
      return cpu_has_avxvnni() ? 1 : 0;
#else
      return 0;
#endif
    case EK_IMPL_AVX512VNNI:
#ifdef EK_HAVE_X86
      return cpu_has_avx512vnni() ? 1 : 0;
#else
      return 0;
#endif
    case EK_IMPL_NEON:
#ifdef EK_HAVE_NEON
      return 1;
#else
      return 0;
#endif
    case EK_IMPL_NEON_DOTPROD:
#ifdef EK_HAVE_NEON
      return cpu_has_dotprod() ? 1 : 0;
#else
      return 0;
#endif
    default:
      return 0;
  }
}

int ek_linear_wq_pick(int64_t K, int bits, int64_t group_size) {
  Shape s;
  if (!make_shape(1, K, 1, bits, group_size, &s)) return -1;
  return pick(s);
}

int ek_linear_wq(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                 const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                 int64_t group_size, float* y, float* workspace, size_t workspace_floats,
                 int impl) {
  Shape s;
  if (!x || !qweight || !scale || !zero || !y) return EK_BAD_ARG;
  if (!make_shape(M, K, N, bits, group_size, &s)) return EK_BAD_ARG;
  if (impl == EK_IMPL_AUTO) impl = pick(s);
  if (impl == EK_IMPL_SCALAR) {
    parallel_rows(N, M * K, [&](int64_t a, int64_t b) {
      rows_scalar(s, x, qweight, scale, zero, y, a, b);
    });
    return EK_OK;
  }
  if (!ek_impl_available(impl) || !simd_shape_ok(bits, s.g)) return EK_UNSUPPORTED;

  const size_t need = static_cast<size_t>(M * (s.K_pad + s.G));
  float* ws = workspace;
  if (ws == nullptr) {
    // Grown once per thread and reused: no allocation per call in steady state.
    thread_local std::vector<float> buf;
    if (buf.size() < need) {
      try {
        buf.resize(need);
      } catch (const std::bad_alloc&) {
        return EK_NO_MEMORY;
      }
    }
    ws = buf.data();
  } else if (workspace_floats < need) {
    return EK_NO_MEMORY;
  }
  float* xp = ws;
  float* xsum = ws + M * s.K_pad;
  prep_x(s, x, xp, xsum);

  if (impl == EK_IMPL_AVX2) {
#ifdef EK_HAVE_X86
    parallel_rows(N, M * K, [&](int64_t a, int64_t b) {
      if (bits == 2) rows_avx2<2>(s, xp, xsum, qweight, scale, zero, y, a, b);
      else rows_avx2<4>(s, xp, xsum, qweight, scale, zero, y, a, b);
    });
    return EK_OK;
#endif
  }
  if (impl == EK_IMPL_NEON) {
#ifdef EK_HAVE_NEON
    parallel_rows(N, M * K, [&](int64_t a, int64_t b) {
      if (bits == 2) rows_neon<2>(s, xp, xsum, qweight, scale, zero, y, a, b);
      else rows_neon<4>(s, xp, xsum, qweight, scale, zero, y, a, b);
    });
    return EK_OK;
#endif
  }
  return EK_UNSUPPORTED;
}

int ek_get_num_threads(void) {
#ifdef EDGEKIT_USE_ET_THREADPOOL
  auto* pool = executorch::extension::threadpool::get_threadpool();
  return pool ? static_cast<int>(pool->get_thread_count()) : 1;
#else
  return 1;
#endif
}

int ek_set_num_threads(int n) {
  if (n < 1) return EK_BAD_ARG;
#ifdef EDGEKIT_USE_ET_THREADPOOL
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (!pool || !pool->_unsafe_reset_threadpool(static_cast<uint32_t>(n))) return EK_UNSUPPORTED;
  return EK_OK;
#else
  return n == 1 ? EK_OK : EK_UNSUPPORTED;
#endif
}

double ek_bench_linear_wq(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                          const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                          int64_t group_size, float* y, int impl, int iters) {
  return time_calls(iters, [&] {
    return ek_linear_wq(x, M, K, qweight, scale, zero, N, bits, group_size, y, nullptr, 0, impl);
  });
}

int ek_linear_wq_a8(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                    const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                    int64_t group_size, float* y, int impl) {
  Shape s;
  if (!x || !qweight || !scale || !zero || !y) return EK_BAD_ARG;
  if (!make_shape(M, K, N, bits, group_size, &s)) return EK_BAD_ARG;
  return linear_a8(x, s, qweight, scale, zero, y, impl);
}

int ek_linear_wq_a8_pick(int64_t K, int bits, int64_t group_size) {
  Shape s;
  if (!make_shape(1, K, 1, bits, group_size, &s)) return -1;
  return pick_a8(s);
}

double ek_bench_linear_wq_a8(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                             const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                             int64_t group_size, float* y, int impl, int iters) {
  return time_calls(iters, [&] { return ek_linear_wq_a8(x, M, K, qweight, scale, zero, N, bits, group_size, y, impl); });
}

int64_t ek_r16_bytes(int64_t N, int64_t K, int bits, int64_t group_size) {
  Shape s;
  if (!make_shape(1, K, N, bits, group_size, &s) || !r16_ok(bits, s.g)) return -1;
  return (N + 15) / 16 * 16 * s.row_bytes;
}

int ek_interleave_r16(const uint8_t* qweight, const uint16_t* scale, const uint16_t* zero, int64_t N,
                      int64_t K, int bits, int64_t group_size, uint8_t* qw_r16, uint16_t* scale_r16,
                      uint16_t* zero_r16) {
  Shape s;
  if (!qweight || !scale || !zero || !qw_r16 || !scale_r16 || !zero_r16) return EK_BAD_ARG;
  if (!make_shape(1, K, N, bits, group_size, &s)) return EK_BAD_ARG;
  if (!r16_ok(bits, s.g)) return EK_UNSUPPORTED;
  const int64_t NB = (N + 15) / 16;
  std::memset(qw_r16, 0, static_cast<size_t>(NB * 16 * s.row_bytes));
  std::memset(scale_r16, 0, sizeof(uint16_t) * NB * 16 * s.G);
  std::memset(zero_r16, 0, sizeof(uint16_t) * NB * 16 * s.G);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < s.row_bytes; ++i) qw_r16[r16_byte(s, n, i)] = qweight[n * s.row_bytes + i];
    for (int64_t g = 0; g < s.G; ++g) {
      scale_r16[((n / 16) * s.G + g) * 16 + n % 16] = scale[n * s.G + g];
      zero_r16[((n / 16) * s.G + g) * 16 + n % 16] = zero[n * s.G + g];
    }
  }
  return EK_OK;
}

int ek_linear_wq_a8_r16(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                        const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                        int64_t group_size, float* y, int impl) {
  Shape s;
  if (!x || !qweight || !scale || !zero || !y) return EK_BAD_ARG;
  if (!make_shape(M, K, N, bits, group_size, &s)) return EK_BAD_ARG;
  return linear_a8_r16(x, s, qweight, scale, zero, y, impl);
}

int ek_linear_wq_a8_r16_pick(int64_t K, int bits, int64_t group_size) {
  Shape s;
  if (!make_shape(1, K, 1, bits, group_size, &s) || !r16_ok(bits, s.g)) return -1;
  return pick_r16(s);
}

double ek_bench_linear_wq_a8_r16(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                                 const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                                 int64_t group_size, float* y, int impl, int iters) {
  return time_calls(iters, [&] { return ek_linear_wq_a8_r16(x, M, K, qweight, scale, zero, N, bits, group_size, y, impl); });
}

const char* ek_status_str(int status) {
  switch (status) {
    case EK_OK:
      return "ok";
    case EK_BAD_ARG:
      return "bad argument";
    case EK_UNSUPPORTED:
      return "unsupported implementation for this shape or CPU";
    case EK_NO_MEMORY:
      return "workspace too small or out of memory";
    default:
      return "unknown status";
  }
}

}  // extern "C"
