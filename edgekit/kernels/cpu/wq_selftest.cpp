// Self-test of the wq_linear kernels without Python: every SIMD implementation available on
// this CPU against the scalar reference, on odd shapes, for 2- and 4-bit codes, and the
// int8-activation (a8) SIMD rows for 2, 4 and 8 bits. Used to check the NEON paths on an x86
// host (cross-compiled, run under qemu-aarch64) and natively by CMake. Prints one line per
// case, a summary line per a8 implementation, the a8 automatic pick and a total; exit status
// 0 = all pass. A base armv8-a build holds both NEON a8 variants; which run depends on the CPU:
//
//   aarch64-linux-gnu-g++ -std=c++17 -O2 -static -march=armv8-a wq_linear.cpp wq_selftest.cpp -o selftest
//   qemu-aarch64 -cpu max ./selftest         # neon base and neon sdot
//   qemu-aarch64 -cpu cortex-a53 ./selftest  # neon base only (no dot product)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "wq_linear.h"

namespace {

uint16_t float_to_half(float f) {  // round-to-nearest-even for normal values in range
  uint32_t b;
  std::memcpy(&b, &f, 4);
  uint32_t sign = (b >> 16) & 0x8000u;
  int32_t exp = static_cast<int32_t>((b >> 23) & 0xff) - 127 + 15;
  uint32_t mant = b & 0x7fffffu;
  if (exp <= 0) return static_cast<uint16_t>(sign);  // flush tiny values (not used here)
  uint32_t h = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  uint32_t rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return static_cast<uint16_t>(h);
}

// Pack codes [N, K] per the layout (little-endian bit stream per row, K padded to groups).
std::vector<uint8_t> pack(const std::vector<int>& codes, int64_t N, int64_t K, int bits,
                          int64_t group) {
  int64_t rb = ek_row_bytes(K, bits, group);
  std::vector<uint8_t> out(static_cast<size_t>(N * rb), 0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      for (int t = 0; t < bits; ++t) {
        if ((codes[n * K + k] >> t) & 1) {
          int64_t i = bits * k + t;
          out[n * rb + i / 8] |= static_cast<uint8_t>(1u << (i % 8));
        }
      }
    }
  }
  return out;
}

// a8 input modes. RANDOM: random codes, x, scale and zero; the float results agree to 2e-5.
// EXACT: integer x in [-127, 127] with |x| = 127 somewhere in each group, scale 1, zero 0, so
// xq = x, dx = 1 and y is the sum of the exact integer dot products. EXTREME: the same with
// every x = -127 and constant codes (2^b - 1 for 2/4 bits, 0 for 8 bits, i.e. -128 after a
// u - 128 bias) that push int16 partial sums to their bound. EXACT and EXTREME must match the
// scalar reference bit for bit while K * (2^b - 1) * 127 < 2^24 keeps every float sum exact.
enum Mode { RANDOM, EXACT, EXTREME };

bool run_case(int64_t M, int64_t N, int64_t K, int bits, int64_t group, int impl, unsigned seed,
              bool a8 = false, Mode mode = RANDOM, bool r16 = false) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1), xint(-127, 127);
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  int64_t g = group <= 0 ? K : group, G = (K + g - 1) / g;
  std::vector<int> codes(N * K);
  for (auto& c : codes) c = mode == EXTREME ? (bits == 8 ? 0 : (1 << bits) - 1) : code(rng);
  std::vector<uint8_t> q = pack(codes, N, K, bits, group);
  std::vector<uint16_t> sc(N * G), zr(N * G);
  for (auto& v : sc) v = mode == RANDOM ? float_to_half(0.01f + 0.05f * (uni(rng) + 1.f)) : 0x3c00;  // 1.0
  for (auto& v : zr) v = mode == RANDOM ? float_to_half(0.2f * uni(rng)) : 0;
  std::vector<float> x(M * K), ref(M * N), y(M * N);
  for (int64_t i = 0; i < M * K; ++i) {
    const int64_t k = i % K;
    if (mode == RANDOM) x[i] = uni(rng);
    else if (mode == EXTREME) x[i] = -127.f;
    else x[i] = static_cast<float>(k % g == 0 ? (xint(rng) < 0 ? -127 : 127) : xint(rng));
  }
  const bool exact = mode != RANDOM && K * ((1 << bits) - 1) * 127 < (1 << 24);
  int st, st2;
  if (a8) {  // int8 activations: the SIMD path against the a8 scalar reference
    st = ek_linear_wq_a8(x.data(), M, K, q.data(), sc.data(), zr.data(), N, bits, group, ref.data(),
                         EK_IMPL_SCALAR);
    st2 = ek_linear_wq_a8(x.data(), M, K, q.data(), sc.data(), zr.data(), N, bits, group, y.data(), impl);
  } else {
    st = ek_linear_wq(x.data(), M, K, q.data(), sc.data(), zr.data(), N, bits, group, ref.data(),
                      nullptr, 0, EK_IMPL_SCALAR);
    st2 = ek_linear_wq(x.data(), M, K, q.data(), sc.data(), zr.data(), N, bits, group, y.data(),
                       nullptr, 0, impl);
  }
  float maxref = 0.f, maxerr = 0.f;
  for (int64_t i = 0; i < M * N; ++i) {
    maxref = std::fmax(maxref, std::fabs(ref[i]));
    maxerr = std::fmax(maxerr, std::fabs(ref[i] - y[i]));
  }
  bool ok = st == EK_OK && st2 == EK_OK && (exact ? maxerr == 0.f : maxerr <= 2e-5f * maxref);
  if (r16) {  // the same weights interleaved: the SIMD rows bit-identical to the r16 reference
    const int64_t NB = (N + 15) / 16;
    std::vector<uint8_t> qi(static_cast<size_t>(ek_r16_bytes(N, K, bits, group)));
    std::vector<uint16_t> si(NB * 16 * G), zi(NB * 16 * G);
    std::vector<float> ys(M * N), yi(M * N);
    const int st3 = ek_interleave_r16(q.data(), sc.data(), zr.data(), N, K, bits, group, qi.data(), si.data(), zi.data());
    const int st4 = ek_linear_wq_a8_r16(x.data(), M, K, qi.data(), si.data(), zi.data(), N, bits, group, ys.data(),
                                        EK_IMPL_SCALAR);
    const int st5 = ek_linear_wq_a8_r16(x.data(), M, K, qi.data(), si.data(), zi.data(), N, bits, group, yi.data(), impl);
    float rerr = 0.f;
    for (int64_t i = 0; i < M * N; ++i) rerr = std::fmax(rerr, std::fabs(ref[i] - ys[i]));
    const bool same = std::memcmp(ys.data(), yi.data(), sizeof(float) * M * N) == 0;
    ok = ok && st3 == EK_OK && st4 == EK_OK && st5 == EK_OK && same &&
         (exact ? rerr == 0.f : rerr <= 2e-5f * maxref);
    maxerr = std::fmax(maxerr, rerr);
    if (!same) std::printf("r16 rows differ from the r16 reference\n");
  }
  static const char* const mode_name[] = {"", " exact", " extreme"};
  std::printf("%s%s%s impl=%d bits=%d M=%lld N=%lld K=%lld g=%lld%s max_err=%.2e rel_err=%.2e\n",
              ok ? "ok  " : "FAIL", a8 ? " a8" : "", r16 ? " r16" : "", impl, bits, static_cast<long long>(M),
              static_cast<long long>(N), static_cast<long long>(K), static_cast<long long>(group),
              mode_name[mode], maxerr, maxref > 0 ? maxerr / maxref : 0.0);
  return ok;
}

}  // namespace

