"""`edgekit export --plan plan.json`: the plan's max_seq_len and weight preset reach the package;
explicit --max-seq-len / --quant win over the plan; a bad plan file is one error line."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from edgekit.errors import UserError
from edgekit.plan.apply import export_settings, quant_hook


@pytest.fixture(scope="module")
def stories_plan(stories_dir, tmp_path_factory):
    """A plan for stories260K on a Raspberry Pi 5 at context 96, among the presets whose groups fit
    stories260K's 64-wide rows (w4g128's group is wider than a row)."""
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    p = run_cli("plan", str(stories_dir), "--device", "raspberry-pi-5-8gb", "--context", "96",
                "--preset", "w4g32", "--preset", "w8", "--preset", "fp32", "--out", str(path))
    assert p.returncode == 0, p.stderr[-2000:]
    return path


def test_export_takes_max_seq_len_and_preset_from_the_plan(stories_dir, stories_plan, tmp_path):
    plan = json.loads(stories_plan.read_text())
    assert plan["max_seq_len"] == 96 and plan["preset"] not in ("fp32", "fp16")
    out = tmp_path / "pkg"
    p = run_cli("export", str(stories_dir), "--plan", str(stories_plan), "--out", str(out), "--format", "executorch",
                "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads(p.stdout)
    assert m["max_seq_len"] == 96
    assert m["quantization"]["preset"] == plan["preset"]
    assert (m["quantization"]["bits"], m["quantization"]["group_size"]) == (plan["bits"], plan["group_size"])
    assert m["quantization"]["head_bits"] == plan["head_bits"]
    assert "max_seq_len 96 from the plan" in p.stderr
    assert f"quantization {plan['preset']}" in p.stderr
    # verify --source on the float checkpoint: a top-1 agreement floor, not float allclose
    v = run_cli("verify", str(out), "--source", str(stories_dir), "--json")
    assert v.returncode == 0, v.stdout[-2000:]
    rows = [r for r in json.loads(v.stdout)["rows"] if r["check"] == "vs-source"]
    assert rows and all(r["ok"] and r["top1_agreement"] >= 0.6 for r in rows)


def test_explicit_flags_override_the_plan(stories_plan):
    lines: list[str] = []
    s = export_settings(stories_plan, max_seq_len=64, quant="fp32", log=lines.append)
    assert s.max_seq_len == 64 and s.preset == "fp32" and s.quant is None and s.taken == {}
    assert any("--max-seq-len 64 overrides the plan's 96" in x for x in lines)
    assert any("--quant fp32 overrides" in x for x in lines)
    s = export_settings(stories_plan, log=lines.append)
    plan = json.loads(stories_plan.read_text())
    assert s.max_seq_len == 96 and s.preset == plan["preset"] and s.quant is not None
    assert s.taken["max_seq_len"] == 96 and s.taken["preset"] == plan["preset"]
    assert export_settings(None).quant is None and export_settings(None, max_seq_len=32).max_seq_len == 32


def test_fp16_preset_is_refused_with_a_hint():
    with pytest.raises(UserError, match="not fp16") as e:
        quant_hook("fp16")
    assert "--quant" in e.value.hint
    assert quant_hook("fp32") is None
    with pytest.raises(UserError, match="unknown quantization preset"):
        quant_hook("w5")


def test_bad_plan_file_is_one_line(stories_dir, tmp_path):
    bad = tmp_path / "plan.json"
    bad.write_text(json.dumps({"schema": "edgekit.plan", "schema_version": 1, "preset": "w4g32"}))
    p = run_cli("export", str(stories_dir), "--plan", str(bad), "--out", str(tmp_path / "pkg"))
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[0].startswith("error:") and "Traceback" not in p.stderr
    assert not (tmp_path / "pkg").exists()
    p = run_cli("export", str(stories_dir), "--plan", str(tmp_path / "missing.json"), "--out", str(tmp_path / "pkg"))
    assert p.returncode == 2 and "does not exist" in p.stderr
