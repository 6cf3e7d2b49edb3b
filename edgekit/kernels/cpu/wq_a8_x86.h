// x86 kernels of the int8-activation path (wq_linear.cpp, "int8 activations"). Included three
// times by wq_linear.cpp, inside namespace a8_avx2 (EK_TGT = avx2,fma,f16c; EK_VNNI 0), a8_vnni
// (plus avxvnni: vpdpbusd replaces maddubs + madd; EK_VNNI 1) and a8_v512 (plus AVX-512 F, BW,
// DQ, VL and VNNI; EK_AVX512 1: two-row kernels in 512-bit registers), so each copy is compiled
// for its own instruction set and CPUID picks one at run time. Not a standalone header.

// vpdpbusd on 256 bits: the VEX form (AVX-VNNI) or, in the AVX-512 build, the EVEX form
// (AVX512-VNNI + VL), so that build also runs on CPUs with AVX512-VNNI but no AVX-VNNI (Ice
// Lake, Zen 4). slot256 / slot512 take code slot j out of every byte; the AVX-512 build does it
// for slots 1.. with one GFNI affine instruction instead of a shift and an and (same codes, so
// the same results; w2g64 in-cache microbenchmark, 1 thread, alternating builds: 576x576 4.4 ->
// 4.2 us, 3072x576 23.0 -> 22.0, 4096x4096 122.7 -> 117.3).
#if EK_AVX512
#define EK_DPBUSD256 _mm256_dpbusd_epi32
// The GF(2) matrix of gf2p8affineqb that moves bits [BITS j, BITS j + BITS) of each byte to
// bits [0, BITS) and clears the others: output bit i is the parity of (matrix byte 7 - i) & x.
template <int BITS>
constexpr long long gf_select(int j) {
  long long m = 0;
  for (int i = 0; i < BITS; ++i) m |= static_cast<long long>(1u << (BITS * j + i)) << (8 * (7 - i));
  return m;
}
// Code slot j of every byte of v (BITS bits at bit BITS j), as u8 values.
template <int BITS>
EK_TGT inline __m512i slot512(__m512i v, int j) {
  return j ? _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64(gf_select<BITS>(j)), 0)
           : _mm512_and_si512(v, _mm512_set1_epi8((1 << BITS) - 1));
}
template <int BITS>
EK_TGT inline __m256i slot256(__m256i v, int j) {
  return j ? _mm256_gf2p8affine_epi64_epi8(v, _mm256_set1_epi64x(gf_select<BITS>(j)), 0)
           : _mm256_and_si256(v, _mm256_set1_epi8((1 << BITS) - 1));
}
#else
#define EK_DPBUSD256 _mm256_dpbusd_avx_epi32
template <int BITS>
EK_TGT inline __m256i slot256(__m256i v, int j) {
  return _mm256_and_si256(j ? _mm256_srli_epi16(v, BITS * j) : v, _mm256_set1_epi8((1 << BITS) - 1));
}
#endif

