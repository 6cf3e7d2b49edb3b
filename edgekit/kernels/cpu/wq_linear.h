/* edgekit CPU kernel: group-quantized linear, y = x @ W_hat^T.
 *
 * Packed layout (the one definition lives in edgekit/quant/layout.py; this is a summary):
 *   W is [N out, K in]. Each row is split into G = ceil(K / g) groups of g consecutive
 *   columns (g = group_size; group_size <= 0 means one group per row, g = K):
 *       W_hat[n, k] = scale[n, k / g] * u[n, k] + zero[n, k / g]
 *   u are unsigned b-bit codes in [0, 2^b - 1]; scale and zero are IEEE fp16 [N, G]
 *   (passed as their uint16 bit patterns). Each row is a little-endian bit stream of
 *   K_pad = G * g codes (code k at stream bits [b*k, b*k + b), stream bit i = bit i%8 of byte
 *   i/8), zero-padded to row_bytes = ceil(K_pad * b / 8) whole bytes; qweight is uint8
 *   [N, row_bytes]. b=2: code k at bits 2*(k%4) of byte k/4; b=4: low nibble first.
 *   Padded columns k >= K are never multiplied.
 *
 * Implementations: a scalar reference (all of b = 2, 3, 4, 8), AVX2+FMA+F16C (x86-64, b = 2 with
 * g % 32 == 0, b = 4 with g % 16 == 0; chosen at run time by CPUID) and NEON (aarch64, same
 * conditions). Work is split over output rows on the ExecuTorch threadpool when the library
 * is built with it (EDGEKIT_USE_ET_THREADPOOL), else runs on the calling thread.
 *
 * Status codes, no exceptions, no allocation per call when the caller passes a workspace of
 * ek_linear_wq_workspace_floats() floats (without one, a per-thread buffer is grown once and
 * reused).
 */
#ifndef EDGEKIT_WQ_LINEAR_H_
#define EDGEKIT_WQ_LINEAR_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum ek_status {
  EK_OK = 0,
  EK_BAD_ARG = 1,      /* null pointer, non-positive size, bits not in {2,3,4,8} */
  EK_UNSUPPORTED = 2,  /* the requested implementation cannot run this shape / CPU */
  EK_NO_MEMORY = 3,    /* workspace too small or allocation failed */
};

enum ek_impl {
  EK_IMPL_AUTO = 0,    /* fastest available for this shape and CPU */
  EK_IMPL_SCALAR = 1,  /* the reference */
  EK_IMPL_AVX2 = 2,
  EK_IMPL_NEON = 3,
  EK_IMPL_AVXVNNI = 4, /* AVX2 + AVX-VNNI (vpdpbusd): the int8-activation path only */
  EK_IMPL_NEON_DOTPROD = 5, /* NEON + SDOT (FEAT_DotProd): the int8-activation path only */
  EK_IMPL_AVX512VNNI = 6, /* AVX-512 (F, BW, DQ, VL) + AVX512-VNNI: the int8-activation path only */
};

/* Row bytes of a packed row of K codes: ceil(ceil(K/g)*g * bits / 8). */
int64_t ek_row_bytes(int64_t K, int bits, int64_t group_size);

/* Floats of workspace ek_linear_wq needs for M rows of x. */
size_t ek_linear_wq_workspace_floats(int64_t M, int64_t K, int bits, int64_t group_size);

/* y[M, N] = x[M, K] @ W_hat[N, K]^T, float32 row-major.
 *   qweight: uint8 [N, ek_row_bytes(K, bits, group_size)]
 *   scale, zero: fp16 bit patterns [N, ceil(K / g)]
 *   workspace: NULL or at least workspace_floats floats (see above)
 *   impl: an ek_impl; EK_IMPL_AUTO picks the fastest that applies.
 * Returns an ek_status. */
int ek_linear_wq(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                 const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                 int64_t group_size, float* y, float* workspace, size_t workspace_floats,
                 int impl);

