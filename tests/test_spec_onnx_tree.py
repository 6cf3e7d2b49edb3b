"""Tree verification through onnxruntime: ``edgekit export --tree-verify`` gives the ONNX graph
an ``attention_mask`` input (edgekit/export/onnx.py) and ``OnnxBackend`` verifies token trees.

Greedy tree speculation must be token-identical to plain greedy decoding of the same ONNX target.
stories260K (5 layers, max_seq_len 128) with an early-exit draft of 4 layers is exported three
times for the module: float with --tree-verify, float without it, w2g64 with it (via the CLI);
each takes seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgekit.errors import UserError
from edgekit.runtime.package import load_package
from edgekit.runtime.session import ChatSession
from edgekit.runtime.spec import SpecConfig

from conftest import run_cli

PROMPT = "Once upon a time"
N = 48
EXIT = 4  # early exit after 4 of 5 layers: tau ~2-3 on stories260K
SEQ = 128


def _export(stories_dir, out, **kw):
    from edgekit.export.builder import export_package

    export_package(stories_dir, out, formats="onnx", max_seq_len=SEQ, draft_exit=EXIT, **kw)
    return out


@pytest.fixture(scope="module")
def tree_pkg(stories_dir, tmp_path_factory):
    return _export(stories_dir, tmp_path_factory.mktemp("onnx_tree") / "target", tree_verify=True)


@pytest.fixture(scope="module")
def chain_pkg(stories_dir, tmp_path_factory):
    return _export(stories_dir, tmp_path_factory.mktemp("onnx_chain") / "target")


def _plain(pkg, prompts: list[str]) -> list[list[int]]:
    """Plain greedy tokens of the package's ONNX target, turn by turn (KV kept across turns)."""
    s = ChatSession(package=pkg, backend="onnx")
    return [s.turn(p, N).tokens for p in prompts]


@pytest.mark.parametrize("tree", [(4, 16), (2, 6)])
def test_tree_speculation_matches_plain_greedy(tree_pkg, tree):
    pkg = load_package(tree_pkg)
    prompts = [PROMPT, " The next day"]
    want = _plain(pkg, prompts)
    s = ChatSession(package=pkg, draft=f"early-exit:{EXIT}", spec=SpecConfig(tree=tree), backend="onnx")
    assert s.engine.backend.supports_tree and s.drafter.backend.supports_tree
    got = [s.turn(p, N) for p in prompts]  # the second turn reuses the first turn's compacted KV
    assert [r.tokens for r in got] == want
    assert all(len(t) == N for t in want)
    assert got[0].tau > 1.5 and got[0].steps < N  # trees were really accepted, several tokens per step
    assert s.turns[0].spec == f"tree {tree[0]}x{tree[1]}"
    # the same tokens as the eager reference model (the golden continuation recorded at export)
    g = pkg.manifest["golden"]["greedy_ids"]
    assert want[0][:len(g)] == g


def test_manifest_and_graph_record_the_tree_input(tree_pkg, chain_pkg):
    import onnxruntime as ort

    m = load_package(tree_pkg).manifest
    for prog in (m["programs"]["onnx"], m["drafts"][f"early-exit:{EXIT}"]["programs"]["onnx"]):
        assert prog["inputs"]["attention_mask"] == "bool [T, past_len + T]"
        assert prog["tree_inputs"]["attention_mask"].startswith("bool [T, past_len + T]")
        assert "start + depth" in prog["tree_inputs"]["position_ids"]
        assert prog["input_names"][:3] == ["input_ids", "position_ids", "attention_mask"]
        sess = ort.InferenceSession(str(tree_pkg / prog["file"]), providers=["CPUExecutionProvider"])
        mask = {i.name: i for i in sess.get_inputs()}["attention_mask"]
        assert mask.type == "tensor(bool)" and mask.shape == ["T", "past_len + T"]
    # the package verified its tree path against its own chain
    from edgekit.export.verify import verify_package

    rows = {r["check"]: r for r in verify_package(tree_pkg)["rows"] if r["target"] == "onnx"}
    assert rows["tree"]["ok"] and rows["tree-compact"]["ok"] and rows["tree"]["max_abs_diff"] < 1e-4
    # without --tree-verify the plain contract is unchanged: no mask input, no tree entry, no tree check
    plain = load_package(chain_pkg).manifest["programs"]["onnx"]
    assert "attention_mask" not in plain["inputs"] and "tree_inputs" not in plain
    assert plain["input_names"][:3] == ["input_ids", "position_ids", "past_key_values.0.key"]
    assert not any(r["check"].startswith("tree") for r in verify_package(chain_pkg)["rows"])


