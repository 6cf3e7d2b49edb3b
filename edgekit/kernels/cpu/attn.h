/* Attention over a static KV cache, reading only the slots a query can see.
 *
 * ExecuTorch programs keep a KV cache of max_seq_len slots; attention written with tensor ops
 * scores every slot and masks the unused ones, so a decode step costs O(max_seq_len). This
 * kernel takes the same additive mask (0 = visible, -inf = hidden) and, for each query row t,
 * stops at the row's last visible slot: O(context) work, the same result up to float summation
 * order. Heads are grouped (GQA): query head h reads KV head h / (H / KV).
 *
 * Layout (batch 1; contiguous float32): q [H, T, hd]; k, v [KV, S, hd]; mask [T, S] additive;
 * out [T, H * hd] (heads concatenated per row, the layout the output projection reads).
 * scale multiplies q.k (1/sqrt(hd) for standard attention). Rows run as portable code or, where
 * the CPU has them, AVX2 + FMA with an 8-wide exp. Parallel over (head, row) on the
 * ExecuTorch threadpool when built with EDGEKIT_USE_ET_THREADPOOL. Returns EK_OK, EK_BAD_ARG
 * (a size <= 0, H not a multiple of KV) or EK_NO_MEMORY (the per-thread score buffer). */
#ifndef EDGEKIT_ATTN_H_
#define EDGEKIT_ATTN_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int ek_sdpa_cache(const float* q, int64_t H, int64_t T, int64_t hd, const float* k, const float* v,
                  int64_t KV, int64_t S, const float* mask, float scale, float* out);

/* The same with the row implementation named (an ek_impl): EK_IMPL_AUTO, EK_IMPL_SCALAR (the
 * portable row) or EK_IMPL_AVX2 (AVX2 + FMA; EK_UNSUPPORTED where the CPU lacks them). */
int ek_sdpa_cache_impl(const float* q, int64_t H, int64_t T, int64_t hd, const float* k, const float* v,
                       int64_t KV, int64_t S, const float* mask, float scale, float* out, int impl);

#ifdef __cplusplus
}
#endif
#endif  // EDGEKIT_ATTN_H_
