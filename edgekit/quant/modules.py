"""Packed-weight modules: one class per packed format (``PackedLinearW2/W3/W4/W8``) plus a
packed embedding, all in the layout of ``edgekit.quant.layout``.

Buffers (what the exporter maps to ONNX MatMulNBits / an ExecuTorch custom op):
``qweight`` uint8 (N, row_bytes), ``scale`` fp16 (N, G), ``zero`` fp16 (N, G), ``bias`` fp32 (N,)
or absent. ``forward`` is the pure-torch reference: dequantize to float32, then ``F.linear``;
it runs in eager and traces under ``torch.export``. With ``act_bits = 8`` (set by ``quantize_``
from ``QuantConfig.act_bits``) it is the int8-activation reference ``linear_a8_reference``
instead, the math of the kernels' a8 path.

Example::

    lin = nn.Linear(128, 64)
    q = PackedLinearW2.from_float(lin, group_size=64)     # round-to-nearest by default
    y = q(torch.randn(3, 128))                            # (3, 64)
    q.dequantize().shape                                  # (64, 128)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.quant.layout import Layout, dequantize, pack_torch, unpack_torch


def quantize_activations(x: torch.Tensor, K: int, layout: Layout) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dynamic int8 activations per weight group, as the kernels compute them (wq_linear.h):
    ``amax`` over the group's real columns, ``inv = 127 / amax`` (0 when amax is 0),
    ``xq = round_half_even(x * inv)`` clamped to [-127, 127], ``dx = amax / 127``.

    Returns xq (M, G, g) float32 holding integers (padded columns 0), dx (M, G), and the float
    group sums xsum (M, G) used for the offset term."""
    g, G = layout.group(K), layout.n_groups(K)
    xf = x.to(torch.float32).reshape(-1, K)
    if G * g > K:
        xf = F.pad(xf, (0, G * g - K))
    xg = xf.view(xf.shape[0], G, g)
    amax = xg.abs().amax(-1)
    inv = torch.where(amax > 0, 127.0 / torch.where(amax > 0, amax, 1.0), 0.0)
    xq = torch.round(xg * inv.unsqueeze(-1)).clamp(-127, 127)
    return xq, amax / 127.0, xg.sum(-1)


def linear_a8_reference(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                        layout: Layout, K: int) -> torch.Tensor:
    """``y = sum_g scale * dx * isum + zero * xsum`` with the exact integer dot products
    ``isum = <codes, xq>`` per group (float32 when every partial sum stays below 2^24, else
    float64). Shape (..., N)."""
    N = qweight.shape[0]
    g, G = layout.group(K), layout.n_groups(K)
    xq, dx, xsum = quantize_activations(x, K, layout)
    exact32 = g * layout.maxq * 127 < (1 << 24)
    dt = torch.float32 if exact32 else torch.float64
    u = unpack_torch(qweight, G * g, layout).to(dt).view(N, G, g)
    isum = torch.bmm(xq.to(dt).transpose(0, 1), u.permute(1, 2, 0))  # (G, M, N)
    y = (isum.to(torch.float32) * (scale.to(torch.float32).t().unsqueeze(1) * dx.t().unsqueeze(-1))).sum(0)
    y = y + xsum @ zero.to(torch.float32).t()
    return y.view(*x.shape[:-1], N)


