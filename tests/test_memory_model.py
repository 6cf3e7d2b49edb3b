"""The memory model against hand-computed values, term by term."""

from __future__ import annotations

import pytest

from edgekit.models.config import SHAPES, ModelArgs
from edgekit.plan.memory import (GIB, MIB, PROCESS_BASELINE, VARIANT_SHAPES, Draft, ModelShape, RuntimeSpec,
                                 WeightFormat, decode_weight_read_bytes, estimate_memory, kv_cache_bytes,
                                 matrix_bytes, measure_process_baseline, weight_bytes, weight_terms)
from edgekit.plan.presets import PRESETS
from edgekit.quant.layout import Layout

L2 = ModelShape.from_args(SHAPES["llama-2-7b"], "llama-2-7b")
L32 = ModelShape.from_args(SHAPES["llama-3.2-1b"], "llama-3.2-1b")
SMOL = ModelShape.from_args(SHAPES["smollm2-135m"], "smollm2-135m")
FP16 = WeightFormat.from_preset("fp16")


def test_shapes_count_the_same_parameters_as_model_args():
    for name, args in SHAPES.items():
        assert ModelShape.from_args(args, name).n_params() == sum(args.n_params().values()), name
    assert L2.n_params() == 6_738_415_616


def test_llama2_7b_fp16_weights_and_kv():
    m = estimate_memory(L2, FP16, context=4096, kv_bytes=2, runtime=None)
    assert m.weights == 2 * 6_738_415_616  # every parameter, 2 bytes
    assert m.weights / GIB == pytest.approx(12.55, abs=0.01)
    assert m.terms["kv_cache"] == 2 * GIB  # 2 * 32 layers * 4096 * 2 B * 4096 positions, exactly
    assert m.generation == m.total - m.weights


def test_gqa_kv_cache():
    # Llama-3.2-1B: 8 KV heads of 64 -> d_kv 512; 16 layers; 8192 positions fp16.
    assert kv_cache_bytes(L32, 8192, 2) == 2 * 16 * 512 * 2 * 8192 == 256 * MIB
    assert kv_cache_bytes(L32, 8192, 4, batch=3) == 3 * 512 * MIB


def test_grouped_weights_by_hand():
    # W2 g64 stores 2 bits + (fp16 scale + fp16 offset) per 64 weights = 0.3125 bytes/weight.
    fmt = WeightFormat.from_preset("w2g64", float_bytes=2)
    t = weight_terms(L2, fmt)
    linear_params = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    assert t["weights.linear"] == linear_params * 5 // 16 == 2_023_751_680
    assert t["weights.embedding"] == 32000 * 4096 * 2  # unquantized fp16 embedding
    assert t["weights.lm_head"] == 32000 * 4096 * 5 // 16  # quantized LM head
    assert t["weights.norm"] == (32 * 2 * 4096 + 4096) * 2
    assert weight_bytes(L2, fmt) == 2_327_388_160


@pytest.mark.parametrize("name,bpw", [("w2g64", 2.5), ("w2g128", 2.25), ("w3g64", 3.5), ("w4g32", 5.0),
                                      ("w4g128", 4.25), ("fp16", 16), ("fp32", 32)])
def test_preset_bits_per_weight(name, bpw):
    assert PRESETS[name].bits_per_weight(4096) == bpw


def test_matrix_bytes_is_the_packed_layout():
    for p in PRESETS.values():
        if not p.is_float:
            for n, k in [(4096, 4096), (576, 1536), (100, 70)]:  # 70: padded last group
                assert matrix_bytes(n, k, p.bits, p.group_size) == Layout(p.bits, p.group_size).bytes_for(n, k)
    assert matrix_bytes(10, 64, 4, 64, scale_bytes=4, offset_bytes=0) == 10 * (32 + 4)  # other metadata


