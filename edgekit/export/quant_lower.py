"""Lower packed quantized linears (``edgekit.quant.modules``) to what each runtime runs fast.

The eager packed module (dequantize, then ``F.linear``) would export as a full-weight
dequantization on every call. For export, each packed linear is swapped, for the duration of a
``with`` block only, for a module that calls one fused operator on the packed buffers:

- ExecuTorch (``lowered_for_executorch``): ``edgekit::linear_w{2,3,4,8}[a8]`` (edgekit/kernels/ops.py;
  the C++ kernels in edgekit/kernels/cpu: AVX2/NEON for 2 and 4 bits, scalar for 3 and 8; with
  int8 activations AVX2, AVX-VNNI, AVX-512 VNNI and NEON (SDOT) for 2, 4 and 8). The packed buffers go into the .pte unchanged, except
  that siblings reading one input (wq/wk/wv, w1/w3) are stacked into one call (``_FusedSlice``)
  and that int8-activation linears are stored in the row-interleaved r16 order
  (``edgekit::linear_w{b}a8_r16``, ``uses_r16``); XNNPACK takes everything else.
- ONNX (``lowered_for_onnx``): onnxruntime's ``com.microsoft::MatMulNBits`` through a
  ``custom_translation_table`` for the placeholder op ``edgekit::mnb``.

ONNX mapping (layout.py ``W = s * u + z``; MatMulNBits without zero points computes
``W' = scale * (u - 2^(b-1))``):

- ``B`` = our ``qweight`` viewed as ``[N, G, g * b / 8]``: the same little-endian codes (low bits
  first) with rows padded to whole groups, byte-identical (checked against the layout's
  reference in tests/test_quant_export.py); per-channel rows are cut into power-of-two blocks
  with the scale repeated. ``scales = float32(s)``.
- the float offset is added back exactly: ``W = W' + (z + 2^(b-1) s)``, so
  ``y = A @ W'^T + groupsum(A) @ corr^T`` with ``corr = z + 2^(b-1) s`` fp32 [N, G] (a small
  MatMul; A zero-padded to whole groups for the sums).
- why not MatMulNBits' own zero points: float zero points (``zp = -z/s``, exact to one fp32
  rounding, tried first) run a dequantizing slow path in onnxruntime 1.32 (20-35 ms for a
  8192x576 weight vs < 1 ms) and are refused at 8 bits; uint8 zero points cannot hold ``-z/s``.
- compute: ``accuracy_level`` 0 (fp32) by default: exact to fp32 rounding, greedy tokens equal
  the eager model's, fast at 4 bits but slow at 2 and 8 bits in onnxruntime 1.32; level 4
  (``ACCURACY_LEVEL = 4``: int8-quantized activations, the only fast path for 2 and 8 bits)
  changes logits by the activation rounding (~1e-2 relative) and fails exact verification.
- bytes: codes + fp32 scale + fp32 corr = 8 bytes per group (ours: 4, fp16): 3.0 bits per weight
  at g64 instead of 2.5, 5.0 -> 6.0 at w4g32.
- Other group sizes (not a power of two >= 16) raise ``UserError``.

Example::

    with lowered_for_onnx(model) as table:
        torch.onnx.export(wrapper, example, dynamo=True, custom_translation_table=table, ...)
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Iterator

import torch
from torch import nn

from edgekit.errors import UserError
from edgekit.quant.layout import Layout, interleave_r16, r16_applies
from edgekit.quant.modules import _PackedLinear

ET_OPS = {2: "linear_w2", 3: "linear_w3", 4: "linear_w4", 8: "linear_w8"}


def uses_r16(m: _PackedLinear) -> bool:
    """Whether the program stores this linear in the row-interleaved r16 order
    (edgekit.quant.layout.interleave_r16): int8 activations and a layout that has that order.
    The CPU kernels run it ~1.5-3x faster than the row-major order (wq_r16_x86.h)."""
    return m.act_bits == 8 and r16_applies(m.layout, m.in_features)


def et_op_name(m: _PackedLinear) -> str:
    """``linear_w{b}`` (float activations), ``linear_w{b}a8`` (int8 activations) or
    ``linear_w{b}a8_r16`` (int8 activations, weights in the r16 order)."""
    return ET_OPS[m.layout.bits] + ("a8" if m.act_bits == 8 else "") + ("_r16" if uses_r16(m) else "")


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
    """``edgekit::linear_w{b}[a8]`` on the packed buffers of one ``_PackedLinear`` (shared
    tensors), or of several that read the same input with their rows stacked (``_FusedSlice``)."""

    def __init__(self, m: "_PackedLinear | list[_PackedLinear]") -> None:
        super().__init__()
        import edgekit.kernels.ops  # noqa: F401  (registers the torch.library ops)

        mods = m if isinstance(m, list) else [m]
        ref = mods[0]
        self.op_name = et_op_name(ref)
        self.op = getattr(torch.ops.edgekit, self.op_name)
        # The effective group never spans rows: min(group_size, K) (layout.py), as the packer uses.
        self.gs = int(ref.layout.group(ref.in_features)) if ref.layout.group_size is not None else -1
        self.in_features = ref.in_features
        self.out_features = sum(x.out_features for x in mods)

        def rows(name: str) -> torch.Tensor:  # one module: its tensor itself, no copy
            return getattr(ref, name) if len(mods) == 1 else torch.cat([getattr(x, name) for x in mods], 0)

        packed = [rows(name) for name in ("qweight", "scale", "zero")]
        self.r16 = uses_r16(ref)
        if self.r16:  # reordered once at export; the program stores only this order
            packed = list(interleave_r16(*packed, ref.layout, ref.in_features))
        for name, t in zip(("qweight", "scale", "zero"), packed):
            self.register_buffer(name, t)
        if ref.bias is not None:
            self.register_buffer("bias", rows("bias"))
        else:
            self.bias = None
        self.bounds = [0]
        for x in mods:
            self.bounds.append(self.bounds[-1] + x.out_features)
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None  # (x, y) of the latest call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r16:
            y = self.op(x, self.qweight, self.scale, self.zero, self.gs, self.in_features, self.out_features)
        else:
            y = self.op(x, self.qweight, self.scale, self.zero, self.gs, self.in_features)  # (..., N)
        if self.bias is not None:
            y = y + self.bias
        self.last = (x, y)
        return y


class _FusedSlice(nn.Module):
    """Member ``i`` of sibling packed linears that read the same input (attention wq/wk/wv,
    feed-forward w1/w3), run as ONE call on their stacked rows (an ``ETPackedLinear`` of all of
    them): fewer kernel launches and thread-pool wake-ups per token (7 -> 4 per layer), the same
    per-row math (rows are independent in the layout, so the outputs are bit-identical). Member 0
    runs the call; the others slice its result when they get the same input tensor (else they run
    it themselves)."""

    def __init__(self, group: ETPackedLinear, i: int) -> None:
        super().__init__()
        if i == 0:
            self.group = group  # registered once: the stacked buffers appear once in the program
        else:
            object.__setattr__(self, "_group", group)
        self.i = i

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.group if self.i == 0 else self._group
        y = g.last[1] if self.i and g.last is not None and g.last[0] is x else g(x)
        return y[..., g.bounds[self.i]:g.bounds[self.i + 1]]

    def stacked(self, x: torch.Tensor) -> torch.Tensor:
        """All members' outputs, concatenated in FUSE order, from the one call (no slices): what
        ``Attention`` (q|k|v into ``edgekit::qkv_attn``) and ``FeedForward`` (w1|w3 into
        ``edgekit::swiglu_gu``) take when they find this method on ``wq`` / ``w1``."""
        return (self.group if self.i == 0 else self._group)(x)


FUSE = [("wq", "wk", "wv"), ("w1", "w3")]  # call order inside Attention / FeedForward.forward


def _fusable(mods: list[nn.Module]) -> bool:
    if not all(isinstance(m, _PackedLinear) for m in mods):
        return False
    a = mods[0]
    return all(m.layout == a.layout and m.act_bits == a.act_bits and m.in_features == a.in_features
               and (m.bias is None) == (a.bias is None) for m in mods)


@contextmanager
def _fused(model: nn.Module) -> Iterator[int]:
    """Swap fusable sibling groups for ``_FusedSlice`` members; yields how many groups."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    groups: list[ETPackedLinear] = []
    try:
        for parent in list(model.modules()):
            for names in FUSE:
                mods = [getattr(parent, n, None) for n in names]
                if not _fusable(mods):
                    continue
                g = ETPackedLinear(mods)
                groups.append(g)
                for i, (n, m) in enumerate(zip(names, mods)):
                    setattr(parent, n, _FusedSlice(g, i))
                    swaps.append((parent, n, m))
        yield len(groups)
    finally:
        for parent, n, m in reversed(swaps):
            setattr(parent, n, m)
        for g in groups:
            g.last = None


