"""SpecMemo: budget checks before allocation, KV sized per turn, chat reuse, same tokens."""

from __future__ import annotations

import pytest

from edgekit.runtime.memory import CHAINS, TREES

from edgekit.errors import BudgetError, UserError
from edgekit.models.load import load_model
from edgekit.runtime.engine import EagerBackend, Engine
from edgekit.runtime.memory import MIB, SpecMemo, model_weight_bytes
from edgekit.runtime.session import ChatSession
from edgekit.runtime.spec import SpecConfig


def _plain_chat(lm, turns, n):
    """Reference: plain greedy over the concatenated conversation, turn by turn."""
    eng = Engine(EagerBackend(lm.model), lm.tokenizer)
    hist, outs, pending = [], [], []
    for i, text in enumerate(turns):
        ids = pending + lm.tokenizer.encode(text, bos=i == 0)
        res = eng.generate(ids, n)
        outs.append(res.tokens)
        full = hist + ids + res.tokens
        hist, pending = full[: eng.pos], full[eng.pos:]
    return outs


@pytest.mark.parametrize("draft,spec", [("early-exit:4", None), ("early-exit:3", SpecConfig(k=3)),
                                        ("early-exit:4", SpecConfig(tree=(4, 16)))])
def test_chat_under_budget_matches_plain_greedy(stories_dir, draft, spec):
    turns = ["Once upon a time", " Lily went to the park.", " The end. One day"]
    want = _plain_chat(load_model(stories_dir), turns, 40)
    lm = load_model(stories_dir)
    w = model_weight_bytes(lm.model)
    s = ChatSession(lm=lm, budget_mb=(w + 2 * MIB) / MIB, draft=draft, spec=spec)
    got = [s.turn(t, 40).tokens for t in turns]
    assert got == want
    rows = [t.kv_rows for t in s.turns]
    assert rows == sorted(rows) and rows[0] < lm.args.max_seq_len  # grown per turn, not preallocated
    assert rows[0] % 64 == 0
    rep = s.report()
    assert rep["generation_bytes"] < 2 * MIB
    assert {"kv_cache", "activations"} <= set(rep["memory"])
    if spec is not None or s.turns[-1].spec != "none":  # a draft setting was in use: its tail is accounted
        assert "spec.candidate_tail" in rep["memory"]


def test_budget_too_small_for_plain_decoding_names_the_minimum(stories_dir):
    lm = load_model(stories_dir)
    with pytest.raises(BudgetError) as e:
        ChatSession(lm=lm, budget_mb=0.5, draft="early-exit:2")
    assert "--budget-mb" in e.value.hint
    need = int(e.value.hint.split("--budget-mb ")[1].split()[0])
    ChatSession(lm=load_model(stories_dir), budget_mb=need, draft="none")  # the named minimum works


def test_choice_is_smallest_within_96_percent(stories_dir):
    lm = load_model(stories_dir)
    # early exit at 2 of 5 layers (+ the head: ~0.47 of a target step) with 80% acceptance
    mm = SpecMemo.for_model(lm.model, 1 << 40, draft_kind="early-exit", exit_layer=2)
    for _ in range(200):  # target token is the draft's top-1 80% of the time
        mm.accept.observe(0)
    for r in [None] * 30 + [1] * 20:
        mm.accept.observe(r)
    choice = mm.choose(256)
    from edgekit.runtime.memory import CHAINS, TREES

    best = max(mm.predicted_tok_s(o) for o in CHAINS + TREES)
    assert mm.predicted_tok_s(choice) >= 0.96 * best
    cheaper = [o for o in CHAINS + TREES
               if mm.generation(256 + o.tokens_per_step, o) < mm.generation(256 + choice.tokens_per_step, choice)]
    assert all(mm.predicted_tok_s(o) < 0.96 * best for o in cheaper)
    # A budget that cannot hold the big trees' tails forces a smaller setting, still fitting.
    w = model_weight_bytes(lm.model)
    tight = SpecMemo.for_model(lm.model, w + mm.generation(256 + 2, SpecConfig(k=1)) + 1,
                               draft_kind="early-exit", exit_layer=2)
    for r in [0] * 200 + [None] * 30 + [1] * 20:
        tight.accept.observe(r)
    c2 = tight.choose(256)
    assert c2 is not None and tight.total(256 + c2.tokens_per_step, c2) <= tight.budget


def test_plain_decoding_when_no_draft_setting_pays(stories_dir):
    """An early exit at 4 of stories260K's 5 layers reads ~0.8 of a target step (its layers and
    the head): at stories260K's measured acceptance (~0.5) every chain and tree is predicted
    slower than plain decoding, so the manager decodes plainly."""
    lm = load_model(stories_dir)
    mm = SpecMemo.for_model(lm.model, 1 << 40, draft_kind="early-exit", exit_layer=4)
    for r in [0] * 50 + [None] * 50:
        mm.accept.observe(r)
    assert mm.choose(256) is None
    assert max(mm.predicted_tok_s(o) for o in CHAINS + TREES) <= mm.predicted_tok_s(None)


def test_chat_cli_matches_generate_and_reports_memory(stories_dir):
    import json

    from conftest import run_cli

    g = run_cli("generate", str(stories_dir), "-n", "40", "--json")
    c = run_cli("chat", str(stories_dir), "--turn", "Once upon a time", "--turn", " The next day",
                "--draft", "self-quant:w8", "--budget-mb", "4", "-n", "40", "--json")
    assert g.returncode == 0 and c.returncode == 0, c.stderr
    gj, cj = json.loads(g.stdout), json.loads(c.stdout)
    assert cj["turns"][0]["tokens"] == gj["tokens"]
    assert cj["turns"][0]["tau"] > 1.5  # a w8 self-draft agrees with the target most of the time
    assert cj["memory"]["kv_rows"] < 512 and "kv_cache" in cj["memory"]["memory"]


