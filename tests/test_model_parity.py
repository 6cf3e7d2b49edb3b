"""edgekit's reference model against transformers' Llama and Qwen2 on random tiny checkpoints."""

from __future__ import annotations

import pytest
import torch

from edgekit.models.load import load_model

TOL = 1e-4


def _hf_logits(path, ids):
    import transformers

    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return ref(torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("fixture", ["hf_llama", "hf_qwen2"])
def test_logits_match_transformers(fixture, request):
    path = request.getfixturevalue(fixture)
    lm = load_model(path)
    assert lm.args.arch == ("qwen2" if fixture == "hf_qwen2" else "llama")
    ids = [1, 17, 42, 99, 5, 250, 7, 3, 11, 64, 128, 200]
    want = _hf_logits(path, ids)
    assert want.abs().max() > 1.0  # logits carry signal, so the tolerance means something
    m = lm.model
    with torch.no_grad():
        # Prefill of the first 5 tokens in one call.
        got = m(torch.tensor([ids[:5]]), torch.arange(5))[0]
        assert (got - want[:5]).abs().max() <= TOL
        # Token-by-token decode through the static KV cache.
        for p in range(5, 8):
            got = m(torch.tensor([[ids[p]]]), torch.tensor([p]))[0]
            assert (got - want[p:p + 1]).abs().max() <= TOL, f"decode at position {p}"
        # A T=4 multi-token step at a non-zero position (speculative verification shape).
        got = m(torch.tensor([ids[8:12]]), torch.arange(8, 12))[0]
        assert (got - want[8:12]).abs().max() <= TOL


def test_rollback_by_position_overwrites_stale_rows(hf_llama):
    """Rejected candidates leave rows in the cache; a later step at an earlier position must
    give the same logits as if they had never been written."""
    lm = load_model(hf_llama)
    m = lm.model
    ids = [1, 5, 9, 13, 17, 21]
    with torch.no_grad():
        clean = m(torch.tensor([ids]), torch.arange(6))[0]
        m(torch.tensor([[7, 7, 7]]), torch.arange(3, 6))  # junk candidates at 3..5
        again = m(torch.tensor([ids[3:]]), torch.arange(3, 6))[0]
    assert torch.allclose(clean[3:], again, atol=1e-5)


def test_interleaved_and_half_rope_are_equivalent_under_permutation():
    """The same weights in Meta (interleaved) layout and HF (half-split) layout, with wq/wk rows
    permuted as HF's conversion script does, give identical logits."""
    from edgekit.models.config import ModelArgs
    from edgekit.models.llama import Transformer

    torch.manual_seed(0)
    a = ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2, hidden_dim=48, vocab_size=50,
                  max_seq_len=16, rope_interleaved=True)
    meta = Transformer(a).eval()
    b = ModelArgs(**{**a.to_dict(), "rope_interleaved": False})
    hf = Transformer(b).eval()
    sd = meta.state_dict()

    def permute(w, n_heads):
        hd = w.shape[0] // n_heads
        return w.view(n_heads, hd // 2, 2, -1).transpose(1, 2).reshape(w.shape)

    sd["layers.0.attention.wq.weight"] = permute(sd["layers.0.attention.wq.weight"], 4)
    sd["layers.0.attention.wk.weight"] = permute(sd["layers.0.attention.wk.weight"], 2)
    hf.load_state_dict(sd, strict=False)
    toks = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.allclose(meta(toks, torch.arange(5)), hf(toks, torch.arange(5)), atol=1e-5)
