"""Profile an Android phone through adb: identity from ``getprop``, CPU clusters from per-core
``cpufreq`` maxima and ``/proc/cpuinfo`` part numbers, ISA from its ``Features``, RAM from
``/proc/meminfo``; GPU/NPU datasheet numbers come from the catalog when it knows the SoC.

The ``adb`` executable is ``$EDGEKIT_ADB`` or ``adb`` on ``PATH``. Nothing is installed on the
phone and nothing is measured there (``measured`` stays empty): the numbers are detected and
sourced.

Example::

    from edgekit.profile.adb import profile_adb
    p = profile_adb("R5CX1234ABC")
    p.identity.soc, [c.name for c in p.cpu.clusters]
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from edgekit.errors import ProfileError
from edgekit.profile.host import normalize_isa
from edgekit.profile.schema import GIB, DeviceProfile

# Arm "CPU part" numbers (implementer 0x41) -> core names.
ARM_PARTS = {
    0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55", 0xD07: "Cortex-A57",
    0xD08: "Cortex-A72", 0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77", 0xD40: "Neoverse-V1", 0xD41: "Cortex-A78",
    0xD42: "Cortex-A78AE", 0xD44: "Cortex-X1", 0xD46: "Cortex-A510", 0xD47: "Cortex-A710",
    0xD48: "Cortex-X2", 0xD49: "Neoverse-N2", 0xD4B: "Cortex-A78C", 0xD4D: "Cortex-A715",
    0xD4E: "Cortex-X3", 0xD80: "Cortex-A520", 0xD81: "Cortex-A720", 0xD82: "Cortex-X4",
    0xD85: "Cortex-X925", 0xD87: "Cortex-A725",
}

# Share of MemTotal one foreground app can hold before lmkd kills it, when MemAvailable is not
# a better guide (see the catalog's phone profiles).
ANDROID_APP_FRACTION = 0.45


def adb_executable() -> str:
    """``$EDGEKIT_ADB`` or ``adb`` on PATH.

    Raises:
        ProfileError: neither exists.
    """
    env = os.environ.get("EDGEKIT_ADB")
    if env:
        if os.path.isfile(env) and os.access(env, os.X_OK):
            return env
        raise ProfileError(f"EDGEKIT_ADB={env} is not an executable file",
                           "point EDGEKIT_ADB at the adb binary from Android platform-tools, or unset it")
    found = shutil.which("adb")
    if not found:
        raise ProfileError("adb was not found on PATH",
                           "install Android platform-tools and put adb on PATH, or set EDGEKIT_ADB=/path/to/adb")
    return found


class Adb:
    """A thin client for one device: ``Adb(serial).shell("getprop")``."""

    def __init__(self, serial: str, exe: str | None = None, timeout: float = 30.0) -> None:
        self.serial = serial
        self.exe = exe or adb_executable()
        self.timeout = timeout

    def run(self, *args: str) -> str:
        try:
            r = subprocess.run([self.exe, *args], capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise ProfileError(f"adb {' '.join(args)} timed out after {self.timeout:.0f} s",
                               "check the USB connection and that the phone is unlocked") from None
        except OSError as e:
            raise ProfileError(f"cannot run adb ({self.exe}): {e.strerror}",
                               "check EDGEKIT_ADB / PATH points at a working adb") from None
        if r.returncode != 0:
            msg = (r.stderr.strip() or r.stdout.strip() or f"exit code {r.returncode}").splitlines()[-1]
            raise ProfileError(f"adb {' '.join(args[:3])} failed: {msg}",
                               "check `adb devices` lists the phone as 'device' (authorised)")
        return r.stdout

    def devices(self) -> dict[str, str]:
        """``serial -> state`` from ``adb devices``."""
        out = {}
        for line in self.run("devices").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 2:
                out[parts[0]] = parts[1]
        return out

    def shell(self, command: str) -> str:
        return self.run("-s", self.serial, "shell", command)

    def check(self) -> None:
        """Raises ProfileError unless the serial is attached and authorised."""
        devs = self.devices()
        if self.serial not in devs:
            listed = ", ".join(devs) or "none"
            raise ProfileError(f"no adb device with serial {self.serial!r} (connected: {listed})",
                               "run `adb devices` and pass one of its serials to --adb")
        if devs[self.serial] != "device":
            raise ProfileError(f"adb device {self.serial} is '{devs[self.serial]}', not ready",
                               "unlock the phone and accept the USB debugging prompt")


def parse_getprop(text: str) -> dict[str, str]:
    """``[key]: [value]`` lines -> dict."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\[([^\]]+)\]: \[(.*)\]\s*$", text, re.M)}


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> bytes per key."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"(\w+):\s+(\d+)\s*kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def parse_cpuinfo(text: str) -> tuple[dict[int, str], list[str]]:
    """``/proc/cpuinfo`` -> (cpu index -> core name, Features of the first processor)."""
    cores: dict[int, str] = {}
    features: list[str] = []
    cur = None
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip().lower(), v.strip()
        if k == "processor" and v.isdigit():
            cur = int(v)
        elif k == "features" and not features:
            features = v.split()
        elif k == "cpu part" and cur is not None:
            try:
                part = int(v, 16)
            except ValueError:
                continue
            cores[cur] = ARM_PARTS.get(part, f"Arm core part {v}")
    return cores, features


def parse_max_freqs(text: str) -> dict[int, float]:
    """``grep`` output ``/sys/devices/system/cpu/cpuN/cpufreq/cpuinfo_max_freq:KHZ`` -> GHz per cpu."""
    out = {}
    for m in re.finditer(r"cpu(\d+)/cpufreq/cpuinfo_max_freq:(\d+)", text):
        out[int(m.group(1))] = int(m.group(2)) / 1e6
    return out


