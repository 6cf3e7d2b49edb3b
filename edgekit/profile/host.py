"""Profile the machine edgekit runs on: detect the hardware, then measure what it really does.

Detection: CPU model, ISA and caches from py-cpuinfo, ``/proc/cpuinfo`` and ``/sys``; clusters
from per-core ``cpufreq`` maxima; RAM from psutil and the cgroup limit; NVIDIA GPUs from
``nvidia-smi`` or ``torch.cuda``; datasheet numbers of a recognised GPU from the catalog.

Measurement (all best-of-N, warm-up excluded, one thread count at a time via
``torch.set_num_threads``):

- read bandwidth: ``torch.sum`` over a float32 buffer >= 8x the last-level cache (256 MiB
  ``--quick``, 1 GiB otherwise); bytes = buffer size;
- copy bandwidth: ``dst.copy_(src)`` between two such buffers; bytes = 2x buffer size (STREAM
  convention, write-allocate traffic not counted);
- fp32 GEMM (``torch.mm``, 1024^3 quick / 2048^3) and GEMV (``torch.mv`` on a 4096x4096 = 64 MiB
  matrix, bandwidth-bound as in decode); int8 GEMM/GEMV through ``torch._int_mm`` (int32
  accumulate);
- on a CUDA GPU: device copy bandwidth and fp16 GEMM.

Example::

    from edgekit.profile.host import profile_host
    p = profile_host(quick=True)
    p.measured.best_bandwidth_gbps("read")
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable

from edgekit import __version__
from edgekit.errors import ProfileError
from edgekit.profile.schema import (GIB, BandwidthSample, ComputeSample, DeviceProfile, Gpu,
                                    Measured, Sourced)

MIB = 1 << 20
Advance = Callable[[int], None]

# /proc/cpuinfo feature names -> schema ISA names.
_ARM_FEATURES = {"asimd": "neon", "fphp": "fp16", "asimdhp": "fp16", "asimddp": "dotprod",
                 "i8mm": "i8mm", "bf16": "bf16", "sve": "sve", "sve2": "sve2", "sme": "sme",
                 "sme2": "sme2"}
_X86_FEATURES = {"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                 "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8",
                 "amx_bf16"}
_X86_ALIASES = {"avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
                "avxvnni": "avx_vnni", "amxtile": "amx_tile", "amxint8": "amx_int8", "amxbf16": "amx_bf16"}


def normalize_isa(flags: Iterable[str], arch: str) -> list[str]:
    """Schema ISA names from Linux cpuinfo flags (x86 ``flags`` or Arm ``Features``)."""
    out: set[str] = set()
    for f in flags:
        f = f.strip().lower()
        if arch == "arm64":
            if f in _ARM_FEATURES:
                out.add(_ARM_FEATURES[f])
        else:
            f = _X86_ALIASES.get(f, f)
            if f in _X86_FEATURES:
                out.add(f)
    if arch == "arm64":
        out.add("neon")  # mandatory in AArch64
    return sorted(out)


def normalize_arch(machine: str) -> str:
    m = machine.lower()
    if m in ("x86_64", "amd64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8l") or m.startswith("armv9"):
        return "arm64"
    if m.startswith("armv7"):
        return "armv7"
    if m == "riscv64":
        return "riscv64"
    return "other"


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


# --- detection --------------------------------------------------------------------------------

def usable_cpus() -> int:
    """CPUs this process may run on (affinity mask), at most the physical core count."""
    import psutil

    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    phys = psutil.cpu_count(logical=False) or n
    return max(1, min(n, phys))


def detect_cpu() -> dict:
    """CPU model, arch, ISA, SMT threads and clusters (grouped by per-core max frequency)."""
    import psutil

    arch = normalize_arch(platform.machine())
    model, flags, mhz = "", [], 0.0
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k in ("model name", "hardware", "cpu model") and not model:
            model = v.strip()
        elif k in ("flags", "features") and not flags:
            flags = v.split()
        elif k == "cpu mhz":
            mhz = max(mhz, float(v or 0))
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
        model = info.get("brand_raw") or model
        flags = flags or info.get("flags", [])
        hz = (info.get("hz_advertised") or [0])[0]
        mhz = mhz or hz / 1e6
    except Exception:  # py-cpuinfo is best effort; /proc already gave the essentials
        pass
    model = model or platform.processor() or "unknown CPU"
    freqs: dict[int, float] = {}
    for d in sorted(Path("/sys/devices/system/cpu").glob("cpu[0-9]*")):
        f = _read(d / "cpufreq" / "cpuinfo_max_freq")
        if f and f.isdigit():
            freqs[int(d.name[3:])] = int(f) / 1e6  # kHz -> GHz
    clusters = []
    if freqs:
        by_freq: dict[float, int] = {}
        for ghz in freqs.values():
            by_freq[ghz] = by_freq.get(ghz, 0) + 1
        for ghz, n in sorted(by_freq.items(), reverse=True):
            clusters.append({"name": f"{n} cores @ {ghz:.2f} GHz", "cores": n,
                             "max_freq_ghz": {"value": round(ghz, 3),
                                              "source": "measured: /sys cpufreq cpuinfo_max_freq"}})
    else:
        n = psutil.cpu_count(logical=False) or os.cpu_count() or 1
        c = {"name": model, "cores": n}
        if mhz:
            c["max_freq_ghz"] = {"value": round(mhz / 1000, 3),
                                 "source": "detected: /proc/cpuinfo 'cpu MHz' (no cpufreq; may be the base clock)"}
        clusters.append(c)
    logical = psutil.cpu_count(logical=True) or 1
    cpu = {"model": model, "arch": arch, "clusters": clusters, "isa": normalize_isa(flags, arch)}
    if logical > sum(c["cores"] for c in clusters):
        cpu["threads"] = logical
    return cpu


def detect_caches() -> dict:
    """L1d, L2 and the last-level cache of cpu0 from ``/sys/devices/system/cpu/cpu0/cache``."""
    out: dict = {}
    levels: dict[int, int] = {}
    for idx in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, typ, size = _read(idx / "level"), _read(idx / "type"), _read(idx / "size")
        if not (level and typ and size):
            continue
        m = re.match(r"(\d+)([KMG]?)", size)
        if not m:
            continue
        kib = int(m.group(1)) * {"": 1 / 1024, "K": 1, "M": 1024, "G": 1024 * 1024}[m.group(2)]
        if typ in ("Data", "Unified"):
            levels[int(level)] = int(kib)
    src = "detected: /sys/devices/system/cpu/cpu0/cache"
    if 1 in levels:
        out["l1d_kib"] = {"value": levels[1], "source": src}
    if 2 in levels:
        out["l2_kib"] = {"value": levels[2], "source": src}
    if levels and max(levels) >= 3:
        out["llc_kib"] = {"value": levels[max(levels)], "source": src}
    return out


def cgroup_memory_limit() -> int | None:
    """The cgroup (v2 or v1) memory limit of this process, or None when unlimited."""
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        v = _read(p)
        if v and v.isdigit() and int(v) < (1 << 60):
            return int(v)
    return None


def detect_memory() -> dict:
    """Total RAM and what this process can really use: min(available now, cgroup limit)."""
    import psutil

    vm = psutil.virtual_memory()
    usable, why = vm.available, "measured: psutil available memory at profile time"
    lim = cgroup_memory_limit()
    if lim is not None and lim < usable:
        usable, why = lim, "measured: cgroup memory limit"
    return {"total_gib": {"value": round(vm.total / GIB, 2), "source": "measured: psutil total memory"},
            "app_usable_gib": {"value": round(min(usable, vm.total) / GIB, 2), "source": why}}


def _catalog_gpu(name: str) -> Gpu | None:
    """Datasheet numbers of a GPU whose name the catalog knows (``NVIDIA H200`` -> ``H200 SXM``)."""
    from edgekit.profile.catalog import list_profiles

    key = re.sub(r"[^a-z0-9]", "", name.lower().replace("nvidia", "").replace("geforce", ""))
    if not key:
        return None
    try:
        profiles = list_profiles()
    except ProfileError:
        return None
    for p in profiles:
        for g in p.accelerators.gpus:
            gk = re.sub(r"[^a-z0-9]", "", g.name.lower().replace("nvidia", "").replace("geforce", ""))
            if gk.startswith(key) or key.startswith(gk.split("(")[0]):
                return g
    return None


def detect_gpus() -> list[dict]:
    """NVIDIA GPUs from ``nvidia-smi`` (or ``torch.cuda``), with the catalog's datasheet numbers
    when the model is known."""
    found: list[tuple[str, float]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True, timeout=20)
            for line in r.stdout.strip().splitlines() if r.returncode == 0 else []:
                name, _, mem = line.rpartition(",")
                found.append((name.strip(), float(mem) * MIB / GIB))
        except (OSError, subprocess.TimeoutExpired, ValueError):
            found = []
    if not found:
        try:
            import torch

            if torch.cuda.is_available():
                for i in range(torch.cuda.device_count()):
                    pr = torch.cuda.get_device_properties(i)
                    found.append((pr.name, pr.total_memory / GIB))
        except Exception:  # no CUDA torch: no GPU to report
            found = []
    gpus: dict[str, dict] = {}
    for name, mem_gib in found:
        if name in gpus:
            gpus[name]["count"] += 1
            continue
        g: dict = {"name": name, "count": 1,
                   "memory_gib": {"value": round(mem_gib, 2), "source": "measured: nvidia-smi memory.total"},
                   "usable_memory_gib": {"value": round(mem_gib, 2), "source": "measured: nvidia-smi memory.total"}}
        known = _catalog_gpu(name)
        if known is not None:
            for k in ("bandwidth_gbps", "peak_fp32_tflops", "peak_fp16_tflops", "peak_int8_tops"):
                v = getattr(known, k)
                if v is not None:
                    g[k] = {"value": v.value, "source": f"catalog ({known.name}): {v.source}"}
        gpus[name] = g
    return list(gpus.values())


def classify(cpu: dict, gpus: list[dict]) -> str:
    """A device class for this host: GPU hosts by GPU family, else laptop (battery), board
    (Arm without a battery) or server."""
    if gpus:
        server = re.compile(r"\b(A\d+G?|H\d+|L4|L40S?|T4|V100|P100|B\d+|GH200|MI\d+)\b", re.I)
        return "server-gpu" if server.search(gpus[0]["name"]) else "desktop-gpu"
    try:
        import psutil

        if psutil.sensors_battery() is not None:
            return "laptop"
    except (AttributeError, NotImplementedError):
        pass
    return "board" if cpu["arch"] in ("arm64", "armv7") and sum(c["cores"] for c in cpu["clusters"]) <= 8 \
        else "server"


# --- measurement ------------------------------------------------------------------------------

def thread_counts(n: int, quick: bool) -> list[int]:
    """1 and ``n`` for --quick; otherwise powers of two up to ``n`` plus ``n``."""
    if quick:
        return sorted({1, n})
    ts, t = [], 1
    while t < n:
        ts.append(t)
        t *= 2
    return ts + [n]


def _best(fn: Callable[[], object], repeats: int, slow_s: float = 1.0) -> float:
    """Best time of ``repeats`` calls after an uncounted warm-up; a call slower than ``slow_s``
    (a slow board, a reference kernel) is repeated only once so --quick stays quick."""
    t0 = time.perf_counter()
    fn()  # warm-up, not counted
    if time.perf_counter() - t0 > slow_s:
        repeats = 1
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bandwidth_buffer_mib(quick: bool, llc_kib: float | None) -> int:
    """Buffer size: >= 8x the LLC, 256 MiB (quick) or 1 GiB, and at most 1/4 of free RAM
    (copy needs two buffers)."""
    import psutil

    want = 256 if quick else 1024
    if llc_kib:
        want = max(want, int(8 * llc_kib / 1024))
    cap = int(psutil.virtual_memory().available / MIB / 4)
    size = min(want, cap)
    if size < 64:
        raise ProfileError(f"only {cap * 4} MiB free: too little to measure memory bandwidth honestly",
                           "close other programs, or pass --no-measure")
    return size


def measure_bandwidth(threads: list[int], buffer_mib: int, repeats: int,
                      advance: Advance | None = None) -> list[BandwidthSample]:
    """Read (``sum``) and copy (``copy_``) bandwidth at each thread count, best of ``repeats``."""
    import torch

    n = buffer_mib * MIB // 4
    src = torch.ones(n, dtype=torch.float32)  # ones() touches every page
    dst = torch.empty_like(src)
    dst.fill_(0.0)
    out = []
    prev = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            sec = _best(lambda: src.sum(), repeats)
            out.append(BandwidthSample(kind="read", threads=t, gbps=round(n * 4 / sec / 1e9, 2),
                                       buffer_mib=buffer_mib, repeats=repeats))
            if advance:
                advance(1)
            sec = _best(lambda: dst.copy_(src), repeats)
            out.append(BandwidthSample(kind="copy", threads=t, gbps=round(2 * n * 4 / sec / 1e9, 2),
                                       buffer_mib=buffer_mib, repeats=repeats))
            if advance:
                advance(1)
    finally:
        torch.set_num_threads(prev)
        del src, dst
    return out


def _int_mm_available() -> bool:
    import torch

    try:
        torch._int_mm(torch.ones(32, 32, dtype=torch.int8), torch.ones(32, 32, dtype=torch.int8))
        return True
    except (RuntimeError, AttributeError, NotImplementedError):
        return False


def measure_compute(threads: list[int], quick: bool, repeats: int,
                    advance: Advance | None = None) -> list[ComputeSample]:
    """fp32 and int8 GEMM and GEMV throughput at each thread count (GFLOP/s, GOP/s for int8)."""
    import torch

    g = torch.Generator().manual_seed(0)
    size = 1024 if quick else 2048
    A = torch.randn(size, size, generator=g)
    B = torch.randn(size, size, generator=g)
    W = torch.randn(4096, 4096, generator=g)  # 64 MiB: larger than any LLC, like decode weights
    x = torch.randn(4096, generator=g)
    has_int8 = _int_mm_available()
    Ai = torch.randint(-127, 127, (size, size), dtype=torch.int8, generator=g)
    Bi = torch.randint(-127, 127, (size, size), dtype=torch.int8, generator=g)
    Wi = torch.randint(-127, 127, (4096, 8192), dtype=torch.int8, generator=g)  # 32 MiB
    xi = torch.randint(-127, 127, (1, 4096), dtype=torch.int8, generator=g)
    cases: list[tuple[str, str, list[int], Callable[[], object]]] = [
        ("gemm", "fp32", [size, size, size], lambda: torch.mm(A, B)),
        ("gemv", "fp32", [1, 4096, 4096], lambda: torch.mv(W, x)),
    ]
    if has_int8:
        cases += [("gemm", "int8", [size, size, size], lambda: torch._int_mm(Ai, Bi)),
                  ("gemv", "int8", [1, 8192, 4096], lambda: torch._int_mm(xi, Wi))]
    out = []
    prev = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            for op, dtype, (M, N, K), fn in cases:
                sec = _best(fn, repeats)
                out.append(ComputeSample(op=op, dtype=dtype, threads=t, shape=[M, N, K], repeats=repeats,
                                         gflops=round(2 * M * N * K / sec / 1e9, 2)))
                if advance:
                    advance(1)
    finally:
        torch.set_num_threads(prev)
    return out


def measure_cuda(quick: bool, repeats: int) -> tuple[list[BandwidthSample], list[ComputeSample]]:
    """Device copy bandwidth and fp16 GEMM on GPU 0, when torch has CUDA."""
    import torch

    if not torch.cuda.is_available():
        return [], []
    dev = torch.device("cuda", 0)
    mib = 1024 if quick else 4096
    src = torch.ones(mib * MIB // 2, dtype=torch.float16, device=dev)
    dst = torch.empty_like(src)

    def timed(fn):
        fn()
        torch.cuda.synchronize()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        return best

    sec = timed(lambda: dst.copy_(src))
    bw = [BandwidthSample(kind="copy", threads=1, gbps=round(2 * mib * MIB / sec / 1e9, 1),
                          buffer_mib=mib, repeats=repeats, device="gpu")]
    del src, dst
    n = 4096 if quick else 8192
    a = torch.randn(n, n, device=dev, dtype=torch.float16)
    b = torch.randn(n, n, device=dev, dtype=torch.float16)
    sec = timed(lambda: a @ b)
    comp = [ComputeSample(op="gemm", dtype="fp16", threads=1, shape=[n, n, n], repeats=repeats,
                          gflops=round(2 * n ** 3 / sec / 1e9, 1), device="gpu")]
    return bw, comp


# --- the profile ------------------------------------------------------------------------------

def measurement_steps(*, quick: bool, threads: int | None = None) -> int:
    """How many progress steps :func:`profile_host` will report (for a progress bar)."""
    ts = thread_counts(threads or usable_cpus(), quick)
    return len(ts) * (2 + (4 if _int_mm_available() else 2))


def profile_host(*, quick: bool = False, threads: int | None = None, name: str | None = None,
                 measure: bool = True, advance: Advance | None = None) -> DeviceProfile:
    """Detect this machine and (unless ``measure=False``) measure its bandwidth and matmul
    throughput; returns a schema-valid :class:`DeviceProfile`.

    Args:
        quick: smaller buffers and fewer repeats, threads {1, N} only (about 5-15 s).
        threads: the largest thread count to measure (default: usable physical cores).
        name: ``identity.name`` (default: ``host-<hostname>``).
        advance: called with 1 after each measurement step (progress bars).

    Raises:
        ProfileError: too little free memory to measure bandwidth honestly.
    """
    cpu = detect_cpu()
    caches = detect_caches()
    memory = detect_memory()
    gpus = detect_gpus()
    dev_class = classify(cpu, gpus)
    host = re.sub(r"[^a-z0-9.-]+", "-", platform.node().lower()).strip("-.") or "this"
    backends = ["xnnpack", "onnxruntime"] + (["cuda"] if gpus else [])
    data: dict = {
        "schema_version": 1,
        "identity": {"name": name or f"host-{host}", "display_name": f"{cpu['model']} ({platform.node()})",
                     "class": dev_class, "vendor": "unknown", "soc": cpu["model"],
                     "os": f"{platform.system()} {platform.release()}"},
        "cpu": cpu, "caches": caches, "memory": memory,
        "accelerators": {"gpus": gpus}, "backends": backends,
        "notes": ["generated by `edgekit profile`"],
    }
    if measure:
        n = threads or usable_cpus()
        ts = thread_counts(n, quick)
        repeats = 3 if quick else 5
        buf = bandwidth_buffer_mib(quick, caches.get("llc_kib", {}).get("value"))
        bw = measure_bandwidth(ts, buf, repeats, advance)
        comp = measure_compute(ts, quick, repeats, advance)
        gbw, gcomp = measure_cuda(quick, repeats) if gpus else ([], [])
        data["measured"] = Measured(
            tool=f"edgekit {__version__} profile{' --quick' if quick else ''}",
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            method=(f"best of {repeats} after a warm-up; read = torch.sum over a {buf} MiB float32 buffer, "
                    f"copy = copy_ between two (2x bytes); GEMM {'1024' if quick else '2048'}^3 torch.mm / "
                    "torch._int_mm; GEMV torch.mv on 4096x4096 fp32, _int_mm 1x4096x8192 int8; "
                    f"threads {ts}"),
            bandwidth=bw + gbw, compute=comp + gcomp).model_dump()
    from edgekit.profile.catalog import parse_profile

    return parse_profile(data, "this host")