// Sum over code slots j of u * xq for one 32-byte chunk: 8 int32 lanes, lanes 0-3 from the low
// 16 bytes, 4-7 from the high 16. 2/4 bits: u8 codes x s8 activations with maddubs (pairs,
// summed over j in int16: at most 2 * CPB * 15 * 127 < 2^15). 8 bits: codes 0..255 would
// saturate maddubs, so both sides are widened to int16 and multiplied with madd.
template <int BITS>
EK_TGT inline __m256i chunk_dot(__m256i v, const int8_t* xq) {
  const __m256i ones = _mm256_set1_epi16(1);
  if constexpr (BITS == 8) {
    const __m256i r0 = _mm256_madd_epi16(
        _mm256_cvtepu8_epi16(_mm256_castsi256_si128(v)),
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq))));
    const __m256i r1 = _mm256_madd_epi16(
        _mm256_cvtepu8_epi16(_mm256_extracti128_si256(v, 1)),
        _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16))));
    // hadd leaves 64-bit quarters (r0, r1, r0, r1); reorder to lanes 0-3 = r0, 4-7 = r1
    return _mm256_permute4x64_epi64(_mm256_hadd_epi32(r0, r1), 0xd8);
  } else if constexpr (EK_VNNI) {  // vpdpbusd: u8 x s8, four products summed per int32 lane
    constexpr int CPB = 8 / BITS;
    __m256i acc = _mm256_setzero_si256();
    for (int j = 0; j < CPB; ++j) {
      acc = EK_DPBUSD256(acc, slot256<BITS>(v, j), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * j)));
    }
    return acc;
  } else {
    constexpr int CPB = 8 / BITS;
    const __m256i mask = _mm256_set1_epi8((1 << BITS) - 1);
    __m256i acc = _mm256_maddubs_epi16(_mm256_and_si256(v, mask),
                                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)));
    for (int j = 1; j < CPB; ++j) {
      const __m256i c = _mm256_and_si256(_mm256_srli_epi16(v, BITS * j), mask);
      acc = _mm256_add_epi16(
          acc, _mm256_maddubs_epi16(c, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32 * j))));
    }
    return _mm256_madd_epi16(acc, ones);
  }
}

// The same for a lone 16-byte unit: 4 int32 lanes.
template <int BITS>
EK_TGT inline __m128i unit_dot(__m128i v, const int8_t* xq) {
  const __m128i ones = _mm_set1_epi16(1);
  if constexpr (BITS == 8) {
    const __m256i r = _mm256_madd_epi16(
        _mm256_cvtepu8_epi16(v), _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq))));
    return _mm_add_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  } else {
    constexpr int CPB = 8 / BITS;
    const __m128i mask = _mm_set1_epi8((1 << BITS) - 1);
    __m128i acc = _mm_maddubs_epi16(_mm_and_si128(v, mask), _mm_loadu_si128(reinterpret_cast<const __m128i*>(xq)));
    for (int j = 1; j < CPB; ++j) {
      const __m128i c = _mm_and_si128(_mm_srli_epi16(v, BITS * j), mask);
      acc = _mm_add_epi16(acc, _mm_maddubs_epi16(c, _mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16 * j))));
    }
    return _mm_madd_epi16(acc, ones);
  }
}

EK_TGT inline float hsum128(__m128 v) {
  v = _mm_add_ps(v, _mm_movehl_ps(v, v));
  v = _mm_add_ss(v, _mm_shuffle_ps(v, v, 1));
  return _mm_cvtss_f32(v);
}

// One group per 16-byte unit (w2g64, w4g32, w8g16): 32-byte chunks hold groups (g, g+1).
// Eight groups at a time share one F16C conversion of their scales and zeros.
template <int BITS>
EK_TGT float row_pairs_a8(const Shape& s, const A8& a, const uint8_t* row, const uint16_t* sc,
                           const uint16_t* zr, int64_t m) {
  const int8_t* xq = a.xq + m * s.K_pad;
  const float* dx = a.dx + m * s.G;
  const float* xs = a.xsum + m * s.G;
  const int64_t cb = 16 * (8 / BITS);  // codes per unit (= per group)
  __m256 facc = _mm256_setzero_ps(), zacc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= s.G; g += 8) {
    const __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + g)));
    const __m256 zv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zr + g)));
    const __m256 p = _mm256_mul_ps(sv, _mm256_loadu_ps(dx + g));
    zacc = _mm256_fmadd_ps(zv, _mm256_loadu_ps(xs + g), zacc);
    for (int c = 0; c < 4; ++c) {
      const int64_t gg = g + 2 * c;
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + gg * 16));
      const __m256 f = _mm256_cvtepi32_ps(chunk_dot<BITS>(v, xq + gg * cb));
      const __m256i idx = _mm256_setr_epi32(2 * c, 2 * c, 2 * c, 2 * c, 2 * c + 1, 2 * c + 1, 2 * c + 1, 2 * c + 1);
      facc = _mm256_fmadd_ps(f, _mm256_permutevar8x32_ps(p, idx), facc);
    }
  }
  float tail = 0.f;
  for (; g + 2 <= s.G; g += 2) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + g * 16));
    const __m256 f = _mm256_cvtepi32_ps(chunk_dot<BITS>(v, xq + g * cb));
    const __m256 p = _mm256_set_m128(_mm_set1_ps(_cvtsh_ss(sc[g + 1]) * dx[g + 1]),
                                     _mm_set1_ps(_cvtsh_ss(sc[g]) * dx[g]));
    facc = _mm256_fmadd_ps(f, p, facc);
    tail += _cvtsh_ss(zr[g]) * xs[g] + _cvtsh_ss(zr[g + 1]) * xs[g + 1];
  }
  if (g < s.G) {  // lone last group: it was permuted as a 16-byte unit
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + g * 16));
    const __m128 f = _mm_cvtepi32_ps(unit_dot<BITS>(v, xq + g * cb));
    tail += hsum128(f) * (_cvtsh_ss(sc[g]) * dx[g]) + _cvtsh_ss(zr[g]) * xs[g];
  }
  return hsum256(_mm256_add_ps(facc, zacc)) + tail;
}

