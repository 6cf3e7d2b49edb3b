"""edgekit::qkv_attn and edgekit::swiglu_gu (the ops a quantized program calls on its fused q|k|v
and w1|w3 projections) in the ExecuTorch runtime, against their torch references and against
the unfused ops they replace (rope, rope, sdpa_kv; swiglu), including the cache state a prefill
leaves for the next decode step, and a bad cache position and an odd head dim refused by the C++ op.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

H, KV, HD, S, F = 6, 2, 16, 12, 40
W = (H + 2 * KV) * HD


class _Fused(nn.Module):
    """Both attention paths on their own caches, and both SwiGLU forms, in one program."""

    def __init__(self) -> None:
        super().__init__()
        for name in ("kf", "vf", "ku", "vu"):
            self.register_buffer(name, torch.zeros(1, KV, S, HD))

    def forward(self, qkv, cos, sin, input_pos, mask, gate_up):
        ops = torch.ops.edgekit
        fused = ops.qkv_attn(qkv, cos, sin, self.kf, self.vf, input_pos, mask, H)
        q, k, v = qkv.split([H * HD, KV * HD, KV * HD], dim=-1)
        q, k = ops.rope(q.reshape(1, -1, H, HD), cos, sin), ops.rope(k.reshape(1, -1, KV, HD), cos, sin)
        unfused = ops.sdpa_kv(q, k, v.reshape(1, -1, KV, HD), self.ku, self.vu, input_pos, mask)
        gate, up = gate_up.split([F, F], dim=-1)
        return fused, unfused, ops.swiglu_gu(gate_up), ops.swiglu(gate, up)


def _inputs(T: int, start: int, seed: int, hd: int = HD):
    g = torch.Generator().manual_seed(seed)
    ang = torch.rand(T, hd - hd // 2, generator=g) * 6
    cos, sin = torch.cat([ang.cos()] * 2, -1)[:, :hd], torch.cat([ang.sin()] * 2, -1)[:, :hd]
    pos = torch.arange(start, start + T)
    mask = torch.where(torch.arange(S)[None, :] <= pos[:, None], 0.0, float("-inf"))
    return (torch.randn(1, T, (H + 2 * KV) * hd, generator=g), cos, sin, pos, mask,
            torch.randn(1, T, 2 * F, generator=g) * 3)


class _QkvOnly(nn.Module):
    """qkv_attn alone: a refusal can only come from its own checks."""

    def __init__(self, hd: int = HD) -> None:
        super().__init__()
        self.hd = hd
        self.register_buffer("k", torch.zeros(1, KV, S, hd))
        self.register_buffer("v", torch.zeros(1, KV, S, hd))

    def forward(self, qkv, cos, sin, input_pos, mask, gate_up):
        return torch.ops.edgekit.qkv_attn(qkv, cos, sin, self.k, self.v, input_pos, mask, H), gate_up


def _load(module: nn.Module, path, hd: int = HD):
    import edgekit.kernels.ops as kops
    from executorch.exir import EdgeCompileConfig, to_edge
    from executorch.runtime import Runtime

    T = torch.export.Dim("T", min=1, max=4)
    dyn = ({1: T}, {0: T}, {0: T}, {0: T}, {0: T}, {1: T})
    ep = torch.export.export(module, _inputs(3, 0, 0, hd), dynamic_shapes=dyn)
    et = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    path.write_bytes(et.buffer)
    kops.load_et_kernels()
    return Runtime.get().load_program(str(path)).load_method("forward")


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return _load(_Fused(), tmp_path_factory.mktemp("fused") / "fused.pte")


def test_fused_ops_match_references_and_unfused_ops_across_prefill_and_decode(program):
    import edgekit.kernels.ops  # noqa: F401

    ref = _Fused()
    # prefill 3 tokens, then decode 1 and 1: each step reads the cache the earlier ones wrote
    for T, start, seed in ((3, 0, 1), (1, 3, 2), (1, 4, 3)):
        args = _inputs(T, start, seed)
        got = program.execute(list(args))
        with torch.no_grad():
            want = ref(*args)
        assert got[0].shape == (1, T, H * HD) and got[2].shape == (1, T, F)
        for g, w in zip(got, want):
            assert torch.allclose(g, w, rtol=1e-5, atol=1e-5), (g - w).abs().max()
        assert torch.equal(got[0], got[1])  # the same kernels, in one call or four
        assert torch.equal(got[2], got[3])
    # the references' caches hold the five RoPE'd k rows and v rows, the rest still zeros
    assert torch.equal(ref.kf, ref.ku) and torch.equal(ref.vf, ref.vu)
    assert ref.kf[:, :, :5].abs().sum() > 0 and not ref.kf[:, :, 5:].any()


def test_qkv_attn_refuses_a_position_outside_the_cache(tmp_path):
    import edgekit.kernels.ops  # noqa: F401

    method = _load(_QkvOnly(), tmp_path / "qkv.pte")
    args = list(_inputs(1, S - 1, 4))
    assert method.execute(args)[0].shape == (1, 1, H * HD)  # the last slot is fine
    args[3] = torch.tensor([S])  # one past the last slot
    with pytest.raises(RuntimeError):
        method.execute(args)


def test_qkv_attn_refuses_an_odd_head_dim(tmp_path):
    """Half-split RoPE needs an even head dim: the op refuses an odd one (it used to skip RoPE and
    attend anyway) instead of returning wrong numbers."""
    import edgekit.kernels.ops  # noqa: F401

    method = _load(_QkvOnly(hd=15), tmp_path / "odd.pte", hd=15)
    with pytest.raises(RuntimeError):
        method.execute(list(_inputs(1, 0, 5, hd=15)))
