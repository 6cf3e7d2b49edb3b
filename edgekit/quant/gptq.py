"""GPTQ (Frantar et al. 2022): column-by-column rounding with error feedback through the inverse
Hessian, vectorised over output rows.

``H`` arrives damped (``solvers.damp_hessian``). With ``act_order`` columns are visited by
decreasing ``diag(H)``. Groups stay contiguous in the original column order (the packed layout
needs that): a group's scale/zero are chosen on the fly, by the shrink-grid search of
``rtn.search_params``, from the current (error-updated) weights of its columns the first time
any of its columns is visited. With ``scale``/``zero`` given they are used as-is (decoupleQ's
"fix s, z; solve q" step).
"""

from __future__ import annotations

import torch

from edgekit.quant.layout import Layout
from edgekit.quant.rtn import search_params
from edgekit.quant.solvers import QuantResult


def inverse_cholesky_upper(H: torch.Tensor) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 (fp64), adding diagonal jitter if H is not positive definite."""
    H = H.double()
    jitter = 0.0
    mean = float(torch.diagonal(H).mean())
    for _ in range(8):
        Hj = H + jitter * torch.eye(H.shape[0], dtype=H.dtype) if jitter else H
        L, info = torch.linalg.cholesky_ex(Hj)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info2) == 0:
                return U
        jitter = mean * (1e-6 if jitter == 0 else jitter / mean * 10)
    raise RuntimeError("Hessian is not positive definite even after jitter")


def prepare(H: torch.Tensor, act_order: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(perm, upper Cholesky factor of the permuted H^-1): reusable across passes on one H."""
    K = H.shape[0]
    H = H.double()
    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(K)
    return perm, inverse_cholesky_upper(H[perm][:, perm])


def gptq(W: torch.Tensor, H: torch.Tensor, layout: Layout, *, scale: torch.Tensor | None = None,
         zero: torch.Tensor | None = None, act_order: bool = True, block_size: int = 128,
         grid: int = 40, prep: tuple[torch.Tensor, torch.Tensor] | None = None) -> QuantResult:
    """Quantize W (N, K) against damped H (K, K). Returns codes and fp16-exact scale/zero.

    ``prep``: the result of ``prepare(H, act_order)`` when several passes share one H."""
    N, K = W.shape
    g, G = layout.group(K), layout.n_groups(K)
    maxq = layout.maxq
    W = W.double().clone()
    H = H.double()
    dead = torch.diagonal(H) == 0
    W[:, dead] = 0
    perm, Hinv = prep if prep is not None else prepare(H, act_order)
    invperm = torch.argsort(perm)
    Wp = W[:, perm].contiguous()
    fixed = scale is not None
    S = scale.double().clone() if fixed else torch.zeros((N, G), dtype=torch.float64)
    Z = zero.double().clone() if fixed else torch.zeros((N, G), dtype=torch.float64)
    known = torch.full((G,), fixed, dtype=torch.bool)
    codes = torch.zeros((N, K), dtype=torch.int64)
    perm_l = perm.tolist()
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        cnt = i2 - i1
        W1 = Wp[:, i1:i2].clone()
        Err1 = torch.zeros((N, cnt), dtype=torch.float64)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(cnt):
            col = perm_l[i1 + i]
            j = col // g
            if not known[j]:
                cols = torch.arange(j * g, min((j + 1) * g, K))
                pos = invperm[cols]
                cur = torch.empty((N, cols.numel()), dtype=torch.float64)
                inblk = pos < i2  # all positions are >= i1 + i: the group was never visited
                cur[:, inblk] = W1[:, pos[inblk] - i1]
                out = ~inblk
                if out.any():
                    po = pos[out]
                    cur[:, out] = Wp[:, po] - Err1[:, :i] @ Hinv[i1:i1 + i][:, po]
                s, z = search_params(cur, Layout(layout.bits, None), H[cols][:, cols], grid)
                S[:, j], Z[:, j] = s[:, 0], z[:, 0]
                known[j] = True
            w = W1[:, i]
            s, z = S[:, j], Z[:, j]
            s_safe = torch.where(s == 0, torch.ones_like(s), s)
            u = torch.clamp(torch.round((w - z) / s_safe), 0, maxq)
            err = (w - (s * u + z)) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
            codes[:, col] = u.long()
        Wp[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return QuantResult(codes, S, Z)