def test_lm_head_options_for_tied_models():
    # SmolLM2 ties its head: fp32 stores the embedding once; a quantized head is an extra copy.
    fp32 = weight_terms(SMOL, WeightFormat.from_preset("fp32"))
    assert "weights.lm_head" not in fp32 and sum(fp32.values()) == SMOL.n_params() * 4
    q = weight_terms(SMOL, WeightFormat.from_preset("w4g32", float_bytes=4, lm_head="quantized"))
    assert q["weights.lm_head"] == matrix_bytes(49152, 576, 4, 32)
    f = weight_terms(SMOL, WeightFormat.from_preset("w4g32", float_bytes=4, lm_head="float"))
    assert "weights.lm_head" not in f
    e = weight_terms(SMOL, WeightFormat(bits=4, group_size=32, float_bytes=4, embedding_bits=4))
    assert e["weights.embedding"] == matrix_bytes(49152, 576, 4, 32)


def test_speculative_terms():
    fmt = FP16
    base = estimate_memory(L32, fmt, context=2048, runtime=None)
    V, d, L = 128256, 2048, 16

    ee = estimate_memory(L32, fmt, context=2048, runtime=None, draft=Draft("early-exit", length=4, exit_layer=4))
    assert ee.terms["weights.draft"] == 0 and "kv_cache.draft" not in ee.terms  # shares the target's layers
    T = 5
    assert ee.terms["spec.candidate_tail"] == 2 * L * 512 * 2 * T
    assert ee.terms["logits.verify"] == T * V * 4
    assert ee.terms["logits.draft"] == V * 4
    assert "spec.tree_mask" not in ee.terms

    sq = estimate_memory(L32, fmt, context=2048, runtime=None, draft=Draft("self-quant", length=3, bits=4))
    w4 = WeightFormat(bits=4, group_size=32, float_bytes=2)
    assert sq.terms["weights.draft"] == weight_terms(L32, w4)["weights.linear"] + matrix_bytes(V, d, 4, 32)
    assert sq.terms["kv_cache.draft"] == kv_cache_bytes(L32, 2048 + 3, 2)

    md = estimate_memory(L32, fmt, context=2048, runtime=None,
                         draft=Draft("medusa", length=3, heads=3, tree_size=16))
    assert md.terms["weights.draft"] == 3 * (d * d * 2 + d * 2 + V * d * 2)  # K (d^2 + d + dV), fp16
    assert md.terms["spec.tree_mask"] == 16 * 16
    assert md.terms["logits.verify"] == 16 * V * 4 * (1 + 3)

    dm = ModelShape.from_args(ModelArgs(dim=512, n_layers=4, n_heads=8, n_kv_heads=2, hidden_dim=1024,
                                        vocab_size=V, max_seq_len=8192), "tiny-draft")
    mm = estimate_memory(L32, fmt, context=2048, runtime=None, draft=Draft("model", length=4, shape=dm))
    assert mm.terms["weights.draft"] == weight_bytes(dm, fmt)
    assert mm.terms["kv_cache.draft"] == kv_cache_bytes(dm, 2048 + 4, 2)

    samp = estimate_memory(L32, fmt, context=2048, runtime=None, sampling=True,
                           draft=Draft("early-exit", length=4, exit_layer=4))
    assert samp.terms["logits.softmax_fp32"] == T * V * 4 and samp.terms["logits.draft"] == 4 * V * 4
    for m in (ee, sq, md, mm):
        assert m.weights >= base.weights and m.generation > base.generation - 1


def test_bad_drafts_are_user_errors():
    from edgekit.errors import UserError

    with pytest.raises(UserError, match="early exit at layer 16"):
        estimate_memory(L32, FP16, context=64, draft=Draft("early-exit", length=2, exit_layer=16))
    other = ModelShape.from_args(SHAPES["smollm2-135m"], "smollm2-135m")
    with pytest.raises(UserError, match="vocabulary"):
        estimate_memory(L32, FP16, context=64, draft=Draft("model", length=2, shape=other))
    with pytest.raises(UserError, match="context"):
        estimate_memory(L32, FP16, context=0)


