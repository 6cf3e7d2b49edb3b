// NEON kernels of the int8-activation path (wq_linear.cpp, "int8 activations"), aarch64 only.
// Included twice by wq_linear.cpp after Shape, A8 and prep_a8, inside namespace a8_neon (EK_TGT
// empty, EK_DOTPROD 0: base armv8-a) and a8_neondot (EK_TGT = the dot product target attribute,
// EK_DOTPROD 1), so each copy is compiled for its own instruction set and cpu_has_dotprod()
// (HWCAP_ASIMDDP) picks one at run time, like the x86 pair in wq_a8_x86.h. Not a standalone header.
//
// They read the same permuted xq as the x86 kernels (prep_a8 with permute = true): in a 32-byte
// chunk, code slot j of byte b (code CPB*b + j) pairs with xq_p[c0 + 32*j + b], so a 16-byte
// register h of the chunk takes its slot-j activations from xq_p + c0 + 16*h at stride 32; a
// lone 16-byte unit reads them at stride 16.
//
// With EK_DOTPROD, SDOT sums four int8 products per int32 lane; without it, SMULL/SMLAL make
// int16 products that SADALP adds pairwise into int32 lanes. (A target attribute does not define
// __ARM_FEATURE_DOTPROD, hence the macro.) There is no mixed-sign int8 dot before i8mm, so the
// codes enter as signed bytes: 2/4-bit codes (0..15) as they are, 8-bit codes as u - 128 (one
// EOR), with 128 * sum(xq) over the group added back exactly (a8_neon_qsum).
// 3-bit codes straddle bytes and have no 16-byte unit: they stay on the scalar reference.

// Slot J of the 16 bytes of v (code CPB*i + J of byte i), as signed bytes.
template <int BITS, int J>
EK_TGT inline int8x16_t a8_slot(uint8x16_t v) {
  if constexpr (BITS == 8) {
    return vreinterpretq_s8_u8(veorq_u8(v, vdupq_n_u8(0x80)));  // u - 128
  } else {
    const uint8x16_t mask = vdupq_n_u8((1u << BITS) - 1u);
    if constexpr (J == 0) return vreinterpretq_s8_u8(vandq_u8(v, mask));
    else return vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, J * BITS), mask));
  }
}

#if !EK_DOTPROD
template <int BITS, int J>
EK_TGT inline int16x8_t a8_mla_slot(int16x8_t p, uint8x16_t v, const int8_t* xq) {
  const int8x16_t c = a8_slot<BITS, J>(v), x = vld1q_s8(xq);
  return vmlal_high_s8(vmlal_s8(p, vget_low_s8(c), vget_low_s8(x)), c, x);
}
#endif

// acc + sum over slots j of slot j of v times the 16 activations at xq + STRIDE * j (4 int32
// lanes; only their total is meaningful).
template <int BITS, int STRIDE>
EK_TGT inline int32x4_t a8_unit_dot(int32x4_t acc, uint8x16_t v, const int8_t* xq) {
#if EK_DOTPROD
  acc = vdotq_s32(acc, a8_slot<BITS, 0>(v), vld1q_s8(xq));
  if constexpr (BITS <= 4) acc = vdotq_s32(acc, a8_slot<BITS, 1>(v), vld1q_s8(xq + STRIDE));
  if constexpr (BITS == 2) {
    acc = vdotq_s32(acc, a8_slot<BITS, 2>(v), vld1q_s8(xq + 2 * STRIDE));
    acc = vdotq_s32(acc, a8_slot<BITS, 3>(v), vld1q_s8(xq + 3 * STRIDE));
  }
  return acc;
#else
  // Each int16 lane sums 2 * CPB products before SADALP widens them: at most 2*4*3*127 (2-bit),
  // 2*2*15*127 (4-bit), 2*128*127 = 32512 (8-bit, u - 128 = -128 against xq = -127) < 2^15.
  int16x8_t p = a8_mla_slot<BITS, 0>(vdupq_n_s16(0), v, xq);
  if constexpr (BITS <= 4) p = a8_mla_slot<BITS, 1>(p, v, xq + STRIDE);
  if constexpr (BITS == 2) {
    p = a8_mla_slot<BITS, 2>(p, v, xq + 2 * STRIDE);
    p = a8_mla_slot<BITS, 3>(p, v, xq + 3 * STRIDE);
  }
  return vpadalq_s16(acc, p);
#endif
}

