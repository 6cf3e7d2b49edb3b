"""`edgekit verify`: passes on a good package, fails with exit 2 and one line naming the file on
a damaged one, and exit 1 when a program's outputs stop matching the golden outputs."""

from __future__ import annotations

import json

import pytest

from _export_pkgs import copy_package, stories_package
from conftest import run_cli


def _error_lines(p):
    return [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]


def test_verify_passes_on_good_package_with_source(stories_dir):
    pkg = stories_package(stories_dir)
    p = run_cli("verify", str(pkg), "--source", str(stories_dir), "--json")
    assert p.returncode == 0, p.stderr[-2000:]
    rep = json.loads(p.stdout)
    assert rep["ok"] is True
    checks = {(r["check"], r["target"]) for r in rep["rows"]}
    for kind in ("executorch", "onnx"):
        for c in ("argmax", "top5", "greedy", "vs-source"):
            assert (c, kind) in checks
    assert ("file", "model.pte") in checks
    src = [r for r in rep["rows"] if r["check"] == "vs-source"]
    assert all(r["max_abs_diff"] <= 1e-3 for r in src)


def test_verify_table_output(stories_dir):
    p = run_cli("verify", str(stories_package(stories_dir)))
    assert p.returncode == 0
    assert "all checks passed" in p.stdout and "greedy" in p.stdout


@pytest.mark.parametrize("name", ["model.pte", "model.onnx.data", "tokenizer.bin"])
def test_flipped_byte_is_named(tmp_path, stories_dir, name):
    pkg = copy_package(stories_package(stories_dir), tmp_path / "pkg")
    f = pkg / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    p = run_cli("verify", str(pkg))
    assert p.returncode == 2
    lines = _error_lines(p)
    assert len(lines) == 1 and name in lines[0] and "sha256" in lines[0]
    assert "Traceback" not in p.stderr


def test_missing_file_is_named(tmp_path, stories_dir):
    pkg = copy_package(stories_package(stories_dir), tmp_path / "pkg")
    (pkg / "model.onnx").unlink()
    p = run_cli("verify", str(pkg), "--json")
    assert p.returncode == 2
    lines = _error_lines(p)
    assert len(lines) == 1 and "model.onnx" in lines[0] and "missing" in lines[0]
    assert p.stdout == ""


def test_truncated_file_is_named(tmp_path, stories_dir):
    pkg = copy_package(stories_package(stories_dir), tmp_path / "pkg")
    f = pkg / "model.pte"
    f.write_bytes(f.read_bytes()[:1000])
    p = run_cli("verify", str(pkg))
    assert p.returncode == 2
    lines = _error_lines(p)
    assert len(lines) == 1 and "model.pte" in lines[0] and "truncated" in lines[0]


def test_unknown_schema_version_is_named(tmp_path, stories_dir):
    pkg = copy_package(stories_package(stories_dir), tmp_path / "pkg")
    m = json.loads((pkg / "manifest.json").read_text())
    m["schema_version"] = 99
    (pkg / "manifest.json").write_text(json.dumps(m))
    p = run_cli("verify", str(pkg))
    assert p.returncode == 2
    lines = _error_lines(p)
    assert len(lines) == 1 and "manifest.json" in lines[0] and "schema_version 99" in lines[0]


def test_missing_manifest_and_not_a_dir(tmp_path, stories_dir):
    pkg = copy_package(stories_package(stories_dir), tmp_path / "pkg")
    (pkg / "manifest.json").unlink()
    p = run_cli("verify", str(pkg))
    assert p.returncode == 2 and "manifest.json" in _error_lines(p)[0]
    p = run_cli("verify", str(tmp_path / "nope"))
    assert p.returncode == 2 and len(_error_lines(p)) == 1


def test_golden_mismatch_fails_with_exit_1(tmp_path, stories_dir):
    """The numeric checks can fail: a golden top-5 value off by 0.5 and a wrong greedy token."""
    pkg = copy_package(stories_package(stories_dir), tmp_path / "pkg")
    m = json.loads((pkg / "manifest.json").read_text())
    m["golden"]["top5_values"][0] += 0.5
    m["golden"]["greedy_ids"][3] = (m["golden"]["greedy_ids"][3] + 1) % 512
    (pkg / "manifest.json").write_text(json.dumps(m))
    p = run_cli("verify", str(pkg), "--json")
    assert p.returncode == 1
    rep = json.loads(p.stdout)
    bad = {(r["check"], r["target"]) for r in rep["rows"] if not r["ok"]}
    assert bad == {("top5", "executorch"), ("top5", "onnx"), ("greedy", "executorch"), ("greedy", "onnx")}


def test_run_refuses_damaged_package(tmp_path, stories_dir):
    pkg = copy_package(stories_package(stories_dir), tmp_path / "pkg")
    f = pkg / "model.pte"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    p = run_cli("run", str(pkg), "-n", "4")
    assert p.returncode == 2 and "model.pte" in _error_lines(p)[0]
