// x86 kernels of the row-interleaved ("r16") int8-activation path (wq_linear.h,
// ek_linear_wq_a8_r16). Included by wq_linear.cpp after wq_a8_x86.h inside the same three
// namespaces (a8_avx2, a8_vnni, a8_v512), so each copy is compiled for its own instruction set.
// Not a standalone header.
//
// Layout: 16 rows per block; for group g and dword d of the group's unit, one 64-byte line holds
// dword d of the 16 rows (row r at bytes 4r .. 4r + 3). Scales and zeros: 16 fp16 per (block,
// group). A line is 16 int32 lanes, one per row, so a vpdpbusd of a code slot against the four
// activations of that slot broadcast to every lane adds four products to each of the 16 rows:
// there is no horizontal reduction, no permute of scales and no per-row tail. The activations are
// permuted once per call (r16_permute) so that slot j of dword d's byte b (code
// CPB (4 d + b) + j of the group) meets xr[(CPB d + j) 4 + b].
//
// In cache, 1 thread, Zen 5, activation quantization included (benchmarks/bench_kernel_w2.py,
// row-major pairs -> r16): w2g64 576x576 3.5 -> 1.7 us, 1536x576 9.3 -> 4.0 us, 576x1536 6.7 ->
// 4.4 us; bench_linear_wq(r16=True): w4g32 49152x576 417 -> 229 us.
//
// The int32 sum of a group is exact, so the float results differ from the pair kernels' only by
// the order of the float additions; every row is computed the same way whatever block or thread
// split it falls in, so thread counts do not change outputs.

// vpdpbusd-equivalent on 256 bits: acc + four u8 x s8 products per int32 lane. Without VNNI,
// maddubs makes int16 pair sums (2/4-bit codes: at most 2 * 15 * 127, no saturation) and madd
// adds the pairs; 8-bit codes would saturate maddubs, so they go in as two 4-bit halves.
template <int BITS>
EK_TGT inline __m256i r16_dot256(__m256i acc, __m256i c, __m256i x) {
#if EK_VNNI
  return EK_DPBUSD256(acc, c, x);
#else
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (BITS == 8) {
    const __m256i lo = _mm256_and_si256(c, _mm256_set1_epi8(0x0f));
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), _mm256_set1_epi8(0x0f));
    const __m256i dl = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, x), ones);
    const __m256i dh = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, x), ones);
    return _mm256_add_epi32(acc, _mm256_add_epi32(dl, _mm256_slli_epi32(dh, 4)));
  } else {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(c, x), ones));
  }
#endif
}

// Code slot j (BITS bits at bit BITS j of every byte); 8 bits: the byte itself.
template <int BITS>
EK_TGT inline __m256i r16_slot256(__m256i v, int j) {
  if constexpr (BITS == 8) return v;
  else return slot256<BITS>(v, j);
}

#if EK_AVX512
template <int BITS>
EK_TGT inline __m512i r16_slot512(__m512i v, int j) {
  if constexpr (BITS == 8) return v;
  else return slot512<BITS>(v, j);
}

// One group of one block for token m: the 16 rows' exact integer sums. D4 = dwords / 4 of the
// group's unit (1 for w2g64, w4g32, w8g16). Four accumulators, chain (CPB d + j) % 4, so the
// vpdpbusd latency overlaps.
template <int BITS>
EK_TGT inline __m512i r16_group512(const uint8_t* w, const int8_t* xr, int64_t D4) {
  constexpr int CPB = 8 / BITS;
  __m512i acc[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                    _mm512_setzero_si512()};
  for (int64_t q = 0; q < D4; ++q) {
#pragma GCC unroll 4
    for (int dd = 0; dd < 4; ++dd) {
      const __m512i v = _mm512_loadu_si512(w + (4 * q + dd) * 64);
#pragma GCC unroll 4
      for (int j = 0; j < CPB; ++j) {
        int32_t x4;
        std::memcpy(&x4, xr + ((4 * q + dd) * CPB + j) * 4, 4);
        const int c = (dd * CPB + j) & 3;
        acc[c] = _mm512_dpbusd_epi32(acc[c], r16_slot512<BITS>(v, j), _mm512_set1_epi32(x4));
      }
    }
  }
  return _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), _mm512_add_epi32(acc[2], acc[3]));
}
#endif