// chunk_dot for a chunk made of the same-position lone units of two rows (low 16 bytes: row 0,
// high: row 1): both halves take the one 16-byte activation slot j at xq + 16 j.
template <int BITS>
EK_TGT inline __m256i lone_pair_dot(__m256i v, const int8_t* xq) {
  constexpr int CPB = 8 / BITS;
  __m256i acc = _mm256_setzero_si256();
  for (int j = 0; j < CPB; ++j) {
    const __m256i c = slot256<BITS>(v, j);
    const __m256i x = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16 * j)));
    if constexpr (EK_VNNI) {
      acc = EK_DPBUSD256(acc, c, x);
    } else {
      acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(c, x), _mm256_set1_epi16(1)));
    }
  }
  return acc;
}

// The float accumulators of a row pair. AVX2: one register per row. AVX-512: both rows in one
// register (lanes 0-7 row 0, 8-15 row 1), so each chunk takes one shift / and / vpdpbusd /
// convert / FMA per code slot for both rows instead of two. Each row keeps the same lanes and the
// same order of operations either way, so the two give bit-identical results. (2-bit rows are
// paired in every build, so w2 is bit-identical across AVX2, AVX-VNNI and AVX-512; 4-bit rows are
// paired only in the AVX-512 build and differ from the one-row kernel by float rounding.)
// (No member initializers: a constructor would not be compiled for EK_TGT.)
#if EK_AVX512
struct PairF {
  __m512 f;
};
EK_TGT inline PairF pair_zero() { return {_mm512_setzero_ps()}; }
#else
struct PairF {
  __m256 f0, f1;
};
EK_TGT inline PairF pair_zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
#endif

// Chunk (groups gg, gg + 1) of two rows: f += dot * (scale * dx) of each lane's group, the
// scales of groups gg, gg + 1 being lanes 2c, 2c + 1 of p0 (row 0) and p1 (row 1).
template <int BITS>
EK_TGT inline void pair_chunk(const uint8_t* r0, const uint8_t* r1, const int8_t* xq, int64_t gg, __m256 p0,
                              __m256 p1, int c, PairF* acc) {
  const int8_t* x = xq + gg * 16 * (8 / BITS);
  const int e = 2 * c, o = 2 * c + 1;
#if EK_AVX512
  constexpr int CPB = 8 / BITS;
  const __m512i v = _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + gg * 16))),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + gg * 16)), 1);
  __m512i d = _mm512_setzero_si512();
  for (int j = 0; j < CPB; ++j) {  // each 32-byte activation slot serves both halves
    d = _mm512_dpbusd_epi32(d, slot512<BITS>(v, j), _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 32 * j))));
  }
  const __m512 p = _mm512_insertf32x8(_mm512_castps256_ps512(p0), p1, 1);
  const __m512i idx = _mm512_setr_epi32(e, e, e, e, o, o, o, o, 8 + e, 8 + e, 8 + e, 8 + e, 8 + o, 8 + o, 8 + o, 8 + o);
  acc->f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_permutexvar_ps(idx, p), acc->f);
