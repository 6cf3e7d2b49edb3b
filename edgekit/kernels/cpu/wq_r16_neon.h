// NEON kernels of the row-interleaved ("r16") int8-activation path (wq_r16_x86.h describes the
// layout). Included by wq_linear.cpp after wq_a8_neon.h inside a8_neon and a8_neondot. Not a
// standalone header.
//
// A 64-byte line (dword d of 16 bk.rows) is four 128-bit registers of four rows each. With
// EK_DOTPROD, SDOT against the slot's four activations broadcast to every lane adds four
// products per row; without it, SMULL makes int16 products (|u x| <= 128 * 127) and two
// pairwise adds reduce each row's four to one int32 lane. Codes enter as signed bytes like
// wq_a8_neon.h: 8-bit codes as u - 128, with 128 * sum(xq) of the group added back (qsum).
// Per row the float steps are the x86 kernels' (f = fma(isum, scale * dx, f), z = fma(zero,
// xsum, z), y = f + z), so NEON, x86 and the scalar reference give bit-identical outputs.

template <int BITS>
EK_TGT inline int8x16_t r16_slot(uint8x16_t v, int j) {
  if constexpr (BITS == 8) {
    return vreinterpretq_s8_u8(veorq_u8(v, vdupq_n_u8(0x80)));
  } else {
    const uint8x16_t mask = vdupq_n_u8((1u << BITS) - 1u);
    // j is a compile-time constant after unrolling; vshlq with a negative count shifts right
    return vreinterpretq_s8_u8(vandq_u8(vshlq_u8(v, vdupq_n_s8(static_cast<int8_t>(-BITS * j))), mask));
  }
}

EK_TGT inline int32x4_t r16_dot(int32x4_t acc, int8x16_t c, int8x16_t x) {
#if EK_DOTPROD
  return vdotq_s32(acc, c, x);
#else
  const int16x8_t lo = vmull_s8(vget_low_s8(c), vget_low_s8(x));  // rows 0, 1
  const int16x8_t hi = vmull_high_s8(c, x);                       // rows 2, 3
  return vaddq_s32(acc, vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi)));
#endif
}

template <int BITS>
EK_TGT void rows_r16_neon(const Shape& s, const A8& a, const int32_t* qsum, const uint8_t* qw,
                          const uint16_t* sc, const uint16_t* zr, float* y, int64_t b0, int64_t b1) {
  constexpr int CPB = 8 / BITS;
  const int64_t ub = s.row_bytes / s.G;
  const int64_t line = 16 * ub;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const R16Block bk = r16_block(s, qw, sc, zr, blk);
    for (int64_t m = 0; m < s.M; ++m) {
      const int8_t* xr = a.xq + m * s.K_pad;
      float32x4_t f[4], z[4];
      for (int h = 0; h < 4; ++h) f[h] = z[h] = vdupq_n_f32(0.f);
      for (int64_t g = 0; g < s.G; ++g) {
        const uint8_t* w = bk.w + g * line;
        const int8_t* xg = xr + g * ub * CPB;
        int32x4_t acc[4];
        for (int h = 0; h < 4; ++h)
          acc[h] = vdupq_n_s32(BITS == 8 ? 128 * qsum[m * s.G + g] : 0);
        for (int64_t d = 0; d < ub / 4; ++d) {
#pragma GCC unroll 4
          for (int j = 0; j < CPB; ++j) {
            int32_t x4;
            std::memcpy(&x4, xg + (d * CPB + j) * 4, 4);
            const int8x16_t xb = vreinterpretq_s8_s32(vdupq_n_s32(x4));
#pragma GCC unroll 4
            for (int h = 0; h < 4; ++h) acc[h] = r16_dot(acc[h], r16_slot<BITS>(vld1q_u8(w + d * 64 + 16 * h), j), xb);
          }
        }
        const float32x4_t dx = vdupq_n_f32(a.dx[m * s.G + g]), xs = vdupq_n_f32(a.xsum[m * s.G + g]);
        for (int h = 0; h < 4; ++h) {
          const float32x4_t sv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(bk.s + g * 16 + 4 * h)));
          const float32x4_t zv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(bk.z + g * 16 + 4 * h)));
          f[h] = vfmaq_f32(f[h], vcvtq_f32_s32(acc[h]), vmulq_f32(sv, dx));
          z[h] = vfmaq_f32(z[h], zv, xs);
        }
      }
      float out[16];
      for (int h = 0; h < 4; ++h) vst1q_f32(out + 4 * h, vaddq_f32(f[h], z[h]));
      std::memcpy(y + m * s.N + 16 * blk, out, sizeof(float) * bk.rows);
    }
  }
}