@contextmanager
def lowered_for_executorch(model: nn.Module, fuse: bool = True) -> Iterator[dict[str, Any]]:
    """Swap packed linears for ``edgekit::linear_w*`` calls (sibling groups fused, see
    ``_FusedSlice``, unless ``fuse`` is False) and, when there are any, set the model's
    ``cache_sdpa`` / ``edgekit_ops`` flags so that attention, norms, RoPE and SwiGLU call edgekit's
    ops too (``qkv_attn`` / ``swiglu_gu`` on fused groups, else ``sdpa_kv``, ``rope``, ``swiglu``;
    ``rms_norm``); yields ``{ops, fused_groups, elementwise}`` (``ops``: the linear op calls, empty
    when the model has no packed linears; the exported program's own op list is read back from it,
    ``edgekit.export.executorch.program_op_calls``; ``elementwise``: the flags were set, so XNNPACK
    should take only float linears, see edgekit.export.executorch.partitioners)."""
    with (_fused(model) if fuse else nullcontext(0)) as n_groups:
        ops: dict[str, int] = {}
        for _, m in model.named_modules():
            if isinstance(m, (_PackedLinear, ETPackedLinear)):
                name = f"edgekit::{et_op_name(m) if isinstance(m, _PackedLinear) else m.op_name}"
                ops[name] = ops.get(name, 0) + 1
        # A program that needs edgekit's kernels anyway also takes its attention op (which writes
        # the KV cache too) and its norms, RoPE and SwiGLU (no XNNPACK delegate call between two
        # linears); which ops each module then calls is decided in edgekit.models.llama.
        attn = [m for m in model.modules() if hasattr(m, "cache_sdpa")] if ops else []
        ew = [m for m in model.modules() if hasattr(m, "edgekit_ops")] if attn else []
        try:
            for m in attn:
                m.cache_sdpa = True
            for m in ew:
                m.edgekit_ops = True
            with _swapped(model, ETPackedLinear):
                yield {"ops": ops, "fused_groups": n_groups, "elementwise": bool(ew)}
        finally:
            for m in attn:
                m.cache_sdpa = False
            for m in ew:
                m.edgekit_ops = False