def _catalog_by_soc(model: str, soc_model: str) -> DeviceProfile | None:
    """A catalog phone with the same SoC (``SM8650`` in ``identity.soc``) or product model."""
    from edgekit.profile.catalog import list_profiles

    keys = [k.lower() for k in (soc_model, model) if k]
    for p in list_profiles():
        hay = f"{p.identity.soc or ''} {p.identity.display_name} {p.name}".lower()
        if any(k and k in hay for k in keys):
            return p
    return None


def profile_adb(serial: str, *, adb: str | None = None, name: str | None = None) -> DeviceProfile:
    """Profile the Android device ``serial`` over adb; returns a schema-valid phone profile.

    Raises:
        ProfileError: adb missing, the serial not attached or not authorised, or a shell command
            failing (one line with a hint).
    """
    a = Adb(serial, adb)
    a.check()
    props = parse_getprop(a.shell("getprop"))
    cpuinfo = a.shell("cat /proc/cpuinfo")
    meminfo = parse_meminfo(a.shell("cat /proc/meminfo"))
    freqs = parse_max_freqs(a.shell("grep -H . /sys/devices/system/cpu/cpu*/cpufreq/cpuinfo_max_freq"))
    core_names, features = parse_cpuinfo(cpuinfo)

    model = props.get("ro.product.model", "")
    brand = props.get("ro.product.brand") or props.get("ro.product.manufacturer") or "unknown"
    soc_model = props.get("ro.soc.model", "")
    soc_maker = props.get("ro.soc.manufacturer", "")
    hardware = props.get("ro.hardware.chipname") or props.get("ro.board.platform") or props.get("ro.hardware", "")
    abi = props.get("ro.product.cpu.abi", "arm64-v8a")
    arch = "arm64" if "arm64" in abi else "armv7" if "armeabi" in abi else "other"
    if "MemTotal" not in meminfo:
        raise ProfileError(f"adb device {serial}: /proc/meminfo has no MemTotal",
                           "the device is not a standard Android/Linux system")

    cpus = sorted(set(freqs) | set(core_names)) or [0]
    groups: dict[tuple[str, float], int] = {}
    for c in cpus:
        key = (core_names.get(c, "core"), round(freqs.get(c, 0.0), 4))
        groups[key] = groups.get(key, 0) + 1
    src = f"detected over adb: /proc/cpuinfo CPU part and cpufreq cpuinfo_max_freq ({serial})"
    clusters = []
    for (cname, ghz), n in sorted(groups.items(), key=lambda kv: -kv[0][1]):
        c: dict = {"name": cname, "cores": n}
        if ghz:
            c["max_freq_ghz"] = {"value": ghz, "source": src}
        clusters.append(c)

    total = meminfo["MemTotal"]
    avail = meminfo.get("MemAvailable", 0)
    usable = max(avail, int(total * ANDROID_APP_FRACTION)) if avail else int(total * ANDROID_APP_FRACTION)
    usable = min(usable, total)
    usable_src = (f"detected over adb: max(MemAvailable {avail / GIB:.2f} GiB, {ANDROID_APP_FRACTION:.0%} of "
                  "MemTotal): what a foreground app can hold before lmkd kills it")

    known = _catalog_by_soc(model, soc_model)
    soc = " ".join(x for x in (soc_maker, soc_model) if x) or hardware or "unknown SoC"
    backends = ["xnnpack"]
    accelerators: dict = {"gpus": [], "npus": []}
    notes = [f"profiled over adb from serial {serial}; nothing measured on the phone"]
    bandwidth = None
    if known is not None:
        acc = known.accelerators.model_dump(mode="json", exclude_none=True)
        accelerators = acc
        backends = [b for b in known.backends if b in ("xnnpack", "vulkan", "qnn")]
        if known.memory.bandwidth_gbps:
            bandwidth = known.memory.bandwidth_gbps.model_dump()
            bandwidth["source"] = f"catalog ({known.name}): {bandwidth['source']}"
        notes.append(f"GPU/NPU and memory bandwidth from the catalog entry {known.name} (same SoC)")
    else:
        if props.get("ro.hardware.vulkan"):
            notes.append(f"Vulkan driver {props['ro.hardware.vulkan']} present, but the GPU is not in "
                         "the catalog; add its throughput to plan for vulkan")
        if soc_maker.upper() in ("QTI", "QUALCOMM"):
            notes.append("Qualcomm SoC not in the catalog: add the Hexagon NPU to plan for qnn")
    memory: dict = {"total_gib": {"value": round(total / GIB, 2), "source": "detected over adb: /proc/meminfo MemTotal"},
                    "app_usable_gib": {"value": round(usable / GIB, 2), "source": usable_src},
                    "unified": True}
    if bandwidth:
        memory["bandwidth_gbps"] = bandwidth
    slug = re.sub(r"[^a-z0-9]+", "-", f"{brand} {model}".lower()).strip("-") or "android"
    data = {
        "schema_version": 1,
        "identity": {"name": name or slug, "display_name": f"{brand} {model}".strip(), "class": "phone",
                     "vendor": brand, "soc": soc,
                     "os": f"Android {props.get('ro.build.version.release', '?')} "
                           f"(SDK {props.get('ro.build.version.sdk', '?')})"},
        "cpu": {"model": soc, "arch": arch, "clusters": clusters, "isa": normalize_isa(features, arch)},
        "memory": memory,
        "accelerators": accelerators,
        "backends": backends,
        "notes": notes,
    }
    from edgekit.profile.catalog import parse_profile

    return parse_profile(data, f"adb device {serial}")
