"""edgekit::sdpa_cache: the C++ attention kernel against the eager model's math, and the op in
an exported program (it reads only the visible cache slots)."""

from __future__ import annotations

import math

import pytest
import torch

from edgekit.kernels.ops import sdpa_cache_reference


def _case(H, KV, T, S, hd, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(1, H, T, hd, generator=g)
    k = torch.randn(1, KV, S, hd, generator=g)
    v = torch.randn(1, KV, S, hd, generator=g)
    return q, k, v


def _causal(pos: list[int], S: int) -> torch.Tensor:
    slots = torch.arange(S)
    return torch.where(slots[None, :] <= torch.tensor(pos)[:, None], 0.0, float("-inf"))


@pytest.mark.parametrize("H,KV,T,S,hd,start", [(9, 3, 1, 256, 64, 40), (8, 4, 5, 64, 8, 0), (4, 4, 3, 33, 20, 17),
                                               (14, 2, 7, 512, 64, 300), (2, 1, 1, 8, 4, 7),
                                               (4, 2, 2, 300, 128, 150), (3, 1, 1, 100, 76, 90)])
def test_kernel_matches_the_eager_math(H, KV, T, S, hd, start):
    """Both row implementations: the portable one and, where the CPU has it, AVX2 + FMA."""
    from edgekit.kernels.cpu import available_impls, sdpa_cache

    q, k, v = _case(H, KV, T, S, hd)
    mask = _causal(list(range(start, start + T)), S)
    want = sdpa_cache_reference(q, k, v, mask)
    for impl in ["auto", "scalar"] + (["avx2"] if "avx2" in available_impls() else []):
        got = torch.from_numpy(sdpa_cache(q, k, v, mask, impl=impl))
        assert got.shape == (1, T, H * hd)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (impl, (got - want).abs().max())


def test_kernel_never_reads_hidden_slots():
    """NaN in every hidden slot (past the visible ones, and one inside the visible range) changes
    nothing: the kernel stops at each row's last visible slot, and a hidden slot before it gets
    weight exactly 0 (the AVX2 row may read its K row inside an 8-key block, but replaces the
    score by -inf, and never reads its V row); the eager math would turn the NaN into NaN."""
    from edgekit.kernels.cpu import sdpa_cache

    q, k, v = _case(6, 2, 3, 128, 16)
    mask = _causal([10, 11, 12], 128)
    mask[:, 4] = float("-inf")  # hidden inside the visible range (as in a tree mask)
    want = sdpa_cache_reference(q, k, v, mask)
    for t in (k, v):
        t[:, :, 13:] = float("nan")
        t[:, :, 4] = float("nan")
    for impl in ["scalar", "auto"]:  # auto: the AVX2 row's 8-wide exp must give slot 4 weight 0
        got = torch.from_numpy(sdpa_cache(q, k, v, mask, impl=impl))
        assert torch.isfinite(got).all(), impl
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), impl


def test_tree_mask_matches_eager():
    from edgekit.kernels.cpu import sdpa_cache
    from edgekit.runtime.spec import tree_visibility

    parents = [-1, 0, 0, 1, 1, 2]
    start, S = 20, 64
    q, k, v = _case(4, 2, len(parents), S, 16, seed=3)
    vis = torch.zeros(len(parents), S, dtype=torch.bool)
    vis[:, :start] = True
    vis[:, start:start + len(parents)] = tree_visibility(parents)
    mask = torch.where(vis, 0.0, float("-inf"))
    want = sdpa_cache_reference(q, k, v, mask)
    got = torch.from_numpy(sdpa_cache(q, k, v, mask))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_model_attention_through_the_op_matches_eager(stories_dir):
    """The op swapped into the eager model gives the same logits (what export records)."""
    from edgekit.models.load import load_model

    lm = load_model(stories_dir)
    toks = torch.tensor([[1, 403, 407, 261, 378]])
    with torch.no_grad():
        want = lm.model(toks, torch.arange(5))
        for layer in lm.model.layers:
            layer.attention.cache_sdpa = True
        got = lm.model(toks, torch.arange(5))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
    assert math.isfinite(float(got.abs().max()))


def test_nan_query_row_same_from_both_rows():
    """A NaN in a query makes every score of that row NaN: the portable row ignores NaN scores
    in its max (std::max), finds nothing visible and returns zeros; the AVX2 row must do the
    same (a vector max that let the NaN through once gave NaN outputs). Other heads unchanged."""
    from edgekit.kernels.cpu import available_impls, sdpa_cache

    if "avx2" not in available_impls():
        pytest.skip("this CPU has no AVX2 + FMA: only the portable row exists")
    q, k, v = _case(3, 1, 1, 32, 64)
    q[0, 1, 0, 5] = float("nan")
    mask = _causal([18], 32)
    ref = torch.from_numpy(sdpa_cache(q, k, v, mask, impl="scalar"))
    got = torch.from_numpy(sdpa_cache(q, k, v, mask, impl="avx2"))
    assert torch.equal(ref[..., 64:128], torch.zeros(1, 1, 64))
    assert torch.equal(got[..., 64:128], ref[..., 64:128])
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5)
