"""edgekit::rms_norm, edgekit::rope and edgekit::swiglu: the C++ kernels (kernels/cpu/ew.h)
against the model code they replace, and the model with the ops swapped in (what a quantized
ExecuTorch export records) against the plain model.

A quantized decoder's program has no XNNPACK delegate call between its edgekit calls (checked
on a real package in test_quant_a8.py and test_quant_export.py).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgekit.errors import UserError
from edgekit.models.llama import rms_norm, rope_heads, swiglu


@pytest.mark.parametrize("shape", [(1, 1, 576), (3, 5, 100), (2, 7), (1, 4, 896)])
def test_rms_norm_kernel_matches_the_model(shape):
    from edgekit.kernels import cpu

    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(*shape, generator=g) * 3
    w = torch.randn(shape[-1], generator=g)
    got = torch.from_numpy(cpu.rms_norm(x, w, 1e-5))
    want = rms_norm(x, w, 1e-5)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got - want).abs().max()


@pytest.mark.parametrize("B,T,H,hd", [(1, 1, 9, 64), (1, 5, 3, 8), (2, 4, 2, 128), (1, 3, 14, 64)])
def test_rope_kernel_matches_the_export_path_exactly(B, T, H, hd):
    """Same products and sums as the export path's x cos + linear(x, W) sin, so equal bits."""
    from edgekit.export.transforms import _rotate_half_matrix
    from edgekit.kernels import cpu

    g = torch.Generator().manual_seed(hd + T)
    x = torch.randn(B, T, H, hd, generator=g)
    ang = torch.rand(T, hd // 2, generator=g) * 6
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    xt = x.transpose(1, 2)
    export_path = xt * cos + F.linear(xt, _rotate_half_matrix(hd)) * sin
    assert torch.equal(rope_heads(x, cos, sin), export_path)
    got = torch.from_numpy(cpu.rope(x, cos, sin))
    assert got.shape == (B, H, T, hd)
    assert torch.allclose(got, export_path, rtol=0, atol=1e-6), (got - export_path).abs().max()


def test_rope_kernel_refuses_odd_head_dim():
    from edgekit.kernels import cpu

    with pytest.raises(UserError):
        cpu.rope(torch.zeros(1, 1, 2, 7), torch.zeros(1, 7), torch.zeros(1, 7))


@pytest.mark.parametrize("n", [1, 7, 8, 1539])
def test_swiglu_kernel_matches_the_model(n):
    from edgekit.kernels import cpu

    g = torch.Generator().manual_seed(n)
    gate = torch.randn(n, generator=g) * 6
    up = torch.randn(n, generator=g)
    got = torch.from_numpy(cpu.swiglu(gate, up))
    want = swiglu(gate, up)
    assert torch.allclose(got, want, rtol=2e-6, atol=1e-7), (got - want).abs().max()


def test_swiglu_kernel_extremes():
    """exp is clamped at +-88.4 inside the vector path: huge gates stay finite and exact in the
    limit (silu(g) -> g, silu(-g) -> -0), zeros stay zero."""
    from edgekit.kernels import cpu

    gate = torch.tensor([0.0, -0.0, 1e-4, -1e-4, 20.0, -20.0, 88.0, -88.0, 100.0, -100.0, 1e4, -1e4,
                         3.0, -3.0, 0.5, -0.5])
    up = torch.ones_like(gate) * 1.5
    got = torch.from_numpy(cpu.swiglu(gate, up))
    want = swiglu(gate, up)
    assert torch.isfinite(got).all()
    assert torch.allclose(got, want, rtol=2e-6, atol=1e-30), torch.stack([got, want])


def test_model_with_the_ops_swapped_in_matches_the_model(stories_dir):
    """Under export_friendly (full-width RoPE tables) with every decoder op flag set, the eager
    model (the ops' torch references) gives the plain model's logits: what export records."""
    from edgekit.export.transforms import export_friendly
    from edgekit.models.load import load_model

    lm = load_model(stories_dir)
    toks = torch.tensor([[1, 403, 407, 261, 378]])
    with torch.no_grad():
        want = lm.model(toks, torch.arange(5))
        with export_friendly(lm.model):
            flagged = [m for m in lm.model.modules() if hasattr(m, "edgekit_ops")]
            assert len(flagged) == 1 + 4 * len(lm.model.layers)  # final norm; 2 norms, attention, ffn
            for m in flagged:
                m.edgekit_ops = True
            for layer in lm.model.layers:
                layer.attention.cache_sdpa = True
            got = lm.model(toks, torch.arange(5))
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5), (got - want).abs().max()