#else
  const __m256i idx = _mm256_setr_epi32(e, e, e, e, o, o, o, o);
  const __m256i d0 = chunk_dot<BITS>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r0 + gg * 16)), x);
  const __m256i d1 = chunk_dot<BITS>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(r1 + gg * 16)), x);
  acc->f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d0), _mm256_permutevar8x32_ps(p0, idx), acc->f0);
  acc->f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d1), _mm256_permutevar8x32_ps(p1, idx), acc->f1);
#endif
}

// Two rows of the one-group-per-unit layout (2- and 4-bit) at once: y0 = row r0, y1 = row r1.
// Each row's arithmetic is the same whatever the other row is (lanes never mix rows), so a row
// computed alone as (r, r) gives bit-identical results and thread splits do not change outputs.
// Pairing pays on rows with an odd group count (SmolLM2's K = 576: 9 groups): the two lone last
// groups fill one 32-byte chunk, and both rows share one horizontal reduction (in-cache w2g64
// 576x576 microbenchmark: 26.4 -> 31.2 GB/s on one Zen 5 core; whole SmolLM2 w2g64a8 model,
// alternating runs: 615 -> 644 and 593 -> 629 tok/s median in two sessions).
//
// pair_body: every group but a lone last one; returns lanes 0, 1 = rows r0, r1 and sets *g_end
// to the lone group's index (G when there is none). row_pairs2_a8 and row_quads_a8 add the lone
// groups.
template <int BITS>
EK_TGT inline __m128 pair_body(const Shape& s, const A8& a, const uint8_t* r0, const uint8_t* r1,
                               const uint16_t* sc0, const uint16_t* sc1, const uint16_t* zr0,
                               const uint16_t* zr1, int64_t m, int64_t* g_end) {
  const int8_t* xq = a.xq + m * s.K_pad;
  const float* dx = a.dx + m * s.G;
  const float* xs = a.xsum + m * s.G;
  PairF acc = pair_zero();
  __m256 z0 = _mm256_setzero_ps(), z1 = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= s.G; g += 8) {
    const __m256 d = _mm256_loadu_ps(dx + g), x = _mm256_loadu_ps(xs + g);
    const __m256 p0 = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc0 + g))), d);
    const __m256 p1 = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc1 + g))), d);
    z0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zr0 + g))), x, z0);
    z1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(zr1 + g))), x, z1);
    for (int c = 0; c < 4; ++c) pair_chunk<BITS>(r0, r1, xq, g + 2 * c, p0, p1, c, &acc);
  }
  float zt0 = 0.f, zt1 = 0.f;
  for (; g + 2 <= s.G; g += 2) {  // a last pair of groups: its two scales in lanes 0 and 1
    const __m256 p0 = _mm256_zextps128_ps256(
        _mm_setr_ps(_cvtsh_ss(sc0[g]) * dx[g], _cvtsh_ss(sc0[g + 1]) * dx[g + 1], 0.f, 0.f));
    const __m256 p1 = _mm256_zextps128_ps256(
        _mm_setr_ps(_cvtsh_ss(sc1[g]) * dx[g], _cvtsh_ss(sc1[g + 1]) * dx[g + 1], 0.f, 0.f));
    zt0 += _cvtsh_ss(zr0[g]) * xs[g] + _cvtsh_ss(zr0[g + 1]) * xs[g + 1];
    zt1 += _cvtsh_ss(zr1[g]) * xs[g] + _cvtsh_ss(zr1[g + 1]) * xs[g + 1];
    pair_chunk<BITS>(r0, r1, xq, g, p0, p1, 0, &acc);
  }
  *g_end = g;
