"""edgekit quantize / generate / eval ppl on the real stories260K, and bad inputs."""

from __future__ import annotations

import json

import pytest

from conftest import TINYSTORIES, run_cli


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory, tinystories_text):
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(tinystories_text[-60000:])  # the end of the file; eval reads the start
    return p


def test_quantize_generate_eval(stories_dir, calib_file, tmp_path):
    out = tmp_path / "w4"
    r = run_cli("quantize", str(stories_dir), "--preset", "w4g32", "--method", "decoupleq", "--calib",
                str(calib_file), "--calib-samples", "8", "--calib-seq-len", "128", "--out", str(out), "--json",
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["method"] == "decoupleq" and res["sizes"]["packed_modules"] == 35
    assert (out / "edgekit_checkpoint.json").exists() and (out / "model.safetensors").exists()
    assert (out / "tok512.bin").exists()
    g = run_cli("generate", str(out), "-n", "12", "--json", env={"OMP_NUM_THREADS": "1"})
    assert g.returncode == 0, g.stderr
    assert json.loads(g.stdout)["text"].strip()
    e = run_cli("eval", "ppl", str(out), "--corpus", str(TINYSTORIES), "--max-tokens", "2000", "--json",
                env={"OMP_NUM_THREADS": "1"})
    assert e.returncode == 0, e.stderr
    ppl = json.loads(e.stdout)
    assert ppl["tokens"] == 2000 and 3.0 < ppl["ppl"] < 6.0, ppl  # fp32 is ~3.9; w4g32 stays close
    again = run_cli("quantize", str(stories_dir), "--preset", "w4g32", "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr


@pytest.mark.parametrize("args,needle", [
    (["quantize", "--preset", "w5g3", "--out", "OUT"], "unknown quantization preset"),
    (["quantize", "--preset", "w2g64", "--method", "gptq", "--calib", "/nonexistent/c.txt", "--out", "OUT"],
     "does not exist"),
    (["quantize", "--preset", "w2g64", "--method", "gptq", "--out", "OUT"], "needs calibration"),
    (["quantize", "--preset", "w2g64", "--method", "awq", "--out", "OUT"], "unknown quantization method"),
    (["eval", "ppl", "--corpus", "/nonexistent/x.txt"], "does not exist"),
])
def test_bad_inputs_exit_2_one_line(args, needle, tmp_path, stories_dir):
    args = [a.replace("OUT", str(tmp_path / "o")) for a in args]
    r = run_cli(*args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()
