"""Lower packed quantized linears (``edgekit.quant.modules``) to what each runtime runs fast.

The eager packed module (dequantize, then ``F.linear``) would export as a full-weight
dequantization on every call. For export, each packed linear is swapped, for the duration of a
``with`` block only, for a module that calls one fused operator on the packed buffers:

- ExecuTorch (``lowered_for_executorch``): ``edgekit::linear_w{2,3,4,8}`` (edgekit/kernels/ops.py;
  the C++ kernels in edgekit/kernels/cpu: AVX2/NEON for 2 and 4 bits, scalar for 3 and 8). The
  packed buffers go into the .pte unchanged; XNNPACK takes everything else.
- ONNX (``lowered_for_onnx``): onnxruntime's ``com.microsoft::MatMulNBits`` through a
  ``custom_translation_table`` for the placeholder ops ``edgekit::mnb_zp`` / ``edgekit::mnb_corr``.

ONNX mapping (layout.py ``W = s * u + z``, MatMulNBits ``W = scale * (u - zp)``):

- 2 and 4 bits: ``B`` = our ``qweight`` viewed as ``[N, G, g * b / 8]`` (the same little-endian
  codes, low bits first, rows padded to whole groups: byte-identical); ``scales = float(s)`` and
  a float zero point ``zp = -float(z) / float(s)``. The file stores our fp16 ``s``/``z``; the
  Cast/Div/Neg that make the fp32 inputs are folded by onnxruntime at session creation, so the
  file keeps 2.5 bits per weight at g64. ``s * (u - zp)`` equals ``s * u + z`` up to one fp32
  rounding (|error| <= ~2^-23 * (|z| + 2^b |s|)); a group with ``s == 0`` gets the smallest
  fp16 subnormal as scale (error <= 2^-24 * (2^b - 1) ~ 2e-7).
- 8 bits: MatMulNBits on CPU refuses float zero points at 8 bits, so the weight runs with the
  default zero point 128 (``s * (u - 128)``) and the offset is added back exactly:
  ``y += groupsum(x) @ (z + 128 s)^T`` (per channel: ``sum(x) * (z + 128 s)``). Per-channel
  scales are repeated over MatMulNBits blocks (a power of two in [16, 256] dividing K, else 16
  with zero-padded rows) -- exact.
- Other group sizes (not a power of two >= 16) raise ``UserError``.

Example::

    with lowered_for_onnx(model) as table:
        torch.onnx.export(wrapper, example, dynamo=True, custom_translation_table=table, ...)
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.quant.layout import Layout
from edgekit.quant.modules import _PackedLinear

ET_OPS = {2: "linear_w2", 3: "linear_w3", 4: "linear_w4", 8: "linear_w8"}


def packed_linears(model: nn.Module) -> list[tuple[str, _PackedLinear]]:
    """(name, module) of every packed linear in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _PackedLinear)]


@contextmanager
def _swapped(model: nn.Module, make) -> Iterator[list[tuple[str, nn.Module]]]:
    swaps = []
    try:
        for name, m in packed_linears(model):
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            new = make(m)
            setattr(parent, leaf, new)
            swaps.append((parent, leaf, m))
        yield [(f"{p}", n) for p, _, n in swaps]
    finally:
        for parent, leaf, m in reversed(swaps):
            setattr(parent, leaf, m)


# --- ExecuTorch ---------------------------------------------------------------------------------

class ETPackedLinear(nn.Module):
    """``edgekit::linear_w{b}`` on the packed buffers of a ``_PackedLinear`` (shared tensors)."""

    def __init__(self, m: _PackedLinear) -> None:
        super().__init__()
        import edgekit.kernels.ops  # noqa: F401  (registers the torch.library ops)

        self.op = getattr(torch.ops.edgekit, ET_OPS[m.layout.bits])
        self.gs = int(m.layout.group_size) if m.layout.group_size is not None else -1
        self.in_features, self.out_features = m.in_features, m.out_features
        self.register_buffer("qweight", m.qweight)
        self.register_buffer("scale", m.scale)
        self.register_buffer("zero", m.zero)
        if m.bias is not None:
            self.register_buffer("bias", m.bias)
        else:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.op(x, self.qweight, self.scale, self.zero, self.gs, self.in_features)  # (..., N)
        return y if self.bias is None else y + self.bias


