"""Per-layer weight quantizers behind one entry point, ``quantize_weight``.

Objective (all methods): for a weight ``W`` (N, K) and the input second moment ``H = X^T X / n``
(K, K), minimise the H-weighted error ``sum_n (w_n - w_hat_n)^T H (w_n - w_hat_n)`` over codes
``u`` and per-group ``scale``/``zero`` of ``edgekit.quant.layout``. Scale and zero are rounded to
fp16 before the codes that use them are chosen, so the reported error is the stored one.

Example::

    res = quantize_weight(W, Layout(2, 64), H, "decoupleq")
    res.codes, res.scale, res.zero      # (N, K) long, (N, G) float64 holding fp16 values
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgekit.quant.layout import Layout, dequantize_codes

METHODS = ("rtn", "gptq", "decoupleq")


@dataclass
class QuantResult:
    codes: torch.Tensor  # (N, K) int64 in [0, maxq]
    scale: torch.Tensor  # (N, G) float64, values representable in fp16
    zero: torch.Tensor  # (N, G)

    def weight(self, layout: Layout) -> torch.Tensor:
        """Dequantized weight (N, K) in the dtype of ``scale``."""
        return dequantize_codes(self.codes, self.scale, self.zero, layout)


def row_errors(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor | None) -> torch.Tensor:
    """Per-row error (N,): ``d^T H d`` with ``d = W - W_hat`` (plain squared error if H is None)."""
    d = (W - W_hat).double()
    if H is None:
        return (d * d).sum(1)
    return ((d @ H.double()) * d).sum(1)


def damp_hessian(H: torch.Tensor, damp: float) -> torch.Tensor:
    """fp64 copy of H with dead inputs (zero diagonal) set to 1 and ``damp * mean(diag)`` added."""
    H = H.double().clone()
    diag = torch.diagonal(H)
    dead = diag == 0
    diag[dead] = 1.0
    diag += damp * float(diag.mean())
    return H


def fp16_exact(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest fp16 value, keep the dtype (finite: clamps to the fp16 range)."""
    return x.clamp(-65504.0, 65504.0).half().to(x.dtype)


def quantize_weight(W: torch.Tensor, layout: Layout, H: torch.Tensor | None = None, method: str = "rtn",
                    *, damp: float = 0.01, act_order: bool = True, block_size: int = 128,
                    rounds: int = 4, grid: int = 40) -> QuantResult:
    """Quantize one weight matrix (N, K) with ``method`` (rtn | gptq | decoupleq).

    ``H`` (K, K) is required for gptq/decoupleq and optional for rtn (then the shrink search is
    H-weighted). Raises ValueError for an unknown method or a missing H.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    W = W.detach().double()
    if method == "rtn":
        from edgekit.quant.rtn import rtn

        return rtn(W, layout, None if H is None else damp_hessian(H, damp), grid=grid)
    if H is None:
        raise ValueError(f"method {method!r} needs calibration statistics (H)")
    Hd = damp_hessian(H, damp)
    if method == "gptq":
        from edgekit.quant.gptq import gptq

        return gptq(W, Hd, layout, act_order=act_order, block_size=block_size, grid=grid)
    from edgekit.quant.decoupleq import decoupleq

    return decoupleq(W, Hd, layout, rounds=rounds, act_order=act_order, block_size=block_size, grid=grid)
