"""Eager generation through the CLI on the real stories260K checkpoint."""

from __future__ import annotations

import json

from conftest import run_cli

EXPECTED = (", there was a little girl named Lily. She loved to play outside in the park. "
            "One day, she saw a big, red ball.")


def test_greedy_matches_llama2c(stories_dir):
    r = run_cli("generate", str(stories_dir), "--prompt", "Once upon a time", "--temperature", "0",
                "--max-new-tokens", "48", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"].startswith(EXPECTED), out["text"]
    assert len(EXPECTED.split()) >= 20 and len(out["text"].split()) >= 30
    assert len(out["tokens"]) == 48
    assert out["timings"]["decode_tok_s"] > 0
    assert out["model"]["arch"] == "llama2c"


def test_streaming_default_model(stories_dir):
    r = run_cli("generate", "--max-new-tokens", "30", env={"EDGEKIT_MODELS": str(stories_dir.parent)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon a time" + EXPECTED[:40])
    assert "tok/s" in r.stderr  # timings are logs, on stderr


def test_sampling_is_seeded(stories_dir):
    def go(seed):
        r = run_cli("generate", str(stories_dir), "-t", "0.9", "--top-p", "0.9", "--seed", str(seed),
                    "-n", "24", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["tokens"]

    a, b, c = go(1), go(1), go(2)
    assert a == b
    assert a != c


def test_hf_checkpoint_generates(hf_qwen2):
    r = run_cli("generate", str(hf_qwen2), "--prompt", "Once upon", "-n", "8", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"]["arch"] == "qwen2" and len(out["tokens"]) <= 8
