"""Quantized models exported: packed linears lower to edgekit::linear_w* (ExecuTorch) and
com.microsoft::MatMulNBits (ONNX); exported w2g64 packages reproduce the eager quantized model.

- the MatMulNBits mapping (2/4 bits: float zero points; 8 bits: offset correction) against the
  layout's dequantization, including a K that is not a multiple of the group and a zero scale;
- stories260K quantized to w2g64 by ``quantize_checkpoint`` (the ``edgekit quantize`` library
  call), exported from that checkpoint: 48 greedy tokens equal across eager, ExecuTorch
  (Python), the native runner and onnxruntime; the manifest records the quant config;
- a 2-layer SmolLM2-135M-shaped random model, quantized on the way (the builder's quant hook):
  logits within tolerance of eager in both programs;
- weight bytes of the programs within 5% of the layout's bits-per-weight arithmetic.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.quant.layout import Layout
from edgekit.quant.modules import PACKED_LINEAR

N_GREEDY = 48


def _onnx_single_linear(lin: torch.nn.Module, K: int, tmp: Path, accuracy_level: int):
    """Export ``lin`` alone through the ONNX lowering; returns an onnxruntime session."""
    import onnxruntime as ort

    from edgekit.export.quant_lower import lowered_for_onnx

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.lin = m

        def forward(self, x):
            return self.lin(x)

    w = Wrap(lin).eval()
    with lowered_for_onnx(w, accuracy_level) as table, torch.no_grad():
        assert table is not None
        prog = torch.onnx.export(w, (torch.randn(1, 3, K),), dynamo=True, custom_translation_table=table,
                                 dynamic_shapes=({1: torch.export.Dim("T", min=1, max=64)},),
                                 opset_version=18, optimize=True, verbose=False)
    path = tmp / "lin.onnx"
    prog.save(str(path))
    import onnx

    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "MatMulNBits" in ops, ops
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("acc", [0, 4])
@pytest.mark.parametrize("bits,N,K,group", [(2, 48, 172, 64), (4, 40, 128, 32), (8, 24, 100, None),
                                            (2, 32, 576, 64), (4, 16, 96, None)])
def test_matmul_nbits_mapping_matches_layout(tmp_path, bits, N, K, group, acc):
    torch.manual_seed(bits * 1000 + K)
    lay = Layout(bits, group)
    G = lay.n_groups(K)
    codes = torch.randint(0, 2 ** bits, (N, K))
    scale = torch.rand(N, G) * 0.05 + 0.005
    zero = torch.randn(N, G) * 0.1
    scale[0, 0] = 0.0  # a constant group
    m = PACKED_LINEAR[bits].from_codes(codes, scale, zero, group, bias=torch.randn(N))
    x = torch.randn(1, 5, K)
    ref = m(x)  # eager: layout dequantization, then F.linear
    sess = _onnx_single_linear(m, K, tmp_path, acc)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    err = np.abs(got - ref.numpy()).max() / max(1.0, float(ref.abs().max()))
    # level 0: fp32 rounding and summation order only; level 4: int8 activations (per block).
    # A mapping error (bit order, zero point, offset) would be ~ one quantization step: > 5e-2.
    assert err < (2e-5 if acc == 0 else 2e-2), err


def test_executorch_lowering_uses_custom_op():
    from edgekit.export.quant_lower import ETPackedLinear, lowered_for_executorch

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = PACKED_LINEAR[2].from_float(torch.nn.Linear(128, 64), group_size=64)
            self.b = PACKED_LINEAR[8].from_float(torch.nn.Linear(64, 32), group_size=None)

        def forward(self, x):
            return self.b(self.a(x))

    m = M()
    x = torch.randn(2, 128)
    ref = m(x)
    with lowered_for_executorch(m) as info:
        assert isinstance(m.a, ETPackedLinear) and isinstance(m.b, ETPackedLinear)
        assert info["ops"] == {"edgekit::linear_w2": 1, "edgekit::linear_w8": 1}
        ep = torch.export.export(m, (x,))
        targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
        assert {"edgekit.linear_w2.default", "edgekit.linear_w8.default"} <= targets, targets
        torch.testing.assert_close(m(x), ref, atol=1e-5, rtol=1e-5)
    assert not isinstance(m.a, ETPackedLinear)  # restored


def _expected_weight_bytes(model: torch.nn.Module) -> dict[str, float]:
    """Bits-per-weight arithmetic: packed linears at Layout.bits_per_weight, float parts at 4 B."""
    from edgekit.quant.modules import _PackedLinear

    packed = floats = onnx_meta = 0.0
    seen = set()
    for _, mod in model.named_modules():
        if isinstance(mod, _PackedLinear):
            K, N = mod.in_features, mod.out_features
            packed += mod.layout.bits_per_weight(K) * K * N / 8
            onnx_meta += 4 * N * mod.layout.n_groups(K)  # MatMulNBits: fp32 scale + zp, not fp16
    for _, p in model.named_parameters():
        if id(p) not in seen:
            seen.add(id(p))
            floats += p.numel() * 4
    return {"packed": packed, "float": floats, "onnx_extra": onnx_meta}


def _onnx_weight_bytes(pkg: Path) -> int:
    """Initializer bytes of the ONNX program, RoPE tables excluded."""
    import onnx
    from onnx import helper

    proto = onnx.load(str(pkg / "model.onnx"), load_external_data=False)
    total = 0
    for t in proto.graph.initializer:
        if "rope" in t.name:
            continue
        n = int(np.prod(t.dims)) if t.dims else 1
        total += n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


@pytest.fixture(scope="module")
def stories_w2(stories_dir, tmp_path_factory):
    """stories260K -> quantize_checkpoint(w2g64, rtn) -> export both formats from the checkpoint."""
    from edgekit.export.builder import export_package
    from edgekit.quant.run import quantize_checkpoint

    d = tmp_path_factory.mktemp("qexport")
    res = quantize_checkpoint(stories_dir, "w2g64", d / "ckpt", method="rtn")
    man = export_package(str(d / "ckpt"), d / "pkg", formats="both", max_seq_len=128, max_chunk=32)
    return d, res, man


def test_stories_w2g64_package_greedy_matches_eager(stories_w2):
    from edgekit.models.load import load_model
    from edgekit.runtime.engine import EagerBackend, Engine
    from edgekit.runtime.native import generate_native
    from edgekit.runtime.package import load_package

    d, res, man = stories_w2
    assert man["quantization"] == res["config"] and man["quantization"]["preset"] == "w2g64"
    # attention goes to edgekit's cache-reading op once the program needs edgekit's kernels
    assert man["programs"]["executorch"]["custom_ops"] == ["edgekit::linear_w2", "edgekit::qkv_attn",
                                                           "edgekit::rms_norm", "edgekit::swiglu_gu"]
    # wq/wk/wv and w1/w3 run as one stacked call each: 4 calls per layer instead of 7, + attention
    assert man["programs"]["executorch"]["fused_linear_groups"] == 2 * 5
    # + per layer 2 norms and SwiGLU (RoPE is inside the attention op); + the final norm
    assert man["programs"]["executorch"]["custom_op_calls"] == (4 + 1 + 2 + 1) * 5 + 1
    assert man["programs"]["onnx"]["custom_ops"] == ["com.microsoft::MatMulNBits"]
    assert man["programs"]["onnx"]["matmul_nbits"] == 5 * 7  # every block linear; tied head stays float
    lm = load_model(d / "ckpt", max_seq_len=128)
    ids = lm.tokenizer.encode("Once upon a time")
    eager = Engine(EagerBackend(lm.model, max_chunk=32), None, stop_ids=[]).generate(ids, N_GREEDY).tokens
    assert len(eager) == N_GREEDY
    pkg = load_package(d / "pkg")
    for kind in ("executorch", "onnx"):
        got = Engine(pkg.backend(kind, threads=2), None, stop_ids=[]).generate(ids, N_GREEDY).tokens
        assert got == eager, kind
    nat = generate_native(d / "pkg" / "model.pte", ids, N_GREEDY, stop_ids=[], threads=2)
    assert nat["tokens"][:N_GREEDY] == eager, nat["tokens"]


def test_stories_w2g64_weight_bytes_match_bits_per_weight(stories_w2):
    from edgekit.models.load import load_model

    d, _, man = stories_w2
    lm = load_model(d / "ckpt", max_seq_len=128)
    exp = _expected_weight_bytes(lm.model)
    want = exp["packed"] + exp["float"]
    assert abs(man["weight_bytes"] - want) <= 0.05 * want, (man["weight_bytes"], want)
    # The ONNX file stores the same packed codes with fp32 scale and zero point (MatMulNBits'
    # input types: 3.0 instead of 2.5 bits per weight at g64) plus the tied table once.
    onnx_b = _onnx_weight_bytes(d / "pkg")
    want_onnx = want + exp["onnx_extra"]
    assert abs(onnx_b - want_onnx) <= 0.05 * want_onnx, (onnx_b, want_onnx)
    # The .pte stores the packed codes (uint8) and fp16 scale/zero as constants, untouched.
    pte = _pte_constant_bytes(d / "pkg" / "model.pte")
    assert abs(pte["uint8"] + pte["float16"] - exp["packed"]) <= 0.05 * exp["packed"], (pte, exp)


def _pte_constant_bytes(path: Path) -> dict[str, int]:
    """Bytes of the constant tensors of a .pte's forward plan, by dtype."""
    import math

    from executorch.exir._serialize._program import deserialize_pte_binary

    p = deserialize_pte_binary(path.read_bytes())
    prog = getattr(p, "program", p)
    names = {0: ("uint8", 1), 5: ("float16", 2), 6: ("float32", 4), 4: ("int64", 8)}
    out: dict[str, int] = {}
    plan = next(p for p in prog.execution_plan if p.name == "forward")
    for v in plan.values:
        t = v.val
        if type(t).__name__ == "Tensor" and t.data_buffer_idx > 0:
            name, size = names.get(int(t.scalar_type), (str(t.scalar_type), 0))
            out[name] = out.get(name, 0) + math.prod(t.sizes) * size
    return out


