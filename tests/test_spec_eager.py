"""Speculative decoding in the eager engine: greedy output is token-identical to plain greedy
decoding, and speculative sampling preserves the target distribution."""

from __future__ import annotations

import copy

import pytest
import torch

from edgekit.models.config import ModelArgs
from edgekit.models.llama import Transformer
from edgekit.models.load import load_model
from edgekit.runtime.engine import EagerBackend, Engine, SamplingConfig
from edgekit.runtime.spec import EarlyExitBackend, LookupDrafter, ModelDrafter, SpecConfig, SpecDecoder


def _plain(model, ids, n):
    return Engine(EagerBackend(model), stop_ids=[]).generate(ids, n).tokens


def _random_model(seed, vocab=64, layers=3, dim=48, scale=0.25):
    torch.manual_seed(seed)
    a = ModelArgs(dim=dim, n_layers=layers, n_heads=4, n_kv_heads=2, hidden_dim=96, vocab_size=vocab,
                  max_seq_len=256)
    m = Transformer(a).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.normal_(0, scale)
    return m


def _drafter(kind, target_model, target_engine):
    if kind.startswith("early-exit"):
        return ModelDrafter(EarlyExitBackend(target_model, int(kind.split(":")[1])), shared_with=target_engine)
    if kind == "separate":
        return ModelDrafter(EagerBackend(_random_model(7, vocab=target_model.args.vocab_size)))
    if kind == "self-copy":  # stands in for the quantized self-draft until a quantized copy is given
        return ModelDrafter(EagerBackend(copy.deepcopy(target_model)))
    if kind == "lookup":
        return LookupDrafter()
    raise ValueError(kind)


@pytest.mark.parametrize("drafter", ["early-exit:1", "early-exit:3", "self-copy"])
@pytest.mark.parametrize("spec", [SpecConfig(k=4), SpecConfig(k=1), SpecConfig(tree=(3, 12)),
                                  SpecConfig(tree=(10, 64))])
def test_stories260k_greedy_identical(stories_dir, drafter, spec):
    lm = load_model(stories_dir)
    ids = lm.tokenizer.encode("Once upon a time")
    want = _plain(lm.model, ids, 64)
    eng = Engine(EagerBackend(lm.model), stop_ids=[])
    res = SpecDecoder(eng, _drafter(drafter, lm.model, eng), spec).generate(ids, 64)
    assert res.tokens == want
    assert res.steps < 64  # speculation actually accepted something
    if drafter == "self-copy":
        assert res.tau > spec.tokens_per_step * 0.9 or spec.tree  # a perfect draft accepts all


@pytest.mark.parametrize("drafter", ["separate", "early-exit:2"])
@pytest.mark.parametrize("spec", [SpecConfig(k=3), SpecConfig(tree=(2, 9))])
def test_random_tiny_greedy_identical(drafter, spec):
    target = _random_model(1)
    ids = [1, 5, 9, 33, 2, 17]
    want = _plain(target, ids, 40)
    eng = Engine(EagerBackend(target), stop_ids=[])
    res = SpecDecoder(eng, _drafter(drafter, target, eng), spec).generate(ids, 40)
    assert res.tokens == want


def _target_joint(model, ctx, cfg):
    """Exact distribution of the next two tokens under the target (with temperature/top-p)."""
    from edgekit.runtime.engine import Sampler

    s = Sampler(cfg)
    with torch.no_grad():
        lg = model(torch.tensor([ctx]), torch.arange(len(ctx)))[0, -1]
        p1 = s.probs(lg)
        V = p1.numel()
        batch = torch.tensor([ctx + [t] for t in range(V)])
        joint = torch.zeros(V, V)
        for t in range(V):
            lg2 = model(batch[t:t + 1], torch.arange(len(ctx) + 1))[0, -1]
            joint[t] = p1[t] * s.probs(lg2)
    return joint


def _spec_joint_counts(target, draft, ctx, cfg, n, accept_all=False):
    """``draft``: a draft model, or "lookup" for the prompt-lookup drafter."""
    counts = torch.zeros(target.args.vocab_size, target.args.vocab_size)
    for seed in range(n):
        eng = Engine(EagerBackend(target), stop_ids=[])
        drafter = LookupDrafter() if draft == "lookup" else ModelDrafter(EagerBackend(draft))
        dec = SpecDecoder(eng, drafter, SpecConfig(k=3))
        if accept_all:  # a broken verifier that keeps every draft: the test must catch it
            dec._chain_step = _accept_all_step(dec)
        sc = SamplingConfig(cfg.temperature, cfg.top_p, seed)
        toks = dec.generate(list(ctx), 2, sc).tokens
        counts[toks[0], toks[1]] += 1
    return counts


