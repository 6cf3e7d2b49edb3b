"""Python runtime over packages: ExecuTorch and onnxruntime backends behind the Engine, rollback
for speculative decoding, `edgekit run` and `edgekit bench`."""

from __future__ import annotations

import json

import pytest
import torch

from _export_pkgs import copy_package, stories_package
from conftest import run_cli

PROMPT = [1, 403, 407, 261, 378, 432, 383]


@pytest.fixture(scope="module")
def pkg(stories_dir):
    from edgekit.runtime.package import load_package

    return load_package(stories_package(stories_dir))


@pytest.mark.parametrize("kind", ["executorch", "onnx"])
def test_rollback_after_junk_candidates_matches_clean_run(pkg, kind):
    from edgekit.runtime.engine import Engine

    real = [286, 261, 376]
    clean_eng = Engine(pkg.backend(kind), None, stop_ids=[])
    clean_eng.step(PROMPT)
    clean = clean_eng.step(real)
    eng = Engine(pkg.backend(kind), None, stop_ids=[])
    eng.step(PROMPT)
    junk = eng.step([7, 8, 9, 10])  # 4 rejected speculative candidates
    assert not torch.allclose(junk[:3], clean, atol=1e-3)
    eng.rollback(len(PROMPT))
    again = eng.step(real)
    assert (again - clean).abs().max() <= 1e-5
    # And a second rollback into the prompt itself, then continuing one token at a time.
    eng.rollback(3)
    eng.step(PROMPT[3:])
    assert (eng.step(real[:1]) - clean[:1]).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", ["executorch", "onnx"])
def test_two_backends_have_independent_caches(pkg, kind):
    a, b = pkg.backend(kind), pkg.backend(kind)
    ref = a.forward(PROMPT, 0)
    b.forward([5, 6, 7, 8, 9, 10, 11, 12], 0)  # overwrites b's cache rows 0..7 only
    again = a.forward([PROMPT[-1]], len(PROMPT) - 1)
    assert (again[0] - ref[-1]).abs().max() <= 1e-5


def test_chunked_prefill_matches_single_call(pkg):
    from edgekit.runtime.engine import Engine

    ids = (PROMPT * 10)[:70]  # > max_chunk 32: three chunks
    be = pkg.backend("onnx")
    want = be.forward(ids, 0)[-1]
    got = Engine(pkg.backend("executorch"), None).prefill(ids)
    assert (got - want).abs().max() <= 1e-4


def test_executorch_rejects_oversized_chunk(pkg):
    from edgekit.errors import UserError

    be = pkg.backend("executorch")
    with pytest.raises(UserError, match="1..32"):
        be.forward(list(range(33)), 0)
    for kind in ("executorch", "onnx"):
        with pytest.raises(UserError, match="max_seq_len 128"):
            pkg.backend(kind).forward([1, 2], 127)


def test_load_package_checks_checksums_first(tmp_path, stories_dir):
    from edgekit.errors import PackageError
    from edgekit.runtime.package import load_package

    p = copy_package(stories_package(stories_dir), tmp_path / "pkg")
    (p / "tokenizer.bin").write_bytes(b"\0" * (p / "tokenizer.bin").stat().st_size)
    with pytest.raises(PackageError, match="tokenizer.bin"):
        load_package(p)


def test_run_cli_backends_agree(stories_dir):
    pkg = stories_package(stories_dir)
    outs = {}
    for kind in ("executorch", "onnx"):
        p = run_cli("run", str(pkg), "--prompt", "Once upon a time", "-n", "20", "--backend", kind, "--json")
        assert p.returncode == 0, p.stderr[-2000:]
        outs[kind] = json.loads(p.stdout)
        assert outs[kind]["backend"] == kind
    assert outs["executorch"]["tokens"] == outs["onnx"]["tokens"]
    assert outs["executorch"]["text"].startswith(", there was a little girl named Lily")
    p = run_cli("run", str(pkg), "-n", "8")  # streaming text mode, default backend
    assert p.returncode == 0 and p.stdout.startswith("Once upon a time, there was")


def test_sampling_is_seeded(pkg):
    from edgekit.runtime.engine import SamplingConfig
    from edgekit.runtime.run import generate_from_package

    def go(seed):
        return generate_from_package(pkg, "Once upon a time", "executorch", 16,
                                     SamplingConfig(0.9, 0.9, seed))["tokens"]

    a, b = go(3), go(3)
    assert a == b and len(a) > 0


def test_bench_cli_json(stories_dir):
    pkg = stories_package(stories_dir)
    p = run_cli("bench", str(pkg), "--prompt-len", "16", "--gen-len", "8", "--reps", "2", "--threads", "1",
                "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout)
    assert r["backend"] == "executorch" and len(r["runs"]) == 2 and r["threads"] == 1


@pytest.mark.parametrize("backend", ["executorch", "onnx", "eager"])
def test_bench_protocol(pkg, backend):
    from edgekit.runtime.bench import bench_package

    r = bench_package(pkg, backend=backend, prompt_len=16, gen_len=8, reps=3)
    assert r["backend"] == backend and r["reps"] == 3 and len(r["runs"]) == 3
    for k in ("ttft_ms", "prefill_tok_s", "decode_tok_s", "gb_s"):
        assert r[k]["min"] <= r[k]["median"] <= r[k]["max"] and r[k]["min"] > 0
    assert r["weight_bytes"] == 4 * 260_032  # fp32 parameters, the tied head counted once
    assert r["gb_s"]["median"] == pytest.approx(r["decode_tok_s"]["median"] * 4 * 260_032 / 1e9)
    assert r["peak_rss_mib"] > 10


def test_bench_rejects_too_long(pkg):
    from edgekit.errors import UserError
    from edgekit.runtime.bench import bench_package

    with pytest.raises(UserError, match="max_seq_len"):
        bench_package(pkg, prompt_len=100, gen_len=100, reps=1)
