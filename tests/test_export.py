"""Export: manifest contents, the cross-implementation golden test, logits parity of the exported
programs against the eager model, --force / refusal, and atomicity under a killed export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from _export_pkgs import STORIES_SEQ, stories_package, tiny_package
from conftest import ROOT, run_cli

TOL = 1e-3  # fp32 exported vs eager, max abs logits diff


def test_manifest_describes_the_package(stories_dir):
    from edgekit.export.package import sha256_file

    pkg = stories_package(stories_dir)
    m = json.loads((pkg / "manifest.json").read_text())
    assert m["schema_version"] == 1 and m["quantization"] is None
    assert m["max_seq_len"] == STORIES_SEQ and m["max_chunk"] == 32
    assert m["architecture"] == "llama2c" and m["config"]["n_layers"] == 5
    assert m["tokenizer"] == {"kind": "llama2c", "file": "tokenizer.bin", "bos_id": 1, "eos_ids": [2],
                              "vocab_size": 512}
    assert set(m["programs"]) == {"executorch", "onnx"}
    assert set(m["files"]) == {"model.pte", "model.onnx", "model.onnx.data", "tokenizer.bin"}
    for name, info in m["files"].items():
        assert info["size"] == (pkg / name).stat().st_size
        assert info["sha256"] == sha256_file(pkg / name)
    et = m["programs"]["executorch"]
    assert 0 < et["delegated_nodes"] < et["total_nodes"]
    assert et["dynamic_T"] == [1, 32] and "get_edgekit_abi" in et["methods"]
    assert len(m["source"]["sha256"]) == 64
    g = m["golden"]
    assert g["prompt_ids"][0] == 1 and len(g["greedy_ids"]) == 16 and len(g["top5_ids"]) == 5
    assert g["argmax"][-1] == g["top5_ids"][0] == g["greedy_ids"][0]
    for stage in ("load", "transform", "export[executorch]", "lower[executorch]", "serialize[executorch]",
                  "export[onnx]", "verify"):
        assert stage in m["build"]["stage_seconds"]


def test_pte_constant_methods(stories_dir):
    from executorch.runtime import Runtime

    prog = Runtime.get().load_program(stories_package(stories_dir) / "model.pte")
    got = {n: int(prog.load_method(n).execute([])[0]) for n in
           ("get_max_seq_len", "get_max_chunk", "get_vocab_size", "get_n_layers", "get_edgekit_abi",
            "get_bos_id", "get_eos_id")}
    assert got == {"get_max_seq_len": 128, "get_max_chunk": 32, "get_vocab_size": 512, "get_n_layers": 5,
                   "get_edgekit_abi": 1, "get_bos_id": 1, "get_eos_id": 2}


def test_golden_greedy_48_tokens_eager_executorch_onnx(stories_dir):
    """llama2.c-style cross-implementation test: the same 48 greedy tokens everywhere."""
    from edgekit.models.load import load_model
    from edgekit.runtime.engine import EagerBackend, Engine
    from edgekit.runtime.package import load_package

    lm = load_model(stories_dir, max_seq_len=STORIES_SEQ)
    ids = lm.tokenizer.encode("Once upon a time")
    want = Engine(EagerBackend(lm.model), None, stop_ids=[]).generate(ids, 48).tokens
    assert lm.tokenizer.decode(want).startswith(", there was a little girl named Lily")
    pkg = load_package(stories_package(stories_dir))
    for kind in ("executorch", "onnx"):
        got = Engine(pkg.backend(kind), None, stop_ids=[]).generate(ids, 48).tokens
        assert got == want, kind


def _parity(pkg_dir, ckpt):
    from edgekit.models.load import load_model
    from edgekit.runtime.package import load_package

    lm = load_model(ckpt, max_seq_len=64)
    ids = [1, 17, 42, 99, 5, 250, 7, 3, 11, 64, 128, 200]
    with torch.no_grad():
        want = lm.model(torch.tensor([ids]), torch.arange(len(ids)))[0]
    assert want.abs().max() > 1.0  # logits carry signal
    pkg = load_package(pkg_dir)
    for kind in ("executorch", "onnx"):
        be = pkg.backend(kind)
        pre = be.forward(ids[:5], 0)  # prefill, T=5
        assert (pre - want[:5]).abs().max() <= TOL, f"{kind} prefill"
        one = be.forward(ids[5:6], 5)  # T=1 decode
        assert (one - want[5:6]).abs().max() <= TOL, f"{kind} decode"
        step = be.forward(ids[6:10], 6)  # T=4 at a non-zero position (verification shape)
        assert (step - want[6:10]).abs().max() <= TOL, f"{kind} multi-token step"


def test_parity_tiny_llama(hf_llama):
    out = tiny_package("llama", hf_llama)
    assert not (out / "junk.txt").exists()  # --force replaced the old directory
    _parity(out, hf_llama)


def test_parity_tiny_qwen2(hf_qwen2):
    out = tiny_package("qwen2", hf_qwen2)
    m = json.loads((out / "manifest.json").read_text())
    assert m["tokenizer"]["kind"] == "hf" and m["config"]["qkv_bias"] is True
    _parity(out, hf_qwen2)


def test_existing_out_is_refused_without_force(tmp_path, stories_dir):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    p = run_cli("export", str(stories_dir), "--out", str(out))
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "already exists" in lines[0] and "--force" in lines[0]
    assert (out / "keep.txt").read_text() == "mine"


def test_bad_format_and_chunk_are_user_errors(tmp_path, stories_dir):
    p = run_cli("export", str(stories_dir), "--out", str(tmp_path / "a"), "--format", "tflite")
    assert p.returncode == 2 and "unknown export format" in p.stderr
    p = run_cli("export", str(stories_dir), "--out", str(tmp_path / "b"), "--max-seq-len", "64",
                "--max-chunk", "100")
    assert p.returncode == 2 and "--max-chunk" in p.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_killed_export_leaves_nothing_at_out(tmp_path, stories_dir):
    out = tmp_path / "pkg"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "export", str(stories_dir), "--out", str(out),
                             "--format", "both", "--max-seq-len", "64"], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    deadline = time.time() + 300
    try:
        for line in proc.stderr:  # wait until the program is being built inside the temp dir
            seen.append(line)
            if "[stage] lower[executorch] ..." in line or time.time() > deadline:
                break
        assert any("lower[executorch]" in s for s in seen), "".join(seen)[-2000:]
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = list(tmp_path.glob(".pkg.tmp-*"))
    assert leftovers, "the temp dir should exist next to --out until the next export cleans it"
    # The next export at the same place removes the dead process's temp dir before building.
    from edgekit.export.package import atomic_dir

    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            assert tmp.parent == tmp_path
            raise RuntimeError("build failed")
    assert not out.exists() and list(tmp_path.glob(".pkg.tmp-*")) == []


def test_atomic_dir_force_replaces_and_refuses(tmp_path):
    from edgekit.errors import UserError
    from edgekit.export.package import atomic_dir

    out = tmp_path / "d"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").read_text() == "1"
    with pytest.raises(UserError):
        with atomic_dir(out):
            pass
    with atomic_dir(out, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