def _accept_all_step(dec):
    def step(context, k, sampler, greedy):
        drafts, _ = dec.drafter.chain(context, k, sampler)
        logits = dec.target.step([context[-1]] + drafts)
        return drafts + [sampler(logits[len(drafts)])]  # every draft kept, plus the bonus token
    return step


def test_speculative_sampling_preserves_target_distribution():
    from scipy.stats import chisquare

    V = 8
    target = _random_model(3, vocab=V, layers=2, dim=32, scale=0.5)
    draft = _random_model(4, vocab=V, layers=1, dim=32, scale=0.5)
    ctx = [1, 2, 3]
    cfg = SamplingConfig(temperature=1.0, top_p=1.0)
    joint = _target_joint(target, ctx, cfg).flatten()
    n = 3000
    keep = joint * n >= 5  # chi-square needs expected counts >= 5; pool the rest
    exp = torch.cat([joint[keep] * n, (joint[~keep].sum() * n).reshape(1)])
    counts = _spec_joint_counts(target, draft, ctx, cfg, n).flatten()
    obs = torch.cat([counts[keep], counts[~keep].sum().reshape(1)])
    p_ok = chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue
    assert p_ok > 1e-3, p_ok
    # Power check: the same test rejects a verifier that accepts every draft.
    bad = _spec_joint_counts(target, draft, ctx, cfg, n, accept_all=True).flatten()
    obs_bad = torch.cat([bad[keep], bad[~keep].sum().reshape(1)])
    p_bad = chisquare(obs_bad.numpy(), exp.numpy() * obs_bad.sum().item() / exp.sum().item()).pvalue
    assert p_bad < 1e-6, p_bad


def test_lookup_draft_greedy_identical_and_accepting(stories_dir):
    """Prompt lookup on the real model: the same tokens as plain greedy, and some of its drafts
    are accepted (tau 1.08 here: this story repeats little within 96 tokens)."""
    lm = load_model(stories_dir)
    ids = lm.tokenizer.encode("Once upon a time")
    want = _plain(lm.model, ids, 96)
    eng = Engine(EagerBackend(lm.model), stop_ids=[])
    res = SpecDecoder(eng, LookupDrafter(), SpecConfig(k=4)).generate(ids, 96)
    assert res.tokens == want
    assert res.tau > 1.0 and res.steps < 95, res.tau


def test_lookup_draft_random_tiny_greedy_identical():
    target = _random_model(1)
    ids = [1, 5, 9, 33, 2, 17, 5, 9]
    want = _plain(target, ids, 40)
    eng = Engine(EagerBackend(target), stop_ids=[])
    assert SpecDecoder(eng, LookupDrafter(max_ngram=2), SpecConfig(k=3)).generate(ids, 40).tokens == want


def test_lookup_proposals():
    d = LookupDrafter(max_ngram=3)
    assert d.propose([5, 6, 7, 8, 5, 6, 7], 2) == [8, 5]  # the 3-gram (5, 6, 7) matched
    assert d.propose([1, 2, 9, 2], 3) == [9, 2]  # the 1-gram (2,), what followed it
    assert d.propose([1, 2, 3], 4) == []  # nothing repeats
    assert d.propose([4, 1, 4, 2, 4], 1) == [2]  # the latest earlier occurrence wins


def test_speculative_sampling_with_lookup_drafts_preserves_the_distribution():
    """A deterministic draft (a point mass) under rejection sampling: the output still follows
    the target. Every token occurs in the context, so lookup proposes a draft on every path."""
    from scipy.stats import chisquare

    V = 8
    target = _random_model(3, vocab=V, layers=2, dim=32, scale=0.5)
    ctx = [3, 1, 4, 1, 5, 2, 6, 0, 7, 2, 1]
    cfg = SamplingConfig(temperature=1.0, top_p=1.0)
    joint = _target_joint(target, ctx, cfg).flatten()
    n = 3000
    keep = joint * n >= 5
    exp = torch.cat([joint[keep] * n, (joint[~keep].sum() * n).reshape(1)])

    def pvalue(counts):
        obs = torch.cat([counts.flatten()[keep], counts.flatten()[~keep].sum().reshape(1)])
        return chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue

    assert pvalue(_spec_joint_counts(target, "lookup", ctx, cfg, n)) > 1e-3
    assert pvalue(_spec_joint_counts(target, "lookup", ctx, cfg, n, accept_all=True)) < 1e-6