@contextmanager
def lowered_for_executorch(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Swap packed linears for ``edgekit::linear_w*`` calls; yields ``{ops, n_linears}`` for the
    manifest (``ops`` empty when the model has no packed linears)."""
    ops: dict[str, int] = {}
    for _, m in packed_linears(model):
        name = f"edgekit::{ET_OPS[m.layout.bits]}"
        ops[name] = ops.get(name, 0) + 1
    with _swapped(model, ETPackedLinear):
        yield {"ops": ops, "n_linears": sum(ops.values())}


# --- ONNX ---------------------------------------------------------------------------------------

_FP16_TINY = float(torch.finfo(torch.float16).tiny) * 2 ** -10  # smallest fp16 subnormal, 2^-24
_lib = torch.library.Library("edgekit", "FRAGMENT")
_lib.define("mnb_zp(Tensor x, Tensor B, Tensor scale, Tensor zero, int K, int N, int bits, "
            "int block_size) -> Tensor")
_lib.define("mnb_corr(Tensor x, Tensor B, Tensor scale, Tensor corr, int K, int N, int bits, "
            "int block_size, int corr_group) -> Tensor")


def _unpack_blocks(B: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """MatMulNBits B uint8 [N, n_blocks, blob] -> float codes (N, K)."""
    from edgekit.quant.layout import unpack_torch

    N = B.shape[0]
    flat = B.reshape(N, -1)
    return unpack_torch(flat, flat.shape[1] * 8 // bits, Layout(bits, None))[:, :K].to(torch.float32)


def _mnb_zp_ref(x, B, scale, zero, K, N, bits, block_size):
    # ORT semantics: W = scale * (u - zp), scale fp32, zp = -z / s (see the module docstring)
    s = scale.to(torch.float32)
    zp = -zero.to(torch.float32) / s  # (N, G)
    u = _unpack_blocks(B, bits, K)
    idx = torch.arange(K) // block_size
    w = s[:, idx] * (u - zp[:, idx])
    return torch.matmul(x.to(torch.float32), w.t())


def _mnb_corr_ref(x, B, scale, corr, K, N, bits, block_size, corr_group):
    s = scale.to(torch.float32)  # (N, n_blocks)
    u = _unpack_blocks(B, bits, K)
    idx = torch.arange(K) // block_size
    w = s[:, idx] * (u - float(1 << (bits - 1)))
    xs = x.to(torch.float32).reshape(*x.shape[:-1], K // corr_group, corr_group).sum(-1)  # (..., Gc)
    return torch.matmul(x.to(torch.float32), w.t()) + torch.matmul(xs, corr.to(torch.float32).t())


_lib.impl("mnb_zp", _mnb_zp_ref, "CompositeExplicitAutograd")
_lib.impl("mnb_corr", _mnb_corr_ref, "CompositeExplicitAutograd")


@torch.library.register_fake("edgekit::mnb_zp", lib=_lib)
def _mnb_zp_fake(x, B, scale, zero, K, N, bits, block_size):
    return x.new_empty((*x.shape[:-1], N), dtype=torch.float32)


@torch.library.register_fake("edgekit::mnb_corr", lib=_lib)
def _mnb_corr_fake(x, B, scale, corr, K, N, bits, block_size, corr_group):
    return x.new_empty((*x.shape[:-1], N), dtype=torch.float32)


def _pow2_block(K: int) -> int:
    for b in (256, 128, 64, 32, 16):
        if K % b == 0:
            return b
    return 16


class OnnxPackedLinear(nn.Module):
    """A packed linear as MatMulNBits inputs (see the module docstring for the mapping)."""

    def __init__(self, m: _PackedLinear) -> None:
        super().__init__()
        lay, K, N = m.layout, m.in_features, m.out_features
        g, G = lay.group(K), lay.n_groups(K)
        self.K, self.N, self.bits = K, N, lay.bits
        if lay.bits in (2, 4):
            if g < 16 or g & (g - 1):
                raise UserError(f"group size {g} (K={K}) cannot map to onnxruntime MatMulNBits",
                                "use a power-of-two group size >= 16 (w2g64, w4g32, ...)")
            self.kind, self.block = "zp", g
            self.register_buffer("B", m.qweight.view(N, G, g * lay.bits // 8))
            s = m.scale.clone()
            s[s == 0] = _FP16_TINY
            self.register_buffer("scale", s)  # fp16 (N, G)
            self.register_buffer("zero", m.zero)  # fp16 (N, G)
        elif lay.bits == 8:
            if G > 1 and K % g:
                raise UserError(f"8-bit group size {g} does not divide K={K}; no MatMulNBits mapping",
                                "use per-channel w8")
            self.kind = "corr"
            self.block = g if G > 1 and g >= 16 and not g & (g - 1) else _pow2_block(K)
            if G > 1 and self.block != g:
                raise UserError(f"8-bit group size {g} cannot map to MatMulNBits", "use per-channel w8")
            nb = -(-K // self.block)
            q = m.qweight
            if nb * self.block != K:
                q = torch.cat([q, torch.zeros(N, nb * self.block - K, dtype=torch.uint8)], 1)
            self.register_buffer("B", q.reshape(N, nb, self.block))
            # per-channel: one fp16 scale per row, repeated over blocks in the graph (Expand)
            self.register_buffer("scale", m.scale)  # fp16 (N, G)
            self.register_buffer("zero", m.zero)
            self.corr_group = g if G > 1 else K
        else:
            raise UserError(f"{lay.bits}-bit linears have no onnxruntime MatMulNBits mapping",
                            "export 2-, 4- or 8-bit quantized models to ONNX")
        self.bias = None if m.bias is None else m.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "zp":
            y = torch.ops.edgekit.mnb_zp(x, self.B, self.scale, self.zero, self.K, self.N, self.bits, self.block)
        else:
            nb = self.B.shape[1]
            s = self.scale if self.scale.shape[1] == nb else self.scale.expand(self.N, nb)
            corr = self.zero.float() + 128.0 * self.scale.float()  # (N, Gc)
            y = torch.ops.edgekit.mnb_corr(x, self.B, s, corr, self.K, self.N, self.bits, self.block,
                                           self.corr_group)
        return y if self.bias is None else y + self.bias


def _matmul_nbits_schema():
    from onnx.defs import OpSchema

    P, Opt = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Optional
    return OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[P("A", "T1"), P("B", "T2"), P("scales", "T1"), P("zero_points", "T3", param_option=Opt)],
        outputs=[P("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], ""), ("T2", ["tensor(uint8)"], ""),
                          ("T3", ["tensor(uint8)", "tensor(float)"], "")],
        attributes=[OpSchema.Attribute(n, OpSchema.AttrType.INT, "") for n in
                    ("K", "N", "bits", "block_size", "accuracy_level")])


def _translation_table() -> dict:
    import onnxscript
    from onnxscript import opset18 as op

    msft = onnxscript.values.Opset("com.microsoft", 1)
    # onnx has no schema for the contrib op: describe the part used here (onnxruntime's
    # contrib_defs MatMulNBits: A, B, scales, optional zero_points -> Y)
    matmul_nbits = onnxscript.values.Op(msft, "MatMulNBits", _matmul_nbits_schema())
    FLOAT = 1  # onnx.TensorProto.FLOAT

    def mnb_zp(x, B, scale, zero, K: int, N: int, bits: int, block_size: int):
        s = op.Cast(scale, to=FLOAT)
        zp = op.Neg(op.Div(op.Cast(zero, to=FLOAT), s))
        s1, zp1 = op.Reshape(s, op.Constant(value_ints=[-1])), op.Reshape(zp, op.Constant(value_ints=[-1]))
        return matmul_nbits(x, B, s1, zp1, K=K, N=N, bits=bits, block_size=block_size, accuracy_level=0)

    def mnb_corr(x, B, scale, corr, K: int, N: int, bits: int, block_size: int, corr_group: int):
        s1 = op.Reshape(op.Cast(scale, to=FLOAT), op.Constant(value_ints=[-1]))
        y = matmul_nbits(x, B, s1, K=K, N=N, bits=bits, block_size=block_size, accuracy_level=0)
        shp = op.Concat(op.Slice(op.Shape(x), op.Constant(value_ints=[0]), op.Constant(value_ints=[-1])),
                        op.Constant(value_ints=[K // corr_group, corr_group]), axis=0)
        xs = op.ReduceSum(op.Reshape(x, shp), op.Constant(value_ints=[-1]), keepdims=0)  # (..., Gc)
        return op.Add(y, op.MatMul(xs, op.Transpose(corr, perm=[1, 0])))

    return {torch.ops.edgekit.mnb_zp.default: mnb_zp, torch.ops.edgekit.mnb_corr.default: mnb_corr}


@contextmanager
def lowered_for_onnx(model: nn.Module) -> Iterator[dict | None]:
    """Swap packed linears for MatMulNBits placeholders; yields the ``custom_translation_table``
    for ``torch.onnx.export`` (None when the model has no packed linears)."""
    if not packed_linears(model):
        yield None
        return
    with _swapped(model, OnnxPackedLinear):
        yield _translation_table()
