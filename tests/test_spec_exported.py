"""Speculative decoding on exported packages: early-exit draft programs, draft packages, the
native runner's chain mode, and the run/bench CLI under a memory budget.

Greedy speculative output must be token-identical to plain greedy decoding of the same target
program. One stories260K target (ExecuTorch + ONNX, max_seq_len 128, early-exit draft of 4 of
its 5 layers) and one w8 draft package are exported once for the module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from edgekit.errors import BudgetError, PackageError, UserError
from edgekit.runtime.package import load_package
from edgekit.runtime.session import ChatSession
from edgekit.runtime.spec import SpecConfig

from conftest import run_cli

PROMPT = "Once upon a time"
N = 48
EXIT = 4  # stories260K has 5 layers; 4 gives tau ~2 with k=4 (2 layers gives ~1.0)


@pytest.fixture(scope="module")
def pkgs(stories_dir, tmp_path_factory):
    from edgekit.export.builder import export_package

    root = tmp_path_factory.mktemp("spec_exported")
    target = root / "target"
    export_package(stories_dir, target, formats="both", max_seq_len=128, draft_exit=EXIT)
    draft = root / "draft_w8"
    try:
        from edgekit.plan.apply import export_settings

        quant = export_settings(None, max_seq_len=128, quant="w8").quant
        export_package(stories_dir, draft, formats="both", max_seq_len=128, quant=quant)
    except (UserError, ImportError):  # no quantized export in this build: the float package drafts
        draft = target
    return target, draft


@pytest.fixture(scope="module")
def plain(pkgs):
    """Plain greedy tokens of the target per backend (the reference)."""
    pkg = load_package(pkgs[0])
    ids = pkg.tokenizer.encode(PROMPT)
    return {be: pkg.engine(be).generate(ids, N).tokens for be in ("executorch", "onnx")}


def test_draft_program_listed_checked_and_equal_to_early_exit(pkgs, stories_dir, tmp_path):
    from edgekit.models.load import load_model
    from edgekit.runtime.backends import ExecuTorchBackend

    target = pkgs[0]
    m = json.loads((target / "manifest.json").read_text())
    d = m["drafts"][f"early-exit:{EXIT}"]
    assert d["file"] == f"draft_ee{EXIT}.pte" and d["file"] in m["files"]
    assert d["sha256"] == m["files"][d["file"]]["sha256"] and d["size"] == m["files"][d["file"]]["size"]
    assert "duplicated" in d["note"]
    assert 0 < d["weight_bytes"] < m["weight_bytes"]
    assert f"draft_ee{EXIT}/model.onnx" in m["files"]
    be = ExecuTorchBackend(target / d["file"])
    assert be.n_layers == EXIT and be.max_seq_len == m["max_seq_len"]
    lm = load_model(stories_dir, max_seq_len=128)
    ids = lm.tokenizer.encode(PROMPT)
    want = lm.model(torch.tensor([ids]), torch.arange(len(ids)), n_layers=EXIT)[0]
    assert torch.allclose(be.forward(ids, 0), want, atol=1e-3)
    # verify / load_package check the draft's checksum like any other file
    bad = tmp_path / "bad"
    shutil.copytree(target, bad)
    raw = bytearray((bad / d["file"]).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (bad / d["file"]).write_bytes(bytes(raw))
    with pytest.raises(PackageError, match="draft_ee"):
        load_package(bad)


def test_verify_checks_draft_programs_against_their_eager_model(pkgs, tmp_path):
    """The draft programs (ExecuTorch and ONNX) are checked like the target, against the golden
    outputs of the early-exit eager model stored with the draft; a wrong golden fails."""
    from edgekit.export.verify import verify_package

    target = pkgs[0]
    rep = verify_package(target)
    rows = [r for r in rep["rows"] if f"early-exit:{EXIT}" in r["target"]]
    assert {r["target"] for r in rows} == {f"executorch early-exit:{EXIT}", f"onnx early-exit:{EXIT}"}
    assert {r["check"] for r in rows} >= {"argmax", "top5", "greedy"}
    assert rep["ok"] and all(r["ok"] for r in rows)
    bad = tmp_path / "bad_golden"
    shutil.copytree(target, bad)
    m = json.loads((bad / "manifest.json").read_text())
    g = m["drafts"][f"early-exit:{EXIT}"]["golden"]
    g["top5_values"] = [v + 0.5 for v in g["top5_values"]]  # as if the draft program computed other logits
    (bad / "manifest.json").write_text(json.dumps(m))
    rep = verify_package(bad)
    assert not rep["ok"]
    assert [r["target"] for r in rep["rows"] if not r["ok"]] == [f"executorch early-exit:{EXIT}",
                                                                   f"onnx early-exit:{EXIT}"]


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_early_exit_program_matches_plain_greedy(pkgs, plain, backend):
    s = ChatSession(package=load_package(pkgs[0]), draft=f"early-exit:{EXIT}", spec=SpecConfig(k=4), backend=backend)
    r = s.turn(PROMPT, N)
    assert r.tokens == plain[backend]
    assert r.tau > 1.5
    mem = s.report()["memory"]
    assert mem["kv_cache.draft"] > 0  # the program's own K-layer cache is accounted
    assert mem["weights"] > load_package(pkgs[0]).weight_bytes()  # ... and its duplicated weights


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_lookup_draft_on_a_package_matches_plain_greedy(pkgs, plain, backend):
    """The prompt-lookup draft needs no program of its own: any package target verifies it."""
    s = ChatSession(package=load_package(pkgs[0]), draft="lookup", spec=SpecConfig(k=4), backend=backend)
    r = s.turn(PROMPT, N)
    assert r.tokens == plain[backend]
    assert sum(r.accepted) > r.steps  # some lookup drafts were accepted
    assert s.report()["memory"]["weights"] == load_package(pkgs[0]).weight_bytes()  # no draft weights


def test_package_without_the_draft_says_how_to_export_it(pkgs):
    with pytest.raises(UserError) as e:
        ChatSession(package=load_package(pkgs[0]), draft="early-exit:2")
    assert "--draft-exit 2" in e.value.hint


@pytest.mark.parametrize("backend", ["executorch", "onnx"])
def test_draft_package_matches_plain_greedy(pkgs, plain, backend):
    target, draft = pkgs
    s = ChatSession(package=load_package(target), draft=str(draft), spec=SpecConfig(k=4), backend=backend)
    r = s.turn(PROMPT, N)
    assert r.tokens == plain[backend]
    assert r.tau > 2.0  # a w8 copy (or the model itself) agrees almost always


def test_native_speculative_matches_python(pkgs, plain):
    from edgekit.runtime.native import generate_native

    target, draft = pkgs
    pkg = load_package(target)
    ids = pkg.tokenizer.encode(PROMPT)
    stop = pkg.tokenizer.eos_ids
    base = generate_native(pkg.program_path("executorch"), ids, N, stop)
    assert base["tokens"] == plain["executorch"]
    ee = generate_native(pkg.program_path("executorch"), ids, N, stop, draft_pte=pkg.draft_path(f"early-exit:{EXIT}"),
                         draft_k=4)
    assert ee["tokens"] == plain["executorch"]
    assert ee["tau"] > 1.5 and ee["steps"] > 0 and ee["draft_ms"] > 0 and ee["verify_ms"] > 0
    # same acceptance as the Python engine with the same draft program and k
    s = ChatSession(package=pkg, draft=f"early-exit:{EXIT}", spec=SpecConfig(k=4), backend="executorch")
    assert abs(s.turn(PROMPT, N).tau - ee["tau"]) < 1e-3
    sep = generate_native(pkg.program_path("executorch"), ids, N, stop,
                          draft_pte=load_package(draft).program_path("executorch"), draft_k=3)
    assert sep["tokens"] == plain["executorch"] and sep["tau"] > 2.0
    with pytest.raises(UserError, match="max_chunk"):
        generate_native(pkg.program_path("executorch"), ids, 4, stop, draft_pte=pkg.draft_path(f"early-exit:{EXIT}"),
                        draft_k=pkg.manifest["max_chunk"])


def test_cli_run_with_draft_and_budget(pkgs, plain):
    target = pkgs[0]
    for extra in ([], ["--native"]):
        p = run_cli("run", str(target), "--draft", f"early-exit:{EXIT}", "--budget-mb", "8", "--draft-k", "4",
                    "-n", str(N), "--json", *extra)
        assert p.returncode == 0, p.stderr
        d = json.loads(p.stdout)
        assert d["tokens"] == plain["executorch"]
        assert d["tau"] > 1.5 and d["spec"] == "chain k=4"
        mem = d["memory"]
        assert mem["budget_bytes"] == 8 << 20
        assert {"kv_cache", "kv_cache.draft", "spec.candidate_tail", "weights"} <= set(mem["memory"])
        assert sum(mem["memory"].values()) <= 8 << 20


def test_cli_budget_too_small_exits_2_with_the_minimum(pkgs):
    target = pkgs[0]
    p = run_cli("run", str(target), "--draft", f"early-exit:{EXIT}", "--budget-mb", "1", "-n", "4", "--json")
    assert p.returncode == 2
    assert "--budget-mb" in p.stderr
    need = int(p.stderr.split("--budget-mb ")[1].split()[0])
    assert need > 1
    ok = run_cli("run", str(target), "--draft", f"early-exit:{EXIT}", "--budget-mb", str(need), "-n", "4", "--json")
    assert ok.returncode == 0, ok.stderr
    with pytest.raises(BudgetError):
        ChatSession(package=load_package(target), draft=f"early-exit:{EXIT}", budget_mb=need - 1)


def test_bench_spec_reports_tau_speed_and_memory(pkgs):
    from edgekit.runtime.bench import bench_spec

    r = bench_spec(pkgs[0], f"early-exit:{EXIT}", budget_mb=8, gen_len=24, reps=1, draft_k=4)
    assert r["tau"]["median"] > 1.5
    assert r["decode_tok_s"]["median"] > 0 and r["plain_decode_tok_s"]["median"] > 0
    assert all(x["same_tokens"] for x in r["runs"])
    assert r["memory"]["generation_bytes"] > 0 and "kv_cache.draft" in r["memory"]["memory"]
    assert r["peak_rss_mib"] > 0 and "generation_rss_mib" in r


@pytest.fixture(scope="module")
def tree_pkg(stories_dir, tmp_path_factory):
    from edgekit.export.builder import export_package

    out = tmp_path_factory.mktemp("spec_tree") / "target"
    export_package(stories_dir, out, formats="executorch", max_seq_len=128, draft_exit=EXIT, tree_verify=True)
    return out


def test_tree_verification_in_the_exported_program(tree_pkg, pkgs):
    pkg = load_package(tree_pkg)
    m = pkg.manifest
    assert m["programs"]["executorch"]["tree_methods"]["shared_kv"] is True
    ids = pkg.tokenizer.encode(PROMPT)
    want = pkg.engine("executorch").generate(ids, N).tokens
    s = ChatSession(package=pkg, draft=f"early-exit:{EXIT}", spec=SpecConfig(tree=(4, 16)), backend="executorch")
    r = s.turn(PROMPT, N)
    assert r.tokens == want
    assert r.tau > 1.5
    # SpecMemo may pick trees for this package (T <= max_chunk); output unchanged
    s2 = ChatSession(package=pkg, draft=f"early-exit:{EXIT}", budget_mb=8, backend="executorch")
    assert s2.turn(PROMPT, N).tokens == want
    # the native runner (chains) runs the multi-method programs' forward unchanged
    from edgekit.runtime.native import generate_native

    nat = generate_native(pkg.program_path("executorch"), ids, N, pkg.tokenizer.eos_ids,
                          draft_pte=pkg.draft_path(f"early-exit:{EXIT}"), draft_k=4)
    assert nat["tokens"] == want
    with pytest.raises(UserError) as e:  # a program without the methods says how to get them
        ChatSession(package=load_package(pkgs[0]), draft=f"early-exit:{EXIT}", spec=SpecConfig(tree=(4, 16)))
    assert "--tree-verify" in e.value.hint


def test_tree_verification_quantized_program_with_qkv_attn(stories_dir, tmp_path):
    """A w2g64 program with tree methods: its attention writes the shared KV cache inside
    edgekit::qkv_attn (forward and verify_tree alike, tree positions through RoPE's tables), and tree speculation, chain speculation in
    the native runner and plain decoding still give the same tokens."""
    from edgekit.export.builder import export_package
    from edgekit.plan.apply import export_settings
    from edgekit.runtime.native import generate_native

    quant = export_settings(None, max_seq_len=128, quant="w2g64").quant
    man = export_package(stories_dir, tmp_path / "pkg", formats="executorch", max_seq_len=128, draft_exit=EXIT,
                         tree_verify=True, quant=quant)
    prog = man["programs"]["executorch"]
    assert "edgekit::qkv_attn" in prog["custom_ops"] and prog["tree_methods"]["shared_kv"] is True
    pkg = load_package(tmp_path / "pkg")
    ids = pkg.tokenizer.encode(PROMPT)
    want = pkg.engine("executorch").generate(ids, N).tokens
    r = ChatSession(package=pkg, draft=f"early-exit:{EXIT}", spec=SpecConfig(tree=(4, 16)),
                    backend="executorch").turn(PROMPT, N)
    assert r.tokens == want and r.tau > 1.0
    nat = generate_native(pkg.program_path("executorch"), ids, N, pkg.tokenizer.eos_ids,
                          draft_pte=pkg.draft_path(f"early-exit:{EXIT}"), draft_k=4)
    assert nat["tokens"] == want
