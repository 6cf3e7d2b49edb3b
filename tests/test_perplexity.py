"""The perplexity helper on real weights and text."""

from __future__ import annotations

from edgekit.eval import perplexity
from edgekit.models.load import load_model
from edgekit.runtime import EagerBackend


def test_stories260k_tinystories_ppl(stories_dir, tinystories_text):
    lm = load_model(stories_dir)
    r = perplexity(EagerBackend(lm.model, max_chunk=256), lm.tokenizer, tinystories_text, max_tokens=20000)
    assert r.tokens == 20000
    assert 3.5 < r.ppl < 4.4, r.ppl  # DATA.md: about 3.9 on this text


def test_ppl_of_a_random_model_is_near_vocab_size(hf_llama):
    import torch

    lm = load_model(hf_llama)
    with torch.no_grad():
        for p in lm.model.parameters():
            p.mul_(0.01)  # near-uniform predictions
    r = perplexity(EagerBackend(lm.model), lm.tokenizer, "once upon a time there was a fox " * 30)
    assert abs(r.ppl - lm.args.vocab_size) / lm.args.vocab_size < 0.1