def test_chat_cli_budget_below_plain_decoding_exits_2(stories_dir):
    from conftest import run_cli

    r = run_cli("chat", str(stories_dir), "--turn", "hi", "--draft", "early-exit:2", "--budget-mb", "0.5")
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and "--budget-mb" in line and "Traceback" not in r.stderr


def test_measured_slower_speculation_falls_back_to_plain(stories_dir):
    """observe_speed: a speculative turn that produced fewer tokens per second than its own
    verification forwards alone would have (each >= a plain step) turns speculation off."""
    lm = load_model(stories_dir)
    mm = SpecMemo.for_model(lm.model, 1 << 40, draft_kind="early-exit", exit_layer=2)
    for r in [0] * 200 + [None] * 30 + [1] * 20:
        mm.accept.observe(r)
    assert mm.choose(256) is not None
    mm.observe_speed(new_tokens=4, decode_s=1.0, steps=3, verify_s=0.9)  # under 4 steps: too few to judge
    assert mm.choose(256) is not None
    mm.observe_speed(new_tokens=60, decode_s=1.0, steps=30, verify_s=0.5)  # 60 tok/s vs >= 60: keeps
    assert mm.spec_pays
    mm.observe_speed(new_tokens=30, decode_s=1.0, steps=25, verify_s=0.5)  # 30 vs >= 50: slower
    assert not mm.spec_pays and mm.choose(256) is None


def test_speed_guard_judges_only_after_its_window():
    from edgekit.runtime.spec import SpeedGuard

    g = SpeedGuard(window=4)
    assert not g.slower(10, 1, 10.0)  # no plain step timed yet: nothing to compare with
    g.observe_plain(0.30, steps=3)  # 0.1 s per plain step = 10 tok/s
    assert g.plain_step_s == pytest.approx(0.1)
    assert not g.slower(3, 3, 1.0)  # 3 tok/s, but only 3 rounds
    assert g.slower(4, 4, 1.0)  # 4 tok/s < 10
    assert not g.slower(4, 12, 1.0)  # 12 tok/s > 10


@pytest.mark.parametrize("plain_step_s,trips", [(1e-9, True), (1e9, False)])
def test_guard_switches_a_turn_to_plain_with_the_same_tokens(stories_dir, plain_step_s, trips):
    """A turn whose speculative rounds lose to the timed plain step finishes plainly (after the
    guard's window), and the greedy output is the plain one either way."""
    turns = ["Once upon a time", " Lily went to the park."]
    want = _plain_chat(load_model(stories_dir), turns, 40)
    lm = load_model(stories_dir)
    w = model_weight_bytes(lm.model)
    s = ChatSession(lm=lm, budget_mb=(w + 2 * MIB) / MIB, draft="early-exit:3", spec=SpecConfig(k=2), guard=True)
    s.memo.guard.plain = [plain_step_s]  # as if plain steps had been timed at this speed
    res = s.turn(turns[0], 40)
    assert s.memo.guard.tripped is trips
    if trips:
        assert res.steps == s.memo.guard.window + 1  # judged after `window` timed rounds (+1 warm-up)
        assert res.spec_tokens < len(res.tokens) - 1  # the rest came from plain steps
        assert f"plain after {s.memo.guard.window + 1} rounds" in s.turns[0].spec
        assert s.memo.spec_pays  # the next turn tries again (its own guard judges it)
    else:
        assert res.spec_tokens == len(res.tokens) - 1 - res.accepted[0]  # all but the first and the warm-up round
    got = [res.tokens, s.turn(turns[1], 40).tokens]
    assert got == want


def test_guard_probes_plain_steps_when_none_were_timed(stories_dir):
    lm = load_model(stories_dir)
    w = model_weight_bytes(lm.model)
    s = ChatSession(lm=lm, budget_mb=(w + 2 * MIB) / MIB, draft="early-exit:3", spec=SpecConfig(k=2), guard=True)
    s.memo.guard.window = 10 ** 6  # never trip: look at the probe only
    res = s.turn("Once upon a time", 30)
    assert len(s.memo.guard.plain) == s.memo.guard.probe  # two plain steps timed, then speculation
    assert res.spec_tokens == len(res.tokens) - 1 - s.memo.guard.probe - res.accepted[0]  # - the warm-up round


def test_lookup_draft_under_budget_matches_plain_and_holds_no_draft_memory(stories_dir):
    turns = ["Once upon a time", " Lily went to the park.", " The end. One day"]
    want = _plain_chat(load_model(stories_dir), turns, 40)
    lm = load_model(stories_dir)
    w = model_weight_bytes(lm.model)
    s = ChatSession(lm=lm, budget_mb=(w + 2 * MIB) / MIB, draft="lookup:2")
    assert [s.turn(t, 40).tokens for t in turns] == want
    rep = s.report()
    assert rep["memory"]["weights"] == w  # no draft weights
    assert "kv_cache.draft" not in rep["memory"]
    assert all("tree" not in t.spec for t in s.turns)  # chains only


def test_lookup_draft_refuses_trees(stories_dir):
    with pytest.raises(UserError, match="chains only"):
        ChatSession(lm=load_model(stories_dir), draft="lookup", spec=SpecConfig(tree=(2, 4)))
    with pytest.raises(UserError, match="bad draft") as e:
        ChatSession(lm=load_model(stories_dir), draft="lookup:x")
    assert "lookup:N" in e.value.hint