def test_smollm2_shaped_w2g64_logits_close(tmp_path):
    """2 of SmolLM2-135M's 30 layers (full width, vocab and head), quantized on the way."""
    from edgekit.export.builder import export_package
    from edgekit.models.config import SHAPES
    from edgekit.models.llama import Transformer
    from edgekit.models.load import LoadedModel, Source
    from edgekit.models.tokenizer import Llama2cTokenizer
    from edgekit.quant import preset_config, quantize_
    from edgekit.runtime.engine import EagerBackend
    from edgekit.runtime.package import load_package
    from edgekit.export.verify import program_logits

    args = dataclasses.replace(SHAPES["smollm2-135m"], n_layers=2, max_seq_len=64)
    torch.manual_seed(0)
    model = Transformer(args)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02)
    V = args.vocab_size
    pieces = [b"<unk>", b"<s>", b"</s>"] + [bytes([c]) for c in range(32, 127)]
    pieces += [f"t{i}".encode() for i in range(V - len(pieces))]
    lm = LoadedModel(model.eval(), Llama2cTokenizer(pieces, [0.0] * V), args, Source("random", "random", []))
    cfg = preset_config("w2g64", method="rtn", head_bits=4, head_group_size=32)

    def hook(m):
        quantize_(m, cfg)
        return cfg.to_dict()

    man = export_package(lm, tmp_path / "pkg", formats="both", max_chunk=16, quant=hook)
    assert man["quantization"]["bits"] == 2 and man["quantization"]["head_bits"] == 4
    assert man["programs"]["executorch"]["custom_ops"] == ["edgekit::linear_w2", "edgekit::linear_w4",
                                                           "edgekit::qkv_attn", "edgekit::rms_norm",
                                                           "edgekit::swiglu_gu"]
    ids = torch.randint(3, V, (20,), generator=torch.Generator().manual_seed(1)).tolist()
    ref = program_logits(EagerBackend(lm.model, max_chunk=16), ids)
    pkg = load_package(tmp_path / "pkg")
    for kind in ("executorch", "onnx"):
        got = program_logits(pkg.backend(kind, threads=2), ids)
        d = float((got - ref).abs().max())
        assert d < 1e-3 * max(1.0, float(ref.abs().max())), (kind, d)
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.95, kind


def test_cli_export_quant_calibrated(stories_dir, tinystories_text, tmp_path):
    """``edgekit export --quant w2g64 --method gptq --calib FILE``: quantized on the way, the
    manifest records the config, the ONNX program uses MatMulNBits and verified."""
    import json

    from conftest import run_cli

    calib = tmp_path / "calib.txt"
    calib.write_text(tinystories_text[:200_000])
    p = run_cli("export", str(stories_dir), "--quant", "w2g64", "--method", "gptq", "--calib", str(calib),
                "--format", "onnx", "--max-seq-len", "64", "--out", str(tmp_path / "pkg"), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    m = json.loads(p.stdout)
    assert m["quantization"]["method"] == "gptq" and m["quantization"]["preset"] == "w2g64"
    assert m["programs"]["onnx"]["matmul_nbits"] == 35


def test_cli_export_method_needs_calib_and_preset(tmp_path):
    from conftest import run_cli

    for args in (["--quant", "w2g64", "--method", "decoupleq"], ["--method", "gptq"]):
        p = run_cli("export", "--out", str(tmp_path / "x"), *args)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert not (tmp_path / "x").exists()
