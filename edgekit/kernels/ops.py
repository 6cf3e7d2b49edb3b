"""torch.library registration of edgekit's packed-weight operators, so models using them run
eagerly, export with torch.export, and lower to ExecuTorch custom ops that the native kernels
(edgekit/kernels/cpu/et_ops.cpp) implement.

Operators (layout: edgekit/quant/layout.py; ``group_size <= 0`` = one group per row)::

    edgekit::linear_w2(Tensor x, Tensor qweight, Tensor scale, Tensor zero,
                       int group_size, int in_features) -> Tensor
    edgekit::linear_w3 / linear_w4 / linear_w8(...same...)
    edgekit::linear_w{2,3,4,8}.out(..., *, Tensor(a!) out) -> Tensor(a!)
    edgekit::linear_w{2,3,4,8}a8(...same...)   int8 activations per group (QuantConfig.act_bits=8)
    edgekit::linear_w{2,4,8}a8_r16(..., int in_features, int out_features)
        the a8 linear on weights in the row-interleaved order (edgekit.quant.layout.interleave_r16),
        which is what ExecuTorch programs store: the CPU kernels' SIMD lanes are output rows
    edgekit::sdpa_cache(Tensor q, Tensor k_cache, Tensor v_cache, Tensor mask) -> Tensor
        attention over the static KV cache; the C++ op reads only the visible slots, so a
        decode step costs O(context) instead of O(max_seq_len) (kernels/cpu/attn.h)
    edgekit::sdpa_kv(Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache,
                     Tensor input_pos, Tensor mask) -> Tensor
        writes k (B, KV, T, hd) and v (B, T, KV, hd) into the caches at input_pos, then
        sdpa_cache: what the ExecuTorch programs call (3 ops fewer per layer)
    edgekit::qkv_attn(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache,
                      Tensor input_pos, Tensor mask, int n_heads) -> Tensor
        the fused q|k|v projection (B, T, (H + 2 KV) hd) in: RoPE on q and k, both cache writes
        and the attention (what a fused-projection program calls: 8 ops fewer per layer than
        rope, rope, sdpa_kv and their slices and views)
    edgekit::swiglu_gu(Tensor gate_up) -> Tensor     swiglu on the fused w1|w3 output (..., 2F)
    edgekit::rms_norm(Tensor x, Tensor weight, float eps) -> Tensor
    edgekit::rope(Tensor x, Tensor cos, Tensor sin) -> Tensor
        x (B, T, H, hd) -> (B, H, T, hd): half-split RoPE with full-width tables
    edgekit::swiglu(Tensor gate, Tensor up) -> Tensor       silu(gate) * up
        these three keep a quantized program's layers free of XNNPACK delegate calls, whose
        fixed cost (~5 us each) exceeded the work of a decode step's norms and activations
        (kernels/cpu/ew.h); references: edgekit.models.llama rms_norm, rope_heads, swiglu

``x`` float32 (..., K) with K = in_features, ``qweight`` uint8 (N, row_bytes), ``scale`` and
``zero`` float16 (N, G); returns float32 (..., N) = x @ W_hat^T. The eager implementation is the
reference (dequantize with the layout's torch unpacker, then matmul); the fake implementation
gives shapes for export. The ``a8`` ops quantize x to int8 per weight group and take exact
integer dot products (edgekit.quant.modules.linear_a8_reference; C++: ek_linear_wq_a8).
ExecuTorch's to_executorch() maps the functional op to its ``.out`` overload, which is the name
the C++ library registers.

To run such a program in the Python ExecuTorch runtime, load the C++ ops first::

    from edgekit.kernels.ops import load_et_kernels
    load_et_kernels()          # builds the native libraries on first use
    prog = executorch.runtime.Runtime.get().load_program("model.pte")

Example::

    import edgekit.kernels.ops  # registers the ops
    y = torch.ops.edgekit.linear_w2(x, qweight, scale, zero, 64, 576)
"""

from __future__ import annotations

import ctypes
import threading

import torch

from edgekit.models.llama import cached_attention, rms_norm, rope_heads, swiglu

_SCHEMA = ("(Tensor x, Tensor qweight, Tensor scale, Tensor zero, int group_size, "
           "int in_features")
BITS = {"linear_w2": 2, "linear_w3": 3, "linear_w4": 4, "linear_w8": 8,
        "linear_w2a8": 2, "linear_w3a8": 3, "linear_w4a8": 4, "linear_w8a8": 8}