#if EK_AVX512
  const __m256 f0 = _mm512_castps512_ps256(acc.f), f1 = _mm512_extractf32x8_ps(acc.f, 1);
#else
  const __m256 f0 = acc.f0, f1 = acc.f1;
#endif
  // both reductions at once: [row 0, row 1, row 0, row 1]
  const __m256 h = _mm256_hadd_ps(_mm256_add_ps(f0, z0), _mm256_add_ps(f1, z1));
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  return _mm_add_ps(_mm_hadd_ps(q, q), _mm_setr_ps(zt0, zt1, 0.f, 0.f));
}

template <int BITS>
EK_TGT void row_pairs2_a8(const Shape& s, const A8& a, const uint8_t* r0, const uint8_t* r1,
                          const uint16_t* sc0, const uint16_t* sc1, const uint16_t* zr0,
                          const uint16_t* zr1, int64_t m, float* y0, float* y1) {
  int64_t g;
  __m128 q = pair_body<BITS>(s, a, r0, r1, sc0, sc1, zr0, zr1, m, &g);
  if (g < s.G) {  // the lone last groups of both rows in one chunk
    const int8_t* xq = a.xq + m * s.K_pad;
    const __m256i v = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(r1 + g * 16),
                                          reinterpret_cast<const __m128i*>(r0 + g * 16));
    const __m256 f = _mm256_cvtepi32_ps(lone_pair_dot<BITS>(v, xq + g * 16 * (8 / BITS)));
    __m128 t = _mm_hadd_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
    t = _mm_hadd_ps(t, t);
    const float d = a.dx[m * s.G + g], x = a.xsum[m * s.G + g];
    const __m128 p = _mm_setr_ps(_cvtsh_ss(sc0[g]) * d, _cvtsh_ss(sc1[g]) * d, 0.f, 0.f);
    const __m128 z = _mm_setr_ps(_cvtsh_ss(zr0[g]) * x, _cvtsh_ss(zr1[g]) * x, 0.f, 0.f);
    q = _mm_add_ps(q, _mm_fmadd_ps(t, p, z));
  }
  *y0 = _mm_cvtss_f32(q);
  *y1 = _mm_cvtss_f32(_mm_shuffle_ps(q, q, 1));
}