/* Same contract with int8 activations ("a8"): x is quantized per group of g columns,
 *   amax = max |x[k]| over the group's real columns, inv = amax > 0 ? 127 / amax : 0 (fp32),
 *   xq[k] = round_half_even(x[k] * inv) in [-127, 127], dx = amax / 127,
 * and y[m, n] = sum_g scale[n,g] * dx[m,g] * isum[m,n,g] + zero[n,g] * xsum[m,g], where
 * isum = sum_k u[n,k] * xq[m,k] is an exact integer and xsum the float sum of the group's x.
 * Implementations: scalar (all bit widths, the reference), AVX2 and AVX2+AVX-VNNI (b = 2, 4, 8
 * with g * b / 8 a multiple of 16 bytes: w2 g%64, w4 g%32, w8 g%16) and, for the same shapes,
 * NEON (SMULL/SADALP) and NEON+SDOT, both always built; the SDOT one runs where the CPU reports
 * dot product (HWCAP_ASIMDDP), chosen at run time like AVX-VNNI (wq_a8_neon.h).
 * The workspace is internal (grown once per thread). Same status codes as ek_linear_wq. */
int ek_linear_wq_a8(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                    const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                    int64_t group_size, float* y, int impl);

/* Which implementation ek_linear_wq_a8 with EK_IMPL_AUTO would use. */
int ek_linear_wq_a8_pick(int64_t K, int bits, int64_t group_size);

/* ek_bench_linear_wq for the a8 path. */
double ek_bench_linear_wq_a8(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                             const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                             int64_t group_size, float* y, int impl, int iters);

/* The row-interleaved ("r16") layout of the a8 path, for shapes with g * b / 8 a multiple of 16
 * bytes (b = 2, 4, 8): the same codes, scales and zeros as the layout above, reordered so that
 * SIMD lanes are output rows (no horizontal reductions; wq_r16_x86.h). Rows are padded with
 * zeros to NB = ceil(N / 16) blocks of 16; with ub = row_bytes / G bytes per group and row,
 *   qweight_r16[((blk * G + g) * (ub / 4) + d) * 64 + 4 r + b] = qweight[16 blk + r, g * ub + 4 d + b]
 *   scale_r16[(blk * G + g) * 16 + r] = scale[16 blk + r, g]   (zero_r16 likewise)
 * edgekit/quant/layout.py (interleave_r16) is the definition; ek_interleave_r16 writes the same
 * bytes (ek_r16_bytes of qweight_r16, NB * 16 * G halves each of scale_r16 and zero_r16).
 * ek_linear_wq_a8_r16 computes ek_linear_wq_a8's y up to float rounding (each row:
 * f = fma(isum_g, scale * dx_g, f), z = fma(zero, xsum_g, z) over groups, y = f + z; bit-identical
 * across scalar, AVX2, AVX-VNNI, AVX-512 and NEON). EK_UNSUPPORTED for other shapes. */
int64_t ek_r16_bytes(int64_t N, int64_t K, int bits, int64_t group_size);
int ek_interleave_r16(const uint8_t* qweight, const uint16_t* scale, const uint16_t* zero, int64_t N,
                      int64_t K, int bits, int64_t group_size, uint8_t* qw_r16, uint16_t* scale_r16,
                      uint16_t* zero_r16);
int ek_linear_wq_a8_r16(const float* x, int64_t M, int64_t K, const uint8_t* qweight_r16,
                        const uint16_t* scale_r16, const uint16_t* zero_r16, int64_t N, int bits,
                        int64_t group_size, float* y, int impl);
int ek_linear_wq_a8_r16_pick(int64_t K, int bits, int64_t group_size);
double ek_bench_linear_wq_a8_r16(const float* x, int64_t M, int64_t K, const uint8_t* qweight_r16,
                                 const uint16_t* scale_r16, const uint16_t* zero_r16, int64_t N, int bits,
                                 int64_t group_size, float* y, int impl, int iters);
/* Which implementation EK_IMPL_AUTO would use for this shape on this CPU (an ek_impl). */
int ek_linear_wq_pick(int64_t K, int bits, int64_t group_size);

/* 1 if the implementation can run on this CPU at all. */
int ek_impl_available(int impl);

/* Threads used by the kernels (the ExecuTorch threadpool size; 1 without it). Setting
 * resizes the shared pool, so also changes XNNPACK's threads in the same process. */
int ek_get_num_threads(void);
int ek_set_num_threads(int n);

/* Benchmark helper: runs ek_linear_wq `iters` times back to back (after one untimed call)
 * and returns the mean seconds per call, or a negative ek_status on failure. */
double ek_bench_linear_wq(const float* x, int64_t M, int64_t K, const uint8_t* qweight,
                          const uint16_t* scale, const uint16_t* zero, int64_t N, int bits,
                          int64_t group_size, float* y, int impl, int iters);

/* A static string naming a status code. */
const char* ek_status_str(int status);

#ifdef __cplusplus
}
#endif

#endif /* EDGEKIT_WQ_LINEAR_H_ */