def test_forward_tree_matches_eager_and_compact_drops_rejected_rows(tree_pkg, stories_dir):
    from edgekit.models.load import load_model
    from edgekit.runtime.engine import EagerBackend

    be = load_package(tree_pkg).backend("onnx")
    lm = load_model(stories_dir, max_seq_len=SEQ)
    ref = EagerBackend(lm.model)
    ids = lm.tokenizer.encode(PROMPT)
    start = len(ids) - 1
    assert torch.allclose(be.forward(ids[:-1], 0), ref.forward(ids[:-1], 0), atol=1e-4)  # causal mask fed
    parents = [-1, 0, 0, 1, 1, 2, 4, 6]
    tokens = [ids[-1], 40, 41, 42, 43, 44, 45, 46]
    got = be.forward_tree(tokens, start, parents)
    want = ref.forward_tree(tokens, start, parents)
    assert got.shape == (len(tokens), lm.args.vocab_size)
    assert torch.allclose(got, want, atol=1e-4)
    assert torch.allclose(be.forward_tree(tokens, start, parents, rows=[2, 5]), want[[2, 5]], atol=1e-4)
    assert be.forward_tree(tokens, start, parents, argmax_only=True).tolist() == want.argmax(-1).tolist()
    old = be.past[0][0]
    assert old.shape[2] == start + len(tokens)
    path = [0, 1, 4, 6]
    be.compact(start, path)
    ref.compact(start, path)
    k = be.past[0][0]
    # only the prefix and the accepted path are held, in fresh arrays (no view of the tree rows)
    assert be.past_len == start + len(path) and k.shape[2] == start + len(path)
    assert not np.shares_memory(k, old)
    assert np.array_equal(k[:, :, start:], old[:, :, [start + p for p in path]])
    assert torch.allclose(be.forward([47], start + len(path)), ref.forward([47], start + len(path)), atol=1e-4)


def test_verify_tree_check_fails_on_a_wrong_mask(tree_pkg, monkeypatch):
    """The package check must catch a tree that is verified as a chain (every node seeing the ones
    before it instead of its ancestors)."""
    import edgekit.runtime.spec as spec
    from edgekit.export.verify import check_tree

    pkg = load_package(tree_pkg)
    monkeypatch.setattr(spec, "tree_visibility", lambda parents: torch.ones(len(parents), len(parents)).tril().bool())
    rows = check_tree(pkg.backend("onnx"), pkg.manifest["golden"], "onnx")
    assert [r["check"] for r in rows] == ["tree", "tree-compact"]
    assert not rows[0]["ok"] and rows[0]["max_abs_diff"] > 1e-2


def test_non_tree_onnx_package_refuses_tree(chain_pkg):
    pkg = load_package(chain_pkg)
    with pytest.raises(UserError) as e:
        ChatSession(package=pkg, draft=f"early-exit:{EXIT}", spec=SpecConfig(tree=(4, 16)), backend="onnx")
    assert "--tree-verify" in e.value.hint
    be = pkg.backend("onnx")
    assert be.supports_tree is False
    with pytest.raises(UserError, match="attention_mask"):
        be.forward_tree([1, 2], 0, [-1, 0])
    p = run_cli("run", str(chain_pkg), "--backend", "onnx", "--draft", f"early-exit:{EXIT}", "--tree", "4,16",
                "-n", "8")
    assert p.returncode == 2 and "Traceback" not in p.stderr  # a user mistake: one line, exit 2
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "cannot verify trees" in last and "hint: re-export with " \
        "`edgekit export --tree-verify`" in last


def test_quantized_w2g64_tree_export_through_the_cli(stories_dir, tmp_path):
    out = tmp_path / "w2"
    p = run_cli("export", str(stories_dir), "--out", str(out), "--format", "onnx", "--quant", "w2g64",
                "--max-seq-len", str(SEQ), "--draft-exit", str(EXIT), "--tree-verify", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads(p.stdout)
    onnx = m["programs"]["onnx"]
    assert onnx["matmul_nbits"] > 0 and "tree_inputs" in onnx
    assert m["drafts"][f"early-exit:{EXIT}"]["programs"]["onnx"]["matmul_nbits"] > 0
    want = _plain(load_package(out), [PROMPT])[0]
    r = run_cli("run", str(out), "--backend", "onnx", "--draft", f"early-exit:{EXIT}", "--tree", "4,16",
                "-n", str(N), "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    d = json.loads(r.stdout)
    assert d["backend"] == "onnx" and d["spec"] == "tree 4x16"
    assert d["tokens"] == want and d["tau"] > 1.2