// 8 bits: qsum[m, g] = sum of the group's xq (8-bit xq is not permuted, so a group's
// activations are its own g bytes; padded columns are zero). Other widths need none.
EK_TGT inline void a8_neon_qsum(const Shape& s, const A8& a, int32_t* qsum) {
  for (int64_t m = 0; m < s.M; ++m) {
    for (int64_t g = 0; g < s.G; ++g) {
      const int8_t* p = a.xq + m * s.K_pad + g * s.g;
      int32x4_t acc = vdupq_n_s32(0);
      for (int64_t k = 0; k < s.g; k += 16) acc = vpadalq_s16(acc, vpaddlq_s8(vld1q_s8(p + k)));
      qsum[m * s.G + g] = vaddvq_s32(acc);
    }
  }
}

// Integer accumulator of group g at the start: 128 * sum(xq) in lane 0 for 8 bits (undoes u - 128).
template <int BITS>
EK_TGT inline int32x4_t a8_acc0(const int32_t* qsum, int64_t g) {
  if constexpr (BITS == 8) return vsetq_lane_s32(128 * qsum[g], vdupq_n_s32(0), 0);
  else return vdupq_n_s32(0);
}

EK_TGT inline float a8_h2f(uint16_t h) {
  __fp16 v;
  std::memcpy(&v, &h, sizeof(v));
  return static_cast<float>(v);
}

EK_TGT inline float32x4_t a8_h2f4(const uint16_t* h) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h))); }

// One group per 16-byte unit (w2g64, w4g32, w8g16): 32-byte chunks hold groups (g, g+1), group
// g + h at stride 32 from xq_p + 32 * CPB * (g / 2) + 16 * h; an odd last group is a lone unit.
// Four groups at a time share one fp16 conversion of their scales and zeros.
template <int BITS>
EK_TGT float row_pairs_a8_neon(const Shape& s, const A8& a, const int32_t* qsum, const uint8_t* row,
                        const uint16_t* sc, const uint16_t* zr, int64_t m) {
  constexpr int64_t CB = 16 * (8 / BITS);  // codes per unit (= per group)
  const int8_t* xq = a.xq + m * s.K_pad;
  const float* dx = a.dx + m * s.G;
  const float* xs = a.xsum + m * s.G;
  const int64_t paired = s.G & ~int64_t{1};
  float32x4_t facc = vdupq_n_f32(0.f), zacc = vdupq_n_f32(0.f);
  int64_t g = 0;
  for (; g + 4 <= paired; g += 4) {
    const float32x4_t p = vmulq_f32(a8_h2f4(sc + g), vld1q_f32(dx + g));
    zacc = vfmaq_f32(zacc, a8_h2f4(zr + g), vld1q_f32(xs + g));
    const uint8_t* r = row + g * 16;
    const int8_t* x = xq + g * CB;
    const int32x4_t d0 = a8_unit_dot<BITS, 32>(a8_acc0<BITS>(qsum, g), vld1q_u8(r), x);
    const int32x4_t d1 = a8_unit_dot<BITS, 32>(a8_acc0<BITS>(qsum, g + 1), vld1q_u8(r + 16), x + 16);
    const int32x4_t d2 = a8_unit_dot<BITS, 32>(a8_acc0<BITS>(qsum, g + 2), vld1q_u8(r + 32), x + 2 * CB);
    const int32x4_t d3 = a8_unit_dot<BITS, 32>(a8_acc0<BITS>(qsum, g + 3), vld1q_u8(r + 48), x + 2 * CB + 16);
    facc = vfmaq_laneq_f32(facc, vcvtq_f32_s32(d0), p, 0);
    facc = vfmaq_laneq_f32(facc, vcvtq_f32_s32(d1), p, 1);
    facc = vfmaq_laneq_f32(facc, vcvtq_f32_s32(d2), p, 2);
    facc = vfmaq_laneq_f32(facc, vcvtq_f32_s32(d3), p, 3);
  }
  float tail = 0.f;
  for (; g < s.G; ++g) {
    const uint8x16_t v = vld1q_u8(row + g * 16);
    const int32x4_t d0 = a8_acc0<BITS>(qsum, g);
    const int32x4_t d = g < paired ? a8_unit_dot<BITS, 32>(d0, v, xq + (g & ~int64_t{1}) * CB + 16 * (g & 1))
                                   : a8_unit_dot<BITS, 16>(d0, v, xq + g * CB);
    tail += static_cast<float>(vaddvq_s32(d)) * (a8_h2f(sc[g]) * dx[g]) + a8_h2f(zr[g]) * xs[g];
  }
  return vaddvq_f32(vaddq_f32(facc, zacc)) + tail;
}

