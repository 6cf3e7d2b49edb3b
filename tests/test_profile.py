"""Host profiling (real measurement, --quick) and Android profiling through a stand-in adb."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.errors import ProfileError
from edgekit.profile.adb import parse_cpuinfo, parse_getprop, parse_max_freqs, profile_adb
from edgekit.profile.host import bandwidth_buffer_mib, normalize_isa, thread_counts
from edgekit.profile.schema import DeviceProfile

ROOT = Path(__file__).resolve().parent.parent
FAKE_ADB = ROOT / "tests" / "fake_adb.py"
SERIAL = "R5CX1234ABC"


def _run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture
def adb_dir(tmp_path) -> Path:
    """A directory with an executable ``adb`` that runs tests/fake_adb.py."""
    d = tmp_path / "bin"
    d.mkdir()
    adb = d / "adb"
    adb.write_text(f"#!/bin/sh\nexec '{sys.executable}' '{FAKE_ADB}' \"$@\"\n")
    adb.chmod(adb.stat().st_mode | stat.S_IXUSR)
    return d


def test_profile_quick_json_validates(tmp_path):
    out = tmp_path / "host.json"
    t0 = time.perf_counter()
    r = _run("profile", "--quick", "--json", "--out", str(out), timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert elapsed < 25, f"--quick took {elapsed:.1f} s"
    p = DeviceProfile.model_validate(json.loads(r.stdout))
    assert p == DeviceProfile.model_validate(json.loads(out.read_text()))
    m = p.measured
    assert m is not None and "--quick" in m.tool
    reads = [s for s in m.bandwidth if s.kind == "read"]
    copies = [s for s in m.bandwidth if s.kind == "copy"]
    assert reads and copies and {s.threads for s in reads} >= {1}
    # Honest bandwidth: buffers far beyond the last-level cache, numbers a DRAM system can do.
    llc_mib = p.caches.llc_kib.value / 1024 if p.caches.llc_kib else 32
    assert all(s.buffer_mib >= min(256, 8 * llc_mib) for s in m.bandwidth)
    assert all(0.5 < s.gbps < 2000 for s in m.bandwidth)
    ops = {(s.op, s.dtype) for s in m.compute}
    assert {("gemm", "fp32"), ("gemv", "fp32")} <= ops
    gemm = max(s.gflops for s in m.compute if s.op == "gemm" and s.dtype == "fp32")
    gemv = max(s.gflops for s in m.compute if s.op == "gemv" and s.dtype == "fp32")
    assert gemm > gemv > 0  # GEMV on a 64 MiB matrix is bandwidth-bound
    assert p.memory.app_usable_gib.value <= p.memory.total_gib.value
    assert p.cpu.cores >= 1 and p.backends


def test_measured_numbers_drive_the_roofline():
    from edgekit.plan.roofline import resolve_target
    from edgekit.profile.host import profile_host

    p = profile_host(quick=True, threads=1)
    t = resolve_target(p, "xnnpack", threads=1)
    from edgekit.plan.roofline import measured_stream_gbps

    m = p.measured
    assert t.bandwidth == pytest.approx(measured_stream_gbps(m, 1) * 1e9)
    assert t.bandwidth >= m.best_bandwidth_gbps("read", 1) * 1e9 * 0.999  # the best of the rates
    assert "measured" in t.sources["bandwidth"] and "measured" in t.sources["compute.fp32"]


def test_buffer_is_8x_llc():
    assert bandwidth_buffer_mib(True, 32 * 1024) == 256
    assert bandwidth_buffer_mib(True, 96 * 1024) == 768  # 3D V-cache parts need bigger buffers
    assert bandwidth_buffer_mib(False, None) >= 256


def test_thread_counts():
    assert thread_counts(2, quick=True) == [1, 2]
    assert thread_counts(12, quick=False) == [1, 2, 4, 8, 12]
    assert thread_counts(1, quick=False) == [1]


def test_isa_normalisation():
    assert normalize_isa("fp asimd fphp asimdhp asimddp i8mm bf16 sve2".split(), "arm64") == \
        ["bf16", "dotprod", "fp16", "i8mm", "neon", "sve2"]
    assert normalize_isa("sse4_2 avx2 fma avx512f avx512_vnni avx_vnni pni".split(), "x86_64") == \
        ["avx2", "avx512_vnni", "avx512f", "avx_vnni", "fma", "sse4_2"]


def test_adb_parsers():
    assert parse_getprop("[ro.soc.model]: [SM8650]\n[x]: []\n") == {"ro.soc.model": "SM8650", "x": ""}
    cores, feats = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd82\n\n"
                                 "processor\t: 1\nCPU part\t: 0xd46\n")
    assert cores == {0: "Cortex-X4", 1: "Cortex-A510"} and feats == ["fp", "asimd"]
    assert parse_max_freqs("/sys/devices/system/cpu/cpu10/cpufreq/cpuinfo_max_freq:3302400\n") == {10: 3.3024}


def test_adb_profile_of_a_snapdragon_phone(adb_dir, monkeypatch):
    monkeypatch.setenv("PATH", f"{adb_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("EDGEKIT_ADB", raising=False)
    p = profile_adb(SERIAL)
    assert p.identity.device_class == "phone"
    assert "SM8650" in p.identity.soc
    assert [(c.name, c.cores) for c in p.cpu.clusters] == [
        ("Cortex-X4", 1), ("Cortex-A720", 3), ("Cortex-A720", 2), ("Cortex-A520", 2)]
    assert p.cpu.clusters[0].max_freq_ghz.value == pytest.approx(3.3936)
    assert {"neon", "dotprod", "i8mm", "bf16", "fp16"} <= set(p.cpu.isa) and "sve" not in p.cpu.isa
    assert p.memory.total_gib.value == pytest.approx(7469848 / 2**20, abs=0.01)
    assert p.memory.app_usable_gib.value < 0.5 * p.memory.total_gib.value
    # The SoC is in the catalog (galaxy-s24): Hexagon NPU and qnn come from there, with sources.
    assert p.accelerators.npus and "Hexagon" in p.accelerators.npus[0].name
    assert "qnn" in p.backends
    assert p.memory.bandwidth_gbps.source.startswith("catalog (galaxy-s24)")


def test_adb_cli_via_edgekit_adb_env(adb_dir, tmp_path):
    out = tmp_path / "phone.json"
    r = _run("profile", "--adb", SERIAL, "--json", "--out", str(out), env={"EDGEKIT_ADB": str(adb_dir / "adb")})
    assert r.returncode == 0, r.stderr
    p = DeviceProfile.model_validate(json.loads(r.stdout))
    assert p.name == "samsung-sm-s921u"
    # The written profile plans like any catalog device.
    from edgekit.plan import plan

    res = plan("smollm2-135m", out, draft="none", presets=["w4g32", "w8"])
    assert res.chosen.memory.total <= res.chosen.budget


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and "hint: " in lines[0]
    return lines[0]


def test_adb_unknown_serial_is_one_line_user_error(adb_dir):
    line = _one_line_error(_run("profile", "--adb", "NOPE123", env={"EDGEKIT_ADB": str(adb_dir / "adb")}))
    assert "NOPE123" in line and SERIAL in line and "adb devices" in line


def test_missing_adb_is_one_line_user_error(tmp_path, monkeypatch):
    r = subprocess.run([sys.executable, "-m", "edgekit", "profile", "--adb", SERIAL], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "PATH": str(tmp_path), "EDGEKIT_ADB": ""},
                       timeout=60)
    line = _one_line_error(r)
    assert "adb was not found" in line and "EDGEKIT_ADB" in line
    monkeypatch.setenv("EDGEKIT_ADB", str(tmp_path / "missing-adb"))
    with pytest.raises(ProfileError, match="not an executable"):
        profile_adb(SERIAL)


def test_nvidia_gpu_detection_uses_the_catalog(tmp_path, monkeypatch):
    """A stand-in nvidia-smi reporting one H200: detected with its real memory and classified as a
    server GPU, with datasheet bandwidth/throughput copied from the catalog (sourced)."""
    from edgekit.profile.host import classify, detect_cpu, detect_gpus

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA H200, 143771'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus = detect_gpus()
    assert len(gpus) == 1
    g = gpus[0]
    assert g["name"] == "NVIDIA H200" and g["memory_gib"]["value"] == pytest.approx(140.4, abs=0.05)
    assert g["bandwidth_gbps"]["value"] == 4800 and g["bandwidth_gbps"]["source"].startswith("catalog (NVIDIA H200 SXM)")
    assert classify(detect_cpu(), gpus) == "server-gpu"
    p = DeviceProfile.model_validate({
        "schema_version": 1,
        "identity": {"name": "gpu-host", "display_name": "x", "class": "server-gpu", "vendor": "x"},
        "cpu": detect_cpu(), "memory": {"total_gib": {"value": 8, "source": "test"},
                                         "app_usable_gib": {"value": 4, "source": "test"}},
        "accelerators": {"gpus": gpus}, "backends": ["cuda", "xnnpack"]})
    from edgekit.plan.roofline import resolve_target

    assert resolve_target(p, "cuda").memory_bytes == pytest.approx(143771 * 2**20, rel=1e-4)