def test_encoder_decoder_cross_attention_cache():
    ed = VARIANT_SHAPES["encdec-330m"]
    assert ed.n_params() == pytest.approx(330e6, rel=0.02)  # the released 330M model
    m = estimate_memory(ed, FP16, context=1024, encoder_len=768, runtime=None)
    kv = 10 * 2 * (3 * 64) * 2  # L_dec * 2 * d_kv * b per position
    assert m.terms["kv_cache"] == kv * 256 and m.terms["kv_cache.cross"] == kv * 768
    # papers.md sec. 4: L_dec * 2 * d_kv * (S_in + S_out), a third of a 30-layer decoder-only model.
    assert m.terms["kv_cache"] + m.terms["kv_cache.cross"] == kv * 1024
    dec_only = ed.replace(n_layers=30, n_encoder_layers=0)
    assert kv_cache_bytes(dec_only, 1024, 2) == 3 * kv * 1024


def test_blockffn_router_and_sparse_reads():
    bf = VARIANT_SHAPES["blockffn-small"]
    t = weight_terms(bf, FP16)
    assert t["weights.router"] == 16 * 48 * (768 + 1) * 2
    dense = decode_weight_read_bytes(bf, FP16, active_fraction=1.0)
    sparse = decode_weight_read_bytes(bf, FP16)
    ffn = 16 * 2 * 768 * 3072 * 2
    assert dense - sparse == pytest.approx(ffn * 0.805, rel=1e-6)  # TLS 80.5% of the FFN skipped
    # Memory keeps every expert resident: sparsity changes speed, not weights.
    assert weight_bytes(bf, FP16) == weight_bytes(bf.replace(active_fraction=1.0), FP16)


def test_runtime_terms():
    m = estimate_memory(SMOL, WeightFormat.from_preset("fp32"), context=512, kv_bytes=4)
    assert m.terms["runtime.process"] == PROCESS_BASELINE[("python", "executorch")][0]
    assert "measured" in m.notes["runtime.process"]
    assert m.terms["runtime.embedding_copy"] == 49152 * 576 * 4
    assert m.terms["runtime.tied_head_copy"] == 49152 * 576 * 4  # exported as its own delegated copy
    native = estimate_memory(SMOL, WeightFormat.from_preset("fp32"), context=512, kv_bytes=4,
                             runtime=RuntimeSpec(runtime="native"))
    assert native.total < m.total - 300 * MIB
    gpu = estimate_memory(SMOL, FP16, context=512, runtime=RuntimeSpec(engine="torch", backend="cuda", gpu_pool=True))
    assert "runtime.process" not in gpu.terms and gpu.terms["runtime.gpu_context"] > 0
    cal = estimate_memory(SMOL, FP16, context=512, runtime=RuntimeSpec(base_bytes=123, engine="torch"))
    assert cal.terms["runtime.process"] == 123


def test_measure_process_baseline():
    assert measure_process_baseline("json") > 4 * MIB


@pytest.mark.parametrize("kw,measured_mib", [
    (dict(dim=512, n_layers=8, n_heads=8, n_kv_heads=4, hidden_dim=1376, vocab_size=32000), 648.1),
    (dict(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=688, vocab_size=128000), 739.3),
    (dict(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=688, vocab_size=128000,
          tie_embeddings=True), 739.4),
    (dict(dim=1024, n_layers=8, n_heads=16, n_kv_heads=4, hidden_dim=2816, vocab_size=4000), 764.0),
])
def test_xnnpack_calibration_points(kw, measured_mib):
    """Peak RSS measured on the dev machine (executorch 1.5.1 Python runtime, fp32 XNNPACK .pte of
    these shapes, max_seq_len 512, one 4-token forward): the model must stay within 3%."""
    shape = ModelShape.from_args(ModelArgs(max_seq_len=512, **kw), "cal")
    m = estimate_memory(shape, WeightFormat.from_preset("fp32"), context=512, kv_bytes=4, prefill_chunk=4)
    assert m.total / MIB == pytest.approx(measured_mib, rel=0.03)
