"""decoupleQ (arXiv 2404.12759, papers.md section 3): alternate between the integer codes and
the float scale/zero of ``W_hat = s * u + z`` on the H-weighted layer objective.

1. init s, z per group by the shrink-grid search minimising the H-weighted error (``rtn``);
2. one GPTQ pass (act-order) with those s, z fixed; a plain GPTQ pass (scales chosen on the fly)
   is run too and each row starts from whichever of the two is better;
3. ``rounds`` times: (ii) fix u, solve s, z of each row in closed form, the 2G x 2G normal
   equations ``(A H A^T) theta = A H w`` with ``A`` = [per-group codes; per-group ones];
   (i) fix s, z, re-solve u by GPTQ column rounding with error feedback. After each step a row
   keeps its update only if its error drops, so the error never increases.

The block-level stage (freeze u, tune s, z and the norm gains against the float block's
outputs) lives in ``edgekit.quant.api`` because it needs the whole transformer block.
"""

from __future__ import annotations

import torch

from edgekit.quant.gptq import gptq, prepare
from edgekit.quant.layout import Layout
from edgekit.quant.rtn import search_params
from edgekit.quant.solvers import QuantResult, fp16_exact, row_errors


def solve_scale_zero(codes: torch.Tensor, W: torch.Tensor, H: torch.Tensor, layout: Layout,
                     chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form per-row (scale, zero) (N, G) minimising the H-weighted error for fixed codes.

    Per row, theta = [s_1..s_G, z_1..z_G] solves ``M theta = b`` with
    ``M = [[U H U^T, U H E^T], [E H U^T, E H E^T]]`` restricted to group blocks (U: codes spread
    over groups, E: group indicator) and ``b = [U H w; E H w]``. A ridge of 1e-10 * mean(diag M)
    keeps singular rows (a group with a single distinct code) solvable.
    """
    N, K = W.shape
    g, G = layout.group(K), layout.n_groups(K)
    Kp = G * g
    Hp = torch.zeros((Kp, Kp), dtype=torch.float64)
    Hp[:K, :K] = H.double()
    U = torch.zeros((N, Kp), dtype=torch.float64)
    U[:, :K] = codes.double()
    Wp = torch.zeros((N, Kp), dtype=torch.float64)
    Wp[:, :K] = W.double()
    Hb = Hp.view(G, g, G, g)
    Hs = Hb.sum(1)  # (G, G, g): sum over the rows of block l
    Mzz = Hs.sum(-1)  # (G, G)
    S = torch.empty((N, G), dtype=torch.float64)
    Z = torch.empty((N, G), dtype=torch.float64)
    for r0 in range(0, N, chunk):
        r1 = min(r0 + chunk, N)
        n = r1 - r0
        Ug = U[r0:r1].view(n, G, g)
        T = torch.einsum("nlm,lmjk->nljk", Ug, Hb)  # (n, G, G, g)
        Mss = torch.einsum("nljk,njk->nlj", T, Ug)  # s_l . s_j
        Mzs = torch.einsum("ljk,njk->nlj", Hs, Ug)  # z_l . s_j
        M = torch.empty((n, 2 * G, 2 * G), dtype=torch.float64)
        M[:, :G, :G] = Mss
        M[:, G:, :G] = Mzs
        M[:, :G, G:] = Mzs.transpose(1, 2)
        M[:, G:, G:] = Mzz
        HW = (Wp[r0:r1] @ Hp).view(n, G, g)
        b = torch.cat([(Ug * HW).sum(-1), HW.sum(-1)], dim=1)  # (n, 2G)
        ridge = 1e-10 * torch.diagonal(M, dim1=1, dim2=2).mean(-1).clamp_min(1e-30)
        M = M + ridge[:, None, None] * torch.eye(2 * G, dtype=torch.float64)
        theta = torch.linalg.solve(M, b.unsqueeze(-1)).squeeze(-1)
        S[r0:r1], Z[r0:r1] = theta[:, :G], theta[:, G:]
    return S, Z


def _take_better(best: QuantResult, best_err: torch.Tensor, cand: QuantResult, err: torch.Tensor) -> None:
    """Row-wise: keep ``cand``'s rows whose error dropped (in place on ``best``/``best_err``)."""
    better = torch.isfinite(err) & (err < best_err)
    best.codes[better] = cand.codes[better]
    best.scale[better] = cand.scale[better]
    best.zero[better] = cand.zero[better]
    best_err[better] = err[better]


def decoupleq(W: torch.Tensor, H: torch.Tensor, layout: Layout, *, rounds: int = 4,
              act_order: bool = True, block_size: int = 128, grid: int = 40) -> QuantResult:
    """decoupleQ on W (N, K) against damped H (K, K); scale/zero are fp16-exact."""
    W = W.double()
    s0, z0 = search_params(W, layout, H, grid)
    prep = prepare(H, act_order)  # one factorisation of H serves every GPTQ pass
    best = gptq(W, H, layout, scale=s0, zero=z0, act_order=act_order, block_size=block_size, prep=prep)
    best_err = row_errors(W, best.weight(layout), H)
    plain = gptq(W, H, layout, act_order=act_order, block_size=block_size, grid=grid, prep=prep)
    _take_better(best, best_err, plain, row_errors(W, plain.weight(layout), H))
    for _ in range(rounds):
        s, z = solve_scale_zero(best.codes, W, H, layout)
        cand = QuantResult(best.codes.clone(), fp16_exact(s), fp16_exact(z))
        _take_better(best, best_err, cand, row_errors(W, cand.weight(layout), H))
        cand = gptq(W, H, layout, scale=best.scale, zero=best.zero, act_order=act_order,
                    block_size=block_size, prep=prep)
        _take_better(best, best_err, cand, row_errors(W, cand.weight(layout), H))
    return best