// Groups of 32 bytes or more (w2g128, w4g64+, w8 per channel): the two registers of a chunk
// accumulate in separate int32 vectors (two dependency chains), then one FMA per group.
template <int BITS>
EK_TGT float row_groups_a8_neon(const Shape& s, const A8& a, const int32_t* qsum, const uint8_t* row,
                         const uint16_t* sc, const uint16_t* zr, int64_t m) {
  constexpr int CPB = 8 / BITS;
  const int8_t* xq = a.xq + m * s.K_pad;
  const float* dx = a.dx + m * s.G;
  const float* xs = a.xsum + m * s.G;
  const int64_t gb = s.g * BITS / 8;
  float32x4_t facc = vdupq_n_f32(0.f);
  float tail = 0.f;
  const uint8_t* p = row;
  for (int64_t g = 0; g < s.G; ++g, p += gb) {
    const int8_t* xg = xq + g * s.g;
    int32x4_t acc0 = a8_acc0<BITS>(qsum, g), acc1 = vdupq_n_s32(0);
    int64_t b = 0;
    for (; b + 32 <= gb; b += 32) {
      acc0 = a8_unit_dot<BITS, 32>(acc0, vld1q_u8(p + b), xg + b * CPB);
      acc1 = a8_unit_dot<BITS, 32>(acc1, vld1q_u8(p + b + 16), xg + b * CPB + 16);
    }
    if (b < gb) acc0 = a8_unit_dot<BITS, 16>(acc0, vld1q_u8(p + b), xg + b * CPB);
    facc = vfmaq_n_f32(facc, vcvtq_f32_s32(vaddq_s32(acc0, acc1)), a8_h2f(sc[g]) * dx[g]);
    tail += a8_h2f(zr[g]) * xs[g];
  }
  return vaddvq_f32(facc) + tail;
}

// qsum: [M, G] from a8_neon_qsum for 8 bits, unused (may be null) for 2 and 4.
template <int BITS>
EK_TGT void rows_neon_a8(const Shape& s, const A8& a, const int32_t* qsum, const uint8_t* qw,
                  const uint16_t* sc, const uint16_t* zr, float* y, int64_t n0, int64_t n1) {
  const bool pairs = s.g * BITS / 8 == 16;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = qw + n * s.row_bytes;
    const uint16_t* scn = sc + n * s.G;
    const uint16_t* zrn = zr + n * s.G;
    for (int64_t m = 0; m < s.M; ++m) {
      const int32_t* qs = BITS == 8 ? qsum + m * s.G : nullptr;
      y[m * s.N + n] = pairs ? row_pairs_a8_neon<BITS>(s, a, qs, row, scn, zrn, m)
                             : row_groups_a8_neon<BITS>(s, a, qs, row, scn, zrn, m);
    }
  }
}