class _PackedLinear(nn.Module):
    """Shared machinery; use the per-format subclasses."""

    BITS: int = 0

    def __init__(self, in_features: int, out_features: int, group_size: int | None, bias: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.layout = Layout(self.BITS, group_size)
        self.act_bits: int | None = None  # 8: int8 activations (linear_a8_reference)
        G, rb = self.layout.n_groups(in_features), self.layout.row_bytes(in_features)
        self.register_buffer("qweight", torch.zeros((out_features, rb), dtype=torch.uint8))
        self.register_buffer("scale", torch.zeros((out_features, G), dtype=torch.float16))
        self.register_buffer("zero", torch.zeros((out_features, G), dtype=torch.float16))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32))
        else:
            self.bias = None

    @property
    def group_size(self) -> int | None:
        return self.layout.group_size

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
                   group_size: int | None, bias: torch.Tensor | None = None) -> "_PackedLinear":
        """Build from integer codes (N, K) in [0, maxq] and per-group scale/zero (N, G)."""
        N, K = codes.shape
        m = cls(K, N, group_size, bias is not None)
        if tuple(scale.shape) != tuple(m.scale.shape) or tuple(zero.shape) != tuple(m.zero.shape):
            raise ValueError(f"scale/zero shape {tuple(scale.shape)} != expected {tuple(m.scale.shape)}")
        m.qweight.copy_(pack_torch(codes, m.layout))
        m.scale.copy_(scale.to(torch.float16))
        m.zero.copy_(zero.to(torch.float16))
        if bias is not None:
            m.bias.copy_(bias.detach().float())
        return m

    @classmethod
    def from_float(cls, linear: nn.Linear, group_size: int | None = None, H: torch.Tensor | None = None,
                   method: str = "rtn", **kw) -> "_PackedLinear":
        """Quantize a float ``nn.Linear`` with ``method`` (rtn | gptq | decoupleq; the last two
        need the input Hessian ``H`` (K, K))."""
        from edgekit.quant.solvers import quantize_weight

        lay = Layout(cls.BITS, group_size)
        res = quantize_weight(linear.weight.detach(), lay, H, method, **kw)
        return cls.from_codes(res.codes, res.scale, res.zero, group_size, linear.bias)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight (N, K) this module multiplies by."""
        return dequantize(self.qweight, self.scale, self.zero, self.layout, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits == 8:
            y = linear_a8_reference(x, self.qweight, self.scale, self.zero, self.layout, self.in_features).to(x.dtype)
            return y if self.bias is None else y + self.bias.to(x.dtype)
        w = self.dequantize()
        return F.linear(x, w.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.BITS}, "
                f"group_size={self.group_size}, bias={self.bias is not None}"
                + (f", act_bits={self.act_bits}" if self.act_bits else ""))


def set_act_bits(model: nn.Module, act_bits: int | None) -> int:
    """Set ``act_bits`` on every packed linear of ``model``; returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, _PackedLinear):
            m.act_bits = act_bits
            n += 1
    return n


class PackedLinearW2(_PackedLinear):
    """2-bit codes, 4 per byte (low bits first), fp16 scale + fp16 offset per group."""

    BITS = 2


class PackedLinearW3(_PackedLinear):
    """3-bit codes, 8 per 3 bytes (24-bit little-endian word), fp16 scale + offset per group."""

    BITS = 3


class PackedLinearW4(_PackedLinear):
    """4-bit codes, 2 per byte (low nibble first), fp16 scale + offset per group."""

    BITS = 4


class PackedLinearW8(_PackedLinear):
    """8-bit codes, one per byte, fp16 scale + offset per group (per channel in preset ``w8``)."""

    BITS = 8


PACKED_LINEAR: dict[int, type[_PackedLinear]] = {
    2: PackedLinearW2, 3: PackedLinearW3, 4: PackedLinearW4, 8: PackedLinearW8}


class PackedEmbedding(nn.Module):
    """Token embedding with packed rows (same layout; a row is one token's vector).

    ``forward`` gathers the packed rows of the requested tokens and dequantizes only those.
    """

    def __init__(self, num_embeddings: int, dim: int, bits: int, group_size: int | None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, dim
        self.layout = Layout(bits, group_size)
        G, rb = self.layout.n_groups(dim), self.layout.row_bytes(dim)
        self.register_buffer("qweight", torch.zeros((num_embeddings, rb), dtype=torch.uint8))
        self.register_buffer("scale", torch.zeros((num_embeddings, G), dtype=torch.float16))
        self.register_buffer("zero", torch.zeros((num_embeddings, G), dtype=torch.float16))

    @classmethod
    def from_float(cls, emb: nn.Embedding, bits: int, group_size: int | None) -> "PackedEmbedding":
        """Round-to-nearest with the shrink grid (no Hessian for a lookup table)."""
        from edgekit.quant.solvers import quantize_weight

        V, d = emb.weight.shape
        m = cls(V, d, bits, group_size)
        res = quantize_weight(emb.weight.detach(), m.layout, None, "rtn")
        m.qweight.copy_(pack_torch(res.codes, m.layout))
        m.scale.copy_(res.scale.half())
        m.zero.copy_(res.zero.half())
        return m

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.qweight, self.scale, self.zero, self.layout, self.embedding_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        shape = tokens.shape
        flat = tokens.reshape(-1)
        w = dequantize(self.qweight[flat], self.scale[flat], self.zero[flat], self.layout, self.embedding_dim)
        return w.view(*shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits={self.layout.bits}, group_size={self.layout.group_size}"
