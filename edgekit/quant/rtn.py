"""Round-to-nearest with a shrink-factor grid search (also the init of GPTQ groups and decoupleQ).

For every group the range ``[min, max]`` is shrunk about its centre by factors ``p`` in
``linspace(1, 0.35, grid)``; the factor with the smallest error wins, per group. The error is
H-weighted with the group's diagonal block of ``H`` when ``H`` is given and the group has at
most 256 columns, with ``diag(H)`` for wider groups (per channel), plain squared error otherwise.
"""

from __future__ import annotations

import torch

from edgekit.quant.layout import Layout
from edgekit.quant.solvers import QuantResult, fp16_exact


def _pad_groups(W: torch.Tensor, layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) -> (N, G, g) with the last group padded by repeating its last real column, and a
    (G, g) mask of real columns."""
    N, K = W.shape
    g, G = layout.group(K), layout.n_groups(K)
    Kp = G * g
    if Kp > K:
        W = torch.cat([W, W[:, -1:].expand(N, Kp - K)], dim=1)
    mask = (torch.arange(Kp) < K).to(W.dtype).view(G, g)
    return W.view(N, G, g), mask


def search_params(W: torch.Tensor, layout: Layout, H: torch.Tensor | None = None,
                  grid: int = 40, min_shrink: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """Best per-group (scale, zero), each (N, G) fp16-exact, for weight W (N, K)."""
    N, K = W.shape
    maxq = layout.maxq
    Wg, mask = _pad_groups(W, layout)  # (N, G, g), (G, g)
    G, g = mask.shape
    Hb = None
    hdiag = None
    if H is not None:
        Hp = torch.zeros((G * g, G * g), dtype=W.dtype)
        Hp[:K, :K] = H.to(W.dtype)
        if g <= 256:
            idx = torch.arange(G)
            Hb = Hp.view(G, g, G, g)[idx, :, idx, :]  # (G, g, g) diagonal blocks
        else:
            hdiag = torch.diagonal(Hp).view(G, g)
    wmin = Wg.amin(-1)
    wmax = Wg.amax(-1)
    centre = (wmax + wmin) / 2
    half = (wmax - wmin) / 2
    best_err = torch.full((N, G), float("inf"), dtype=W.dtype)
    best_s = torch.zeros((N, G), dtype=W.dtype)
    best_z = torch.zeros((N, G), dtype=W.dtype)
    for p in torch.linspace(1.0, min_shrink, grid).tolist():
        s = fp16_exact(2 * half * p / maxq)
        z = fp16_exact(centre - half * p)
        s_safe = torch.where(s == 0, torch.ones_like(s), s)
        u = torch.clamp(torch.round((Wg - z[..., None]) / s_safe[..., None]), 0, maxq)
        d = (Wg - (s[..., None] * u + z[..., None])) * mask  # (N, G, g)
        if Hb is not None:
            err = torch.einsum("ngi,gij,ngj->ng", d, Hb, d)
        elif hdiag is not None:
            err = (d * d * hdiag).sum(-1)
        else:
            err = (d * d).sum(-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def codes_for(W: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Nearest codes (N, K) int64 for fixed per-group scale/zero (N, G)."""
    K = W.shape[1]
    idx = torch.arange(K) // layout.group(K)
    s, z = scale[:, idx], zero[:, idx]
    s_safe = torch.where(s == 0, torch.ones_like(s), s)
    return torch.clamp(torch.round((W - z) / s_safe), 0, layout.maxq).long()


def rtn(W: torch.Tensor, layout: Layout, H: torch.Tensor | None = None, grid: int = 40) -> QuantResult:
    """Round-to-nearest of W (N, K) with the searched per-group scale/zero."""
    s, z = search_params(W, layout, H, grid)
    return QuantResult(codes_for(W, s, z, layout), s, z)