#if EK_AVX512
// Four rows whose group count is odd (SmolLM2's K = 576): two pair_body calls, then the four
// lone last groups in one 512-bit chunk (one code extraction and vpdpbusd per slot for four rows
// instead of two) and one vector of their scales. Every row takes exactly row_pairs2_a8's
// operations in its lanes (the same lane sums in the same order, the same float multiplies and
// FMA), so the results are bit-identical to it and to the AVX2 pairs. In-cache, 1 thread,
// alternating builds: w2g64 576x576 4.25 -> 3.65 us, 3072x576 22.0 -> 19.4 us; SmolLM2 w2g64a8,
// 2 threads, 9 alternating rounds: 737 -> 757 tok/s median.
template <int BITS>
EK_TGT void row_quads_a8(const Shape& s, const A8& a, const uint8_t* qw, const uint16_t* sc,
                         const uint16_t* zr, int64_t n, int64_t m, float* y4) {
  const uint8_t* r[4];
  const uint16_t *scr[4], *zrr[4];
  for (int i = 0; i < 4; ++i) {
    r[i] = qw + (n + i) * s.row_bytes;
    scr[i] = sc + (n + i) * s.G;
    zrr[i] = zr + (n + i) * s.G;
  }
  int64_t g;
  const __m128 q01 = pair_body<BITS>(s, a, r[0], r[1], scr[0], scr[1], zrr[0], zrr[1], m, &g);
  const __m128 q23 = pair_body<BITS>(s, a, r[2], r[3], scr[2], scr[3], zrr[2], zrr[3], m, &g);
  __m128 q = _mm_movelh_ps(q01, q23);  // rows 0, 1, 2, 3
  constexpr int CPB = 8 / BITS;
  const int8_t* xq = a.xq + m * s.K_pad + g * 16 * CPB;
  __m512i v = _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r[0] + g * 16)));
  v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(r[1] + g * 16)), 1);
  v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(r[2] + g * 16)), 2);
  v = _mm512_inserti32x4(v, _mm_loadu_si128(reinterpret_cast<const __m128i*>(r[3] + g * 16)), 3);
  __m512i acc = _mm512_setzero_si512();
  for (int j = 0; j < CPB; ++j) {
    acc = _mm512_dpbusd_epi32(acc, slot512<BITS>(v, j), _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(xq + 16 * j))));
  }
  const __m512 f = _mm512_cvtepi32_ps(acc);  // lanes 4i .. 4i + 3: row i
  // row_pairs2_a8's sums per row, (l0 + l1) + (l2 + l3): lanes [0, 2 | 1, 3] of h2, then rows in order
  const __m256 h = _mm256_hadd_ps(_mm512_castps512_ps256(f), _mm512_extractf32x8_ps(f, 1));
  const __m256 h2 = _mm256_hadd_ps(h, h);
  const __m128 t = _mm_unpacklo_ps(_mm256_castps256_ps128(h2), _mm256_extractf128_ps(h2, 1));
  const __m128 d = _mm_set1_ps(a.dx[m * s.G + g]), x = _mm_set1_ps(a.xsum[m * s.G + g]);
  const __m128 p = _mm_mul_ps(_mm_cvtph_ps(_mm_setr_epi16(static_cast<short>(scr[0][g]), static_cast<short>(scr[1][g]),
                                                          static_cast<short>(scr[2][g]), static_cast<short>(scr[3][g]), 0, 0, 0, 0)),
                              d);
  const __m128 z = _mm_mul_ps(_mm_cvtph_ps(_mm_setr_epi16(static_cast<short>(zrr[0][g]), static_cast<short>(zrr[1][g]),
                                                          static_cast<short>(zrr[2][g]), static_cast<short>(zrr[3][g]), 0, 0, 0, 0)),
                              x);
  q = _mm_add_ps(q, _mm_fmadd_ps(t, p, z));
  _mm_storeu_ps(y4, q);
}
#endif

// Groups of 32 bytes or more (w2g128, w4g64+, w8 per channel): int32 lanes per group, then
// one FMA with the group's scale * dx.
template <int BITS>
EK_TGT float row_groups_a8(const Shape& s, const A8& a, const uint8_t* row, const uint16_t* sc,
                            const uint16_t* zr, int64_t m) {
  const int8_t* xq = a.xq + m * s.K_pad;
  const float* dx = a.dx + m * s.G;
  const float* xs = a.xsum + m * s.G;
  constexpr int CPB = 8 / BITS;
  const int64_t gb = s.g * BITS / 8;
  __m256 facc = _mm256_setzero_ps();
  float tail = 0.f;
  const uint8_t* p = row;
  for (int64_t g = 0; g < s.G; ++g) {
    const int8_t* xg = xq + g * s.g;
    __m256i acc = _mm256_setzero_si256();
    int64_t b = 0;
    for (; b + 32 <= gb; b += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + b));
      acc = _mm256_add_epi32(acc, chunk_dot<BITS>(v, xg + b * CPB));
    }
    if (b < gb) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + b));
      acc = _mm256_add_epi32(acc, _mm256_zextsi128_si256(unit_dot<BITS>(v, xg + b * CPB)));
    }
    p += gb;
    float sdx = _cvtsh_ss(sc[g]) * dx[g];
    facc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc), _mm256_set1_ps(sdx), facc);
    tail += _cvtsh_ss(zr[g]) * xs[g];
  }
  return hsum256(facc) + tail;
}