_lib = torch.library.Library("edgekit", "FRAGMENT")


def _reference(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor,
               group_size: int, in_features: int, bits: int, a8: bool = False) -> torch.Tensor:
    from edgekit.quant.layout import Layout, dequantize
    from edgekit.quant.modules import linear_a8_reference

    lay = Layout(bits, group_size if group_size > 0 else None)
    if a8:
        return linear_a8_reference(x, qweight, scale, zero, lay, in_features)
    w = dequantize(qweight, scale, zero, lay, in_features)  # (N, K) float32
    return torch.matmul(x.to(torch.float32), w.t())


def _define(name: str, bits: int) -> None:
    _lib.define(f"{name}{_SCHEMA}) -> Tensor")
    _lib.define(f"{name}.out{_SCHEMA}, *, Tensor(a!) out) -> Tensor(a!)")
    a8 = name.endswith("a8")

    def functional(x, qweight, scale, zero, group_size, in_features):
        return _reference(x, qweight, scale, zero, group_size, in_features, bits, a8)

    def out_variant(x, qweight, scale, zero, group_size, in_features, *, out):
        y = _reference(x, qweight, scale, zero, group_size, in_features, bits, a8)
        out.resize_(y.shape)
        out.copy_(y)
        return out

    def fake(x, qweight, scale, zero, group_size, in_features):
        torch._check(x.shape[-1] == in_features, lambda: f"x last dim must be in_features {in_features}")
        return x.new_empty((*x.shape[:-1], qweight.shape[0]), dtype=torch.float32)

    _lib.impl(name, functional, "CompositeExplicitAutograd")
    _lib.impl(f"{name}.out", out_variant, "CompositeExplicitAutograd")
    torch.library.register_fake(f"edgekit::{name}", fake, lib=_lib)


for _name, _bits in BITS.items():
    _define(_name, _bits)


def _define_simple(name: str, schema: str, reference, fake, out_alias: str = "a") -> None:
    """A functional op and its ``.out`` variant, both computed by ``reference``; ``out_alias``
    names the out tensor's alias set (another letter when the schema already uses ``a``)."""
    _lib.define(f"{name}({schema}) -> Tensor")
    _lib.define(f"{name}.out({schema}, *, Tensor({out_alias}!) out) -> Tensor({out_alias}!)")

    def out_variant(*args, out):
        y = reference(*args)
        out.resize_(y.shape)
        out.copy_(y)
        return out

    _lib.impl(name, reference, "CompositeExplicitAutograd")
    _lib.impl(f"{name}.out", out_variant, "CompositeExplicitAutograd")
    torch.library.register_fake(f"edgekit::{name}", fake, lib=_lib)


# The a8 linears on weights in the row-interleaved r16 order (edgekit.quant.layout.interleave_r16),
# the order ExecuTorch programs store: the reference puts the rows back and runs the a8 reference.
R16_BITS = {"linear_w2a8_r16": 2, "linear_w4a8_r16": 4, "linear_w8a8_r16": 8}


def _r16_reference(bits: int):
    def reference(x, qweight, scale, zero, group_size, in_features, out_features):
        from edgekit.quant.layout import Layout, deinterleave_r16

        lay = Layout(bits, group_size if group_size > 0 else None)
        q, s, z = deinterleave_r16(qweight, scale, zero, lay, in_features, out_features)
        return _reference(x, q, s, z, group_size, in_features, bits, a8=True)

    return reference


def _r16_fake(x, qweight, scale, zero, group_size, in_features, out_features):
    torch._check(x.shape[-1] == in_features, lambda: f"x last dim must be in_features {in_features}")
    return x.new_empty((*x.shape[:-1], out_features), dtype=torch.float32)


for _name, _bits in R16_BITS.items():
    _define_simple(_name, _SCHEMA[1:] + ", int out_features", _r16_reference(_bits), _r16_fake)


# The eager model's attention is the op's reference; the C++ op matches it while reading only
# the visible slots.
sdpa_cache_reference = cached_attention


def _sdpa_fake(q, k_cache, v_cache, mask):
    return q.new_empty((q.shape[0], q.shape[2], q.shape[1] * q.shape[3]))


def sdpa_kv_reference(q, k, v, k_cache, v_cache, input_pos, mask):
    """``StaticKVCache.update`` then ``cached_attention``: the reference of ``edgekit::sdpa_kv``."""
    k_cache.index_copy_(2, input_pos, k)
    v_cache.index_copy_(2, input_pos, v.transpose(1, 2))
    return sdpa_cache_reference(q, k_cache, v_cache, mask)