// Blocks [b0, b1) of the interleaved weights: y[m, 16 blk + r] for the block's real rows.
template <int BITS>
EK_TGT void rows_r16(const Shape& s, const A8& a, const uint8_t* qw, const uint16_t* sc, const uint16_t* zr,
                     float* y, int64_t b0, int64_t b1) {
  const int64_t ub = s.row_bytes / s.G;  // unit bytes per group and row (a multiple of 16)
  const int64_t line = 16 * ub;          // bytes of one group of one block
  for (int64_t blk = b0; blk < b1; ++blk) {
    const R16Block bk = r16_block(s, qw, sc, zr, blk);
    for (int64_t m = 0; m < s.M; ++m) {
      const int8_t* xr = a.xq + m * s.K_pad;
      const float* dx = a.dx + m * s.G;
      const float* xs = a.xsum + m * s.G;
      float* yo = y + m * s.N + 16 * blk;
#if EK_AVX512
      const int64_t D4 = ub / 16;
      __m512 f = _mm512_setzero_ps(), z = _mm512_setzero_ps();
      for (int64_t g = 0; g < s.G; ++g) {
        const uint8_t* w = bk.w + g * line;
        if (m == 0)
          for (int64_t b = 0; b < line; b += 64) _mm_prefetch(reinterpret_cast<const char*>(w + b) + EK_PREFETCH, _MM_HINT_T0);
        const __m512i isum = r16_group512<BITS>(w, xr + g * ub * (8 / BITS), D4);
        const __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk.s + g * 16)));
        const __m512 zv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bk.z + g * 16)));
        f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(sv, _mm512_set1_ps(dx[g])), f);
        z = _mm512_fmadd_ps(zv, _mm512_set1_ps(xs[g]), z);
      }
      _mm512_mask_storeu_ps(yo, static_cast<__mmask16>((1u << bk.rows) - 1u), _mm512_add_ps(f, z));
#else
      constexpr int CPB = 8 / BITS;
      __m256 f[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()}, z[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t g = 0; g < s.G; ++g) {
        const uint8_t* w = bk.w + g * line;
        if (m == 0)
          for (int64_t b = 0; b < line; b += 64) _mm_prefetch(reinterpret_cast<const char*>(w + b) + EK_PREFETCH, _MM_HINT_T0);
        const int8_t* xg = xr + g * ub * CPB;
        __m256i acc[2][2] = {{_mm256_setzero_si256(), _mm256_setzero_si256()},
                             {_mm256_setzero_si256(), _mm256_setzero_si256()}};  // [half][chain]
        for (int64_t d = 0; d < ub / 4; ++d) {
          const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + d * 64));
          const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + d * 64 + 32));
#pragma GCC unroll 4
          for (int j = 0; j < CPB; ++j) {
            int32_t x4;
            std::memcpy(&x4, xg + (d * CPB + j) * 4, 4);
            const __m256i xb = _mm256_set1_epi32(x4);
            const int c = (d * CPB + j) & 1;  // two chains per half (8 bits: alternate dwords)
            acc[0][c] = r16_dot256<BITS>(acc[0][c], r16_slot256<BITS>(v0, j), xb);
            acc[1][c] = r16_dot256<BITS>(acc[1][c], r16_slot256<BITS>(v1, j), xb);
          }
        }
        const __m256 d = _mm256_set1_ps(dx[g]), x = _mm256_set1_ps(xs[g]);
        for (int h = 0; h < 2; ++h) {
          const __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bk.s + g * 16 + 8 * h)));
          const __m256 zv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bk.z + g * 16 + 8 * h)));
          const __m256i isum = _mm256_add_epi32(acc[h][0], acc[h][1]);
          f[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(sv, d), f[h]);
          z[h] = _mm256_fmadd_ps(zv, x, z[h]);
        }
      }
      float out[16];
      _mm256_storeu_ps(out, _mm256_add_ps(f[0], z[0]));
      _mm256_storeu_ps(out + 8, _mm256_add_ps(f[1], z[1]));
      std::memcpy(yo, out, sizeof(float) * bk.rows);
#endif
    }
  }
}
#undef EK_DPBUSD256