// Rows stream from DRAM once per token: ask for row n's weights EK_PREFETCH bytes ahead (the
// hardware prefetcher alone left the 1-thread model sweep ~15% slower), and every 4 rows for a
// line of scales and of zero points. always_inline: as an ordinary function GCC's IPA found it
// "const" (a prefetch writes nothing) and deleted every call, prefetches included.
EK_TGT __attribute__((always_inline)) inline void prefetch_row(const Shape& s, const uint8_t* qw, const uint16_t* sc, const uint16_t* zr,
                                int64_t n) {
  if (EK_PREFETCH > 0) {
    const char* ahead = reinterpret_cast<const char*>(qw + n * s.row_bytes) + EK_PREFETCH;
    for (int64_t b = 0; b < s.row_bytes; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
    if ((n & 3) == 0) {
      _mm_prefetch(reinterpret_cast<const char*>(sc + n * s.G) + EK_PREFETCH / 4, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(zr + n * s.G) + EK_PREFETCH / 4, _MM_HINT_T0);
    }
  }
}

template <int BITS>
EK_TGT void rows_avx2_a8(const Shape& s, const A8& a, const uint8_t* qw, const uint16_t* sc,
                          const uint16_t* zr, float* y, int64_t n0, int64_t n1) {
  const bool pairs = s.g * BITS / 8 == 16;
  // Two rows at a time for 2-bit, and for 4-bit with AVX-512. With AVX2, pairing the 4-bit head
  // too was 3-4% slower in a model A/B (5 rounds, SmolLM2 / Qwen2.5 w2g64a8, 2 threads). In
  // 512-bit registers it is faster: SmolLM2's w4g32 head (49152 x 576), 1 thread, in a
  // microbenchmark: 500 -> 415 us; the same code as the AVX2 one-row kernel compiled for AVX-512
  // was 9% slower than AVX2 (538 us).
  if constexpr (BITS == 2 || (EK_AVX512 && BITS == 4)) {
    if (pairs) {
      int64_t n = n0;
#if EK_AVX512
      if (s.G % 2 == 1) {  // four rows at a time, then pairs
        float y4[4];
        for (; n + 4 <= n1; n += 4) {
          for (int i = 0; i < 4; ++i) prefetch_row(s, qw, sc, zr, n + i);
          for (int64_t m = 0; m < s.M; ++m) {
            row_quads_a8<BITS>(s, a, qw, sc, zr, n, m, y4);
            for (int i = 0; i < 4; ++i) y[m * s.N + n + i] = y4[i];
          }
        }
      }
#endif
      for (; n < n1; n += 2) {
        const int64_t n2 = n + 1 < n1 ? n + 1 : n;  // an odd last row goes alone, as (n, n)
        prefetch_row(s, qw, sc, zr, n);
        prefetch_row(s, qw, sc, zr, n + 1);  // past n1 it fetches rows that are next anyway
        for (int64_t m = 0; m < s.M; ++m) {
          float y0, y1;
          row_pairs2_a8<BITS>(s, a, qw + n * s.row_bytes, qw + n2 * s.row_bytes, sc + n * s.G, sc + n2 * s.G,
                              zr + n * s.G, zr + n2 * s.G, m, &y0, &y1);
          y[m * s.N + n] = y0;
          y[m * s.N + n2] = y1;
        }
      }
      return;
    }
  }
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* row = qw + n * s.row_bytes;
    prefetch_row(s, qw, sc, zr, n);
    const uint16_t* scn = sc + n * s.G;
    const uint16_t* zrn = zr + n * s.G;
    for (int64_t m = 0; m < s.M; ++m) {
      y[m * s.N + n] = pairs ? row_pairs_a8<BITS>(s, a, row, scn, zrn, m)
                             : row_groups_a8<BITS>(s, a, row, scn, zrn, m);
    }
  }
}
// (EK_DPBUSD256 stays defined for wq_r16_x86.h, which undefines it.)