_define_simple("sdpa_cache", "Tensor q, Tensor k_cache, Tensor v_cache, Tensor mask", sdpa_cache_reference,
               _sdpa_fake)
# The KV-cache writes and the attention in one op: k (B, KV, T, hd) as RoPE leaves it, v
# (B, T, KV, hd) as the projection leaves it; both caches are written in place at input_pos.
_define_simple("sdpa_kv", "Tensor q, Tensor k, Tensor v, Tensor(a!) k_cache, Tensor(b!) v_cache, "
               "Tensor input_pos, Tensor mask", sdpa_kv_reference,
               lambda q, k, v, k_cache, v_cache, input_pos, mask: _sdpa_fake(q, k_cache, v_cache, mask),
               out_alias="c")


def qkv_attn_reference(qkv, cos, sin, k_cache, v_cache, input_pos, mask, n_heads):
    """Split q|k|v, ``rope_heads`` on q and k, then ``sdpa_kv_reference``: the reference of
    ``edgekit::qkv_attn``."""
    B, T, _ = qkv.shape
    KV, hd = k_cache.shape[1], k_cache.shape[3]
    q, k, v = qkv.split([n_heads * hd, KV * hd, KV * hd], dim=-1)
    q = rope_heads(q.reshape(B, T, n_heads, hd), cos, sin)
    k = rope_heads(k.reshape(B, T, KV, hd), cos, sin)
    return sdpa_kv_reference(q, k, v.reshape(B, T, KV, hd), k_cache, v_cache, input_pos, mask)


def swiglu_gu_reference(gate_up):
    """``swiglu`` of the two halves of the last dim: the reference of ``edgekit::swiglu_gu``."""
    gate, up = gate_up.chunk(2, dim=-1)
    return swiglu(gate, up)


_define_simple("qkv_attn", "Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, "
               "Tensor input_pos, Tensor mask, int n_heads", qkv_attn_reference,
               lambda qkv, cos, sin, k_cache, v_cache, input_pos, mask, n_heads:
               qkv.new_empty((qkv.shape[0], qkv.shape[1], n_heads * k_cache.shape[3])),
               out_alias="c")
_define_simple("swiglu_gu", "Tensor gate_up", swiglu_gu_reference,
               lambda gu: gu.new_empty((*gu.shape[:-1], gu.shape[-1] // 2)))
_define_simple("rms_norm", "Tensor x, Tensor weight, float eps", rms_norm,
               lambda x, weight, eps: torch.empty_like(x))
_define_simple("rope", "Tensor x, Tensor cos, Tensor sin", rope_heads,
               lambda x, cos, sin: x.new_empty((x.shape[0], x.shape[2], x.shape[1], x.shape[3])))
_define_simple("swiglu", "Tensor gate, Tensor up", swiglu, lambda gate, up: torch.empty_like(gate))
ELEMENTWISE_OPS = ("rms_norm", "rope", "swiglu", "swiglu_gu")
ATTENTION_OPS = ("sdpa_cache", "sdpa_kv", "qkv_attn")

_et_loaded: ctypes.CDLL | None = None
_et_lock = threading.Lock()


def load_et_kernels() -> str:
    """Load libedgekit_kernels_et.so into this process so the ExecuTorch runtime (the
    executorch pybindings share the wheel's libexecutorch.so and its operator registry) can run
    programs containing ``edgekit::linear_w{2,3,4,8}[a8].out``. Idempotent; builds the
    native libraries on first use. Returns the library path.

    Raises NativeBuildError (edgekit.runtime.native) when the libraries cannot be built.
    """
    global _et_loaded
    from edgekit.runtime.native import kernels_et_lib_path

    with _et_lock:
        path = str(kernels_et_lib_path())
        if _et_loaded is None:
            # The runtime first, so the registry this library registers into is the one the
            # pybindings use (same libexecutorch.so, resolved by soname).
            import executorch.extension.pybindings.portable_lib  # noqa: F401

            _et_loaded = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            if _et_loaded.ek_et_ops_registered() != len(BITS) + len(R16_BITS) + len(ATTENTION_OPS) + len(ELEMENTWISE_OPS):
                raise RuntimeError("edgekit ExecuTorch ops did not register")
        return path
