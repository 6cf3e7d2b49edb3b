"""Export-time rewrites of the reference model that keep its outputs but lower better to XNNPACK.

Both are applied in place for the duration of a ``with export_friendly(model):`` block and undone
exactly afterwards (pure permutations and class swaps, no arithmetic on weights):

- interleaved RoPE (llama2.c / Meta layout) -> half-split layout, by permuting the rows of wq and
  wk (and their biases) inside each head; q.k products are unchanged, so are the logits, while
  the strided pair selects (portable ops that split XNNPACK partitions) disappear. The K cache
  then holds keys in the permuted order, which is internal to the program.
- RMSNorm's mean over the last axis of a 3-D tensor -> a 4-D global average pool, the only mean
  XNNPACK takes.
- half-split RoPE ``cat(a cos - b sin, a sin + b cos)`` -> ``x cos' + linear(x, W) sin'`` with
  full-width tables ``cos' = cat(cos, cos)`` and a constant signed permutation ``W``
  (``linear(x, W) = cat(-b, a)``): the same products and sums (W's entries are 0 and +-1),
  without the half slices, which are portable ops that split XNNPACK partitions.

Example::

    with export_friendly(model):
        ep = torch.export.export(...)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from edgekit.models.llama import RMSNorm


class _PoolRMSNorm(RMSNorm):
    """RMSNorm whose mean-of-squares is a (B, T, D, 1) -> (B, T, 1, 1) average pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.edgekit_ops:
            return super().forward(x)
        B, D = x.shape[0], x.shape[-1]
        xf = x.float()
        ms = xf.pow(2).reshape(B, -1, D, 1).mean((2, 3), keepdim=True).reshape(B, -1, 1)  # (B, T, 1)
        return (xf * torch.rsqrt(ms + self.eps)).type_as(x) * self.weight


def _half_perm(hd: int) -> torch.Tensor:
    """Index j of the half layout holds interleaved index perm[j]: [0, 2, 4, ..., 1, 3, 5, ...]."""
    return torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])


def _permute_heads(lin: torch.nn.Module, n_heads: int, hd: int, perm: torch.Tensor) -> None:
    # A packed linear (edgekit.quant.modules) stores rows independently: permute qweight, scale
    # and zero rows the same way (exact: no repacking).
    names = ("weight",) if hasattr(lin, "weight") else ("qweight", "scale", "zero")
    for name in names:
        w = getattr(lin, name).data.view(n_heads, hd, -1)
        w.copy_(w[:, perm, :].clone())
    if lin.bias is not None:
        b = lin.bias.data.view(n_heads, hd)
        b.copy_(b[:, perm].clone())


def _rotate_half_matrix(hd: int) -> torch.Tensor:
    """W (hd, hd), a linear's weight, with F.linear(x, W) = x @ W.T = cat(-x[half:], x[:half])."""
    half = hd // 2
    w = torch.zeros(hd, hd)
    w[torch.arange(half), torch.arange(half, hd)] = -1.0
    w[torch.arange(half, hd), torch.arange(half)] = 1.0
    return w


@contextmanager
def export_friendly(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Apply the rewrites above to ``model`` in place; undo them on exit."""
    swapped = []
    permuted = []
    tables = (model.rope_cos, model.rope_sin)
    try:
        with torch.no_grad():
            for m in model.modules():
                if type(m) is RMSNorm:
                    m.__class__ = _PoolRMSNorm
                    swapped.append(m)
            for layer in model.layers:
                att = layer.attention
                if att.interleaved:
                    perm = _half_perm(att.hd)
                    _permute_heads(att.wq, att.n_heads, att.hd, perm)
                    _permute_heads(att.wk, att.n_kv, att.hd, perm)
                    att.interleaved = False
                    permuted.append(att)
                att.register_buffer("rope_rot", _rotate_half_matrix(att.hd), persistent=False)
            model.rope_cos = torch.cat([tables[0], tables[0]], -1)  # (S, hd)
            model.rope_sin = torch.cat([tables[1], tables[1]], -1)
        yield model
    finally:
        with torch.no_grad():
            model.rope_cos, model.rope_sin = tables
            for layer in model.layers:
                if "rope_rot" in layer.attention._buffers:
                    del layer.attention._buffers["rope_rot"]
            for m in swapped:
                m.__class__ = RMSNorm
            for att in permuted:
                inv = torch.argsort(_half_perm(att.hd))
                _permute_heads(att.wq, att.n_heads, att.hd, inv)
                _permute_heads(att.wk, att.n_kv, att.hd, inv)
                att.interleaved = True
