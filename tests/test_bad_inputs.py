"""Every bad input exits 2 with one line on stderr and no traceback."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_cli


def _assert_user_error(r, *words):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "hint: " in lines[0]
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_missing_path(tmp_path):
    _assert_user_error(run_cli("generate", str(tmp_path / "nope")), "does not exist")


def test_directory_without_config(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    _assert_user_error(run_cli("generate", str(tmp_path)), "config.json")


def test_truncated_llama2c_bin(tmp_path, stories_dir):
    data = (stories_dir / "stories260K.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    shutil.copy(stories_dir / "tok512.bin", tmp_path / "tok512.bin")
    _assert_user_error(run_cli("generate", str(tmp_path / "model.bin")), "truncated")


def test_garbage_safetensors(tmp_path, hf_llama):
    d = tmp_path / "ckpt"
    shutil.copytree(hf_llama, d)
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    _assert_user_error(run_cli("generate", str(d)), "safetensors")


def test_unknown_architecture(tmp_path, hf_llama):
    d = tmp_path / "ckpt"
    shutil.copytree(hf_llama, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (d / "config.json").write_text(json.dumps(cfg))
    _assert_user_error(run_cli("generate", str(d)), "gpt2")


@pytest.mark.parametrize("flag", [["--top-p", "1.5"], ["--temperature", "-1"]])
def test_bad_sampling_flags(stories_dir, flag):
    _assert_user_error(run_cli("generate", str(stories_dir), *flag))
