"""The device catalog: every shipped profile validates, the datasheet numbers are the real ones,
and malformed profiles fail as one-line user errors naming the file and the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from edgekit.cli.main import app
from edgekit.errors import ProfileError
from edgekit.plan.roofline import resolve_target
from edgekit.profile import find_profile, list_profiles, load_profile, profiles_dir
from edgekit.profile.schema import DeviceProfile, Sourced

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ["pixel-8-pro", "galaxy-s24", "iphone-15-pro", "galaxy-a54", "raspberry-pi-5-8gb",
            "jetson-orin-nano-8gb", "jetson-orin-nx-16gb", "rtx-4060-laptop", "rtx-4090", "apple-m2-8gb",
            "nvidia-t4", "nvidia-l4", "nvidia-a10g", "titan-rtx", "amd-mi250", "nvidia-h200"]


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=120)


def _one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith("error: ") and "hint: " in lines[0]
    return lines[0]


def _sourced(obj) -> list[Sourced]:
    """Every Sourced value inside a profile (recursively)."""
    found = []
    if isinstance(obj, Sourced):
        return [obj]
    if isinstance(obj, list):
        for x in obj:
            found += _sourced(x)
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            found += _sourced(getattr(obj, name))
    return found


def test_catalog_is_in_the_checkout():
    assert profiles_dir().resolve() == (ROOT / "device_profiles").resolve()


def test_every_shipped_profile_loads_and_covers_every_class():
    profiles = list_profiles()
    names = {p.name for p in profiles}
    assert len(profiles) >= 16
    assert set(REQUIRED) <= names
    classes = {p.identity.device_class for p in profiles}
    assert {"phone", "board", "laptop", "desktop-gpu", "server-gpu"} <= classes
    for f in sorted((ROOT / "device_profiles").glob("*.json")):
        p = load_profile(f)
        assert f.stem == p.name, f"{f.name}: identity.name {p.name} differs from the file name"
        srcs = _sourced(p)
        assert srcs, f"{f.name} has no sourced numbers"
        assert all(len(s.source) >= 3 for s in srcs)


@pytest.mark.parametrize("name,mem_gib,bw_gbps", [
    ("nvidia-h200", 141, 4800), ("rtx-4090", 24, 1008), ("nvidia-t4", 16, 320), ("nvidia-l4", 24, 300),
    ("nvidia-a10g", 24, 600), ("titan-rtx", 24, 672), ("amd-mi250", 64, 1638.4),
    ("rtx-4060-laptop", 8, 256),
])
def test_gpu_datasheet_numbers(name, mem_gib, bw_gbps):
    g = find_profile(name).accelerators.gpus[0]
    assert g.memory_gib.value == mem_gib
    assert g.bandwidth_gbps.value == bw_gbps
    assert "datasheet" in g.bandwidth_gbps.source.lower() or "specs" in g.bandwidth_gbps.source.lower() \
        or "whitepaper" in g.bandwidth_gbps.source.lower()


def test_board_and_phone_numbers():
    pi = find_profile("raspberry-pi-5-8gb")
    assert pi.memory.bandwidth_gbps.value == pytest.approx(17.1)  # LPDDR4X-4267 x 32 bit
    assert pi.cpu.cores == 4 and pi.memory.total_gib.value == 8
    s24 = find_profile("galaxy-s24")
    assert [c.cores for c in s24.cpu.clusters] == [1, 3, 2, 2]
    assert s24.accelerators.npus[0].session_memory_limit_gib is not None
    assert "qnn" in s24.backends
    assert find_profile("iphone-15-pro").accelerators.npus[0].peak_int8_tops.value == 35
    assert find_profile("apple-m2-8gb").memory.bandwidth_gbps.value == 100
    # Phones let one app use far less than their RAM.
    for p in list_profiles():
        if p.identity.device_class == "phone":
            assert p.memory.app_usable_gib.value <= 0.65 * p.memory.total_gib.value, p.name


def test_every_backend_of_every_device_resolves():
    for p in list_profiles():
        for b in p.backends:
            t = resolve_target(p, b)
            assert t.bandwidth > 1e9 and t.memory_bytes > 0 and t.compute["fp32"] > 0, (p.name, b)


def _write(tmp: Path, name: str, data: dict) -> Path:
    f = tmp / f"{name}.json"
    f.write_text(json.dumps(data))
    return f


def test_malformed_profile_names_file_and_field(tmp_path):
    data = json.loads((ROOT / "device_profiles" / "galaxy-s24.json").read_text())
    data["memory"]["total_gib"]["value"] = "lots"
    f = _write(tmp_path, "bad", data)
    with pytest.raises(ProfileError) as e:
        load_profile(f)
    assert str(f) in e.value.message and "memory.total_gib.value" in e.value.message

    data = json.loads((ROOT / "device_profiles" / "nvidia-t4.json").read_text())
    del data["accelerators"]["gpus"][0]["bandwidth_gbps"]["source"]
    f = _write(tmp_path, "nosource", data)
    with pytest.raises(ProfileError, match=r"accelerators\.gpus\.0\.bandwidth_gbps\.source"):
        load_profile(f)

    data = json.loads((ROOT / "device_profiles" / "nvidia-t4.json").read_text())
    data["identity"]["class"] = "toaster"
    with pytest.raises(ProfileError, match=r"identity\.class"):
        load_profile(_write(tmp_path, "toaster", data))

    data["identity"]["class"] = "phone"
    data["memory"]["app_usable_gib"]["value"] = 99
    with pytest.raises(ProfileError, match="app_usable_gib.value is larger"):
        load_profile(_write(tmp_path, "usable", data))

    (tmp_path / "notjson.json").write_text("{nope")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(tmp_path / "notjson.json")


def test_malformed_catalog_is_exit_2_one_line(tmp_path):
    data = json.loads((ROOT / "device_profiles" / "rtx-4090.json").read_text())
    data["cpu"]["isa"].append("avx1024")
    _write(tmp_path, "rtx-4090", data)
    line = _one_line_error(_run("devices", env={"EDGEKIT_DEVICE_PROFILES": str(tmp_path)}))
    assert "rtx-4090.json" in line and "cpu.isa" in line and "avx1024" in line


def test_unknown_device_suggests_close_names():
    with pytest.raises(ProfileError) as e:
        find_profile("galaxy-s42")
    assert "galaxy-s24" in e.value.hint
    line = _one_line_error(_run("devices", "raspberry-pi-9"))
    assert "unknown device" in line and "raspberry-pi-5-8gb" in line


def test_devices_cli_table_and_json():
    r = CliRunner().invoke(app, ["devices", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert {row["name"] for row in rows} >= set(REQUIRED)
    h200 = next(row for row in rows if row["name"] == "nvidia-h200")
    assert h200["gpu_memory_gib"] == 141 and h200["gpu_bandwidth_gbps"] == 4800
    r = CliRunner().invoke(app, ["devices"])
    assert r.exit_code == 0 and "jetson-orin-nx-16gb" in r.stdout and "server-gpu" in r.stdout
    r = CliRunner().invoke(app, ["devices", "galaxy-a54", "--json"])
    assert r.exit_code == 0
    assert DeviceProfile.model_validate(json.loads(r.stdout)).name == "galaxy-a54"