int main() {
  const int impls[] = {EK_IMPL_AVX2, EK_IMPL_NEON};
  struct {
    int64_t M, N, K, g;
  } shapes[] = {{1, 37, 192, 64}, {1, 5, 64, 32}, {7, 37, 192, 64}, {2, 9, 100, 32},
                {5, 11, 256, 128}, {4, 576, 576, 64}};
  int checked = 0, failed = 0;
  for (int impl : impls) {
    if (!ek_impl_available(impl)) continue;
    for (int bits : {2, 4}) {
      for (const auto& s : shapes) {
        ++checked;
        if (!run_case(s.M, s.N, s.K, bits, s.g, impl, static_cast<unsigned>(s.N * 31 + bits)))
          ++failed;
      }
    }
  }
  // int8 activations: AVX2, AVX-VNNI or NEON rows for 2/4/8 bits where g * b is a whole number
  // of 16-byte units: pairs of 16-byte groups with an odd G, long groups ending in a lone
  // 16-byte unit, K not a multiple of g (a short last group), per-channel rows, M > 1.
  struct {
    int64_t M, N, K, g;
  } a8shapes[] = {{1, 37, 576, 64}, {3, 5, 1536, 64}, {1, 9, 192, 128}, {2, 7, 576, 32},
                  {1, 11, 576, 0}, {4, 13, 320, 160}, {1, 3, 96, 16}, {5, 6, 90, 32},
                  {2, 9, 200, 64}, {3, 7, 300, 96}, {1, 5, 460, 192}, {2, 4, 100, 48},
                  {6, 3, 1040, 0}, {1, 8, 330, 16}, {7, 5, 144, 0}, {2, 33, 576, 64}, {1, 48, 352, 32}};
  for (int impl : {EK_IMPL_AVX2, EK_IMPL_AVXVNNI, EK_IMPL_AVX512VNNI, EK_IMPL_NEON, EK_IMPL_NEON_DOTPROD}) {
    if (!ek_impl_available(impl)) continue;
    int a8_checked = 0, a8_failed = 0;
    for (int bits : {2, 4, 8}) {
      for (const auto& s : a8shapes) {
        int64_t g = s.g <= 0 ? s.K : s.g;
        if ((g * bits) % 128 != 0) continue;
        for (Mode mode : {RANDOM, EXACT, EXTREME}) {
          ++a8_checked;
          if (!run_case(s.M, s.N, s.K, bits, s.g, impl, static_cast<unsigned>(s.K + bits), true, mode)) ++a8_failed;
          ++a8_checked;  // the row-interleaved layout of the same case
          if (!run_case(s.M, s.N, s.K, bits, s.g, impl, static_cast<unsigned>(s.K + bits), true, mode, true)) ++a8_failed;
        }
      }
    }
    const char* name = impl == EK_IMPL_AVX2 ? "avx2" : impl == EK_IMPL_AVXVNNI ? "avxvnni"
                       : impl == EK_IMPL_AVX512VNNI ? "avx512vnni"
                       : impl == EK_IMPL_NEON ? "neon base" : "neon sdot";
    std::printf("a8 impl=%d (%s): %d checked, %d failed\n", impl, name, a8_checked, a8_failed);
    checked += a8_checked;
    failed += a8_failed;
  }
  std::printf("a8 pick w2g64: impl=%d, r16: impl=%d\n", ek_linear_wq_a8_pick(576, 2, 64),
              ek_linear_wq_a8_r16_pick(576, 2, 64));
  std::printf("%d checked, %d failed\n", checked, failed);
  return failed == 0 && checked > 0 ? 0 : 1;
}