# --- ONNX ---------------------------------------------------------------------------------------

# MatMulNBits compute type: 0 = fp32 (exact to fp32 rounding: packages verify against the eager
# model), 4 = int8 activations (quantized per block; stories260K's first argmax already differs).
# Measured with onnxruntime 1.32 on x86 (2 threads, N=8192, K=576): bits 2 -> 85 ms (level 0) vs
# 0.88 ms (level 4); bits 4 -> 1.36 vs 0.47 ms; bits 8 -> 56 vs 0.29 ms; float zero points take a
# dequantizing slow path at any level (16-35 ms). Read at export time: set it to 4 for speed.
ACCURACY_LEVEL = 0

_lib = torch.library.Library("edgekit", "FRAGMENT")
_lib.define("mnb(Tensor x, Tensor xg, Tensor B, Tensor scale, Tensor corr, int K, int N, int bits, "
            "int block_size, int corr_group, int accuracy_level) -> Tensor")


def _unpack_blocks(B: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """MatMulNBits B uint8 [N, n_blocks, blob] -> float codes (N, K)."""
    from edgekit.quant.layout import unpack_torch

    N = B.shape[0]
    flat = B.reshape(N, -1)
    return unpack_torch(flat, flat.shape[1] * 8 // bits, Layout(bits, None))[:, :K].to(torch.float32)


def _mnb_ref(x, xg, B, scale, corr, K, N, bits, block_size, corr_group, accuracy_level):
    # MatMulNBits without zero points: W = scale * (u - 2^(b-1)); then + groupsum(x) @ corr^T.
    # (The eager reference computes in fp32; accuracy_level 4 in onnxruntime quantizes x to int8.)
    s = scale.reshape(N, -1)  # (N, n_blocks) fp32
    u = _unpack_blocks(B, bits, K)
    idx = torch.arange(K) // block_size
    w = s[:, idx] * (u - float(1 << (bits - 1)))
    G = corr.shape[1]
    xs = xg.to(torch.float32).reshape(*xg.shape[:-1], G, corr_group).sum(-1)  # (..., G)
    return torch.matmul(x.to(torch.float32), w.t()) + torch.matmul(xs, corr.t())


_lib.impl("mnb", _mnb_ref, "CompositeExplicitAutograd")


@torch.library.register_fake("edgekit::mnb", lib=_lib)
def _mnb_fake(x, xg, B, scale, corr, K, N, bits, block_size, corr_group, accuracy_level):
    return x.new_empty((*x.shape[:-1], N), dtype=torch.float32)


def _pow2_block(K: int) -> int:
    for b in (256, 128, 64, 32, 16):
        if K % b == 0:
            return b
    return 16


class OnnxPackedLinear(nn.Module):
    """A packed linear as MatMulNBits inputs plus the offset correction (module docstring)."""

    def __init__(self, m: _PackedLinear, accuracy_level: int | None = None) -> None:
        super().__init__()
        lay, K, N = m.layout, m.in_features, m.out_features
        g, G = lay.group(K), lay.n_groups(K)
        self.K, self.N, self.bits = K, N, lay.bits
        # int8-activation models use onnxruntime's own int8 path (level 4): the closest it has,
        # not bit-identical (its blocks quantize x * scale * (u - 2^(b-1)), ours x * u).
        self.acc = int(4 if m.act_bits == 8 else ACCURACY_LEVEL if accuracy_level is None else accuracy_level)
        if lay.bits not in (2, 4, 8):
            raise UserError(f"{lay.bits}-bit linears have no onnxruntime MatMulNBits mapping",
                            "export 2-, 4- or 8-bit quantized models to ONNX")
        if G > 1 and (g < 16 or g & (g - 1)):
            raise UserError(f"group size {g} (K={K}) cannot map to onnxruntime MatMulNBits",
                            "use a power-of-two group size >= 16 (w2g64, w4g32, ...)")
        # per channel (G == 1): MatMulNBits blocks of a power of two, the scale repeated (exact)
        self.block = g if G > 1 else (_pow2_block(K) if lay.bits == 8 else 16 if K % 16 else _pow2_block(K))
        nb = -(-K // self.block)
        blob = self.block * lay.bits // 8
        if G > 1:
            q = m.qweight.view(N, G, blob)  # our rows are already whole groups
        else:
            codes_bytes = nb * blob
            q = m.qweight
            if q.shape[1] < codes_bytes:
                q = torch.cat([q, torch.zeros(N, codes_bytes - q.shape[1], dtype=torch.uint8)], 1)
            q = q[:, :codes_bytes].reshape(N, nb, blob)
        self.register_buffer("B", q.contiguous())
        sc = m.scale.float()  # (N, G)
        self.register_buffer("scale", (sc if G > 1 else sc.expand(N, nb)).reshape(-1).contiguous())  # (N*nb)
        self.register_buffer("corr", m.zero.float() + float(1 << (lay.bits - 1)) * sc)  # (N, G)
        self.corr_group = g
        self.pad = G * g - K  # x is zero-padded to whole groups for the group sums
        self.bias = None if m.bias is None else m.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xg = torch.nn.functional.pad(x, (0, self.pad)) if self.pad else x
        y = torch.ops.edgekit.mnb(x, xg, self.B, self.scale, self.corr, self.K, self.N, self.bits, self.block,
                                  self.corr_group, self.acc)
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

    def mnb(x, xg, B, scale, corr, K: int, N: int, bits: int, block_size: int, corr_group: int,
            accuracy_level: int):
        y = matmul_nbits(x, B, scale, K=K, N=N, bits=bits, block_size=block_size,
                         accuracy_level=accuracy_level)
        shp = op.Concat(op.Slice(op.Shape(xg), op.Constant(value_ints=[0]), op.Constant(value_ints=[-1])),
                        op.Constant(value_ints=[-1, corr_group]), axis=0)
        xs = op.ReduceSum(op.Reshape(xg, shp), op.Constant(value_ints=[-1]), keepdims=0)  # (..., G)
        return op.Add(y, op.MatMul(xs, op.Transpose(corr, perm=[1, 0])))

    return {torch.ops.edgekit.mnb.default: mnb}


@contextmanager
def lowered_for_onnx(model: nn.Module, accuracy_level: int | None = None) -> Iterator[dict | None]:
    """Swap packed linears for MatMulNBits placeholders; yields the ``custom_translation_table``
    for ``torch.onnx.export`` (None when the model has no packed linears)."""
    if not packed_linears(model):
        yield None
        return
    with _swapped(model, lambda m: OnnxPackedLinear(m, accuracy_level)):
        yield _translation_table()
