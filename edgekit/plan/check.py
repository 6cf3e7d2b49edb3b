"""Check the planner against reality: predict an exported package's peak memory and decode speed,
and measure the peak RSS of a real process running it.

The prediction is the one the planner makes for the same configuration: the package's
architecture as a :class:`~edgekit.plan.memory.ModelShape`, fp32 weights (what ``edgekit export``
writes without quantization), the KV cache the program allocates (``max_seq_len`` rows of fp32,
edgekit's static cache), prefill in chunks of the package's ``max_chunk``, and the process of
``edgekit run`` (Python runtime, ExecuTorch + XNNPACK or onnxruntime).

Example::

    from edgekit.plan.check import predict_package, peak_rss
    from edgekit.plan.roofline import resolve_target
    from edgekit.profile import profile_host
    tgt = resolve_target(profile_host(quick=True), "xnnpack")
    pred = predict_package("out/stories", tgt)
    pred["memory"].total, pred["speed"].decode_tok_s
    rc, out, err, rss = peak_rss(["edgekit", "run", "out/stories", "--json"])
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import UserError
from edgekit.models.config import ModelArgs
from edgekit.plan.memory import MemoryBreakdown, ModelShape, RuntimeSpec, WeightFormat, estimate_memory
from edgekit.plan.roofline import SpeedEstimate, Target, decode_speed

ENGINES = {"executorch": "executorch", "onnx": "onnxruntime"}


def package_shape(manifest: dict[str, Any]) -> ModelShape:
    """The :class:`ModelShape` of an exported package (from its manifest's ``config``)."""
    args = ModelArgs.from_dict(manifest["config"])
    return ModelShape.from_args(args, Path(str(manifest.get("source", {}).get("path", "package"))).name)


def package_format(manifest: dict[str, Any]) -> tuple[WeightFormat, str]:
    """The stored weight format of a package and its preset name (fp32 when not quantized)."""
    q = manifest.get("quantization")
    if not q:
        return WeightFormat.from_preset("fp32"), "fp32"
    name = q.get("preset")
    if name:
        return WeightFormat.from_preset(name, float_bytes=4), name
    return WeightFormat(bits=q["bits"], group_size=q.get("group_size"), float_bytes=4), f"w{q['bits']}"


def predict_package(package: str | os.PathLike, target: Target | None = None, *, kind: str = "executorch",
                    runtime: str = "python", prompt_len: int = 64, gen_len: int = 64) -> dict[str, Any]:
    """The planner's prediction for running ``package``'s ``kind`` program.

    Args:
        package: a package directory written by ``edgekit export``.
        target: the device/backend to price speed on (``None``: memory only).
        kind: ``executorch`` or ``onnx``.
        runtime: ``python`` (``edgekit run`` / ``edgekit bench``) or ``native``.
        prompt_len / gen_len: the bench protocol's prompt and generated tokens; decode speed is
            priced for that window of the static ``max_seq_len`` cache.

    Returns:
        ``{"shape", "format", "memory": MemoryBreakdown, "speed": SpeedEstimate | None, "context",
        "max_chunk", "library_pages"}``; ``library_pages``: the bytes of ``memory``'s
        ``runtime.process`` that are shared-library pages (compare ``memory.total -
        library_pages`` with a measured ``RunStats.private_peak``).

    Raises:
        UserError: not a package, or an unknown ``kind``.
    """
    from edgekit.export.package import read_manifest

    if kind not in ENGINES:
        raise UserError(f"unknown program kind {kind!r}", "use executorch or onnx")
    man = read_manifest(Path(package))
    shape = package_shape(man)
    fmt, preset = package_format(man)
    S = int(man["max_seq_len"])
    chunk = int(man["max_chunk"])
    rt = RuntimeSpec(runtime=runtime, engine=ENGINES[kind],  # type: ignore[arg-type]
                     backend="xnnpack" if kind == "executorch" else "onnxruntime")
    mem: MemoryBreakdown = estimate_memory(shape, fmt, context=S, kv_bytes=4, act_bytes=4,
                                           prefill_chunk=chunk, runtime=rt)
    speed: SpeedEstimate | None = None
    if target is not None:
        # ExecuTorch programs attend their whole static cache unless they use edgekit::sdpa_cache
        # / sdpa_kv / qkv_attn (read the visible slots only); the ONNX program's concatenated past grows with the
        # conversation, so it attends only the bench's window.
        static = kind == "executorch" and not {"edgekit::sdpa_cache", "edgekit::sdpa_kv", "edgekit::qkv_attn"} & set(
            man["programs"].get(kind, {}).get("custom_ops", []))
        speed = decode_speed(shape, fmt, target, context=S if static else min(S, prompt_len + gen_len),
                             prompt=prompt_len, kv_bytes=4, prefill_chunk=chunk, static_cache=static)
    return {"shape": shape, "format": preset, "memory": mem, "speed": speed, "context": S,
            "max_chunk": chunk, "library_pages": rt.library_pages()}


# Runs argv[2:] and writes its rusage peak RSS, CPU and wall seconds and the largest file-backed
# RSS seen to the file argv[1]. A small wrapper process is the parent, because Linux carries the
# parent's high-water RSS into a forked (or vforked) child across exec: measured straight from a
# large process (one that imported torch) every child would report at least the parent's peak.
# While waiting it samples the child's RssFile (/proc/PID/status) every few milliseconds: mapped
# shared libraries stay mapped until exit, so the largest sample is (to a few pages) their
# resident size at the peak too.
_WRAPPER = """
import os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
status, file_kib = f"/proc/{p.pid}/status", 0
while True:
    pid, code, usage = os.wait4(p.pid, os.WNOHANG)
    if pid:
        break
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("RssFile:"):
                    file_kib = max(file_kib, int(line.split()[1]))
                    break
    except (OSError, ValueError):
        pass
    time.sleep(0.005)
wall = time.perf_counter() - t0
open(sys.argv[1], "w").write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime} {wall} {file_kib}")
sys.exit(os.waitstatus_to_exitcode(code))
"""


@dataclass
class RunStats:
    """A finished command: exit status, output, its own peak RSS (bytes), CPU seconds (user +
    system) and wall seconds. ``cpu_s / wall_s`` of a one-thread program is the share of a core
    it got: below 1 when other processes took the CPU from it.

    ``file_rss``: the largest file-backed RSS sampled while it ran (bytes; 0 where ``/proc`` is
    missing or the command ended within a sample): mostly the pages of its shared libraries. Those
    are clean, shared page cache, and how many of them the kernel maps depends on the page cache,
    not on the command: right after a library was read or written sequentially (a fresh ``pip
    install``) it sits in large folios and every fault maps more of it. ``edgekit run`` on
    stories260K peaks 60-85 MiB higher then with the same anonymous memory, so compare
    ``private_peak`` when the page cache may differ."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss: int
    cpu_s: float
    wall_s: float
    file_rss: int = 0

    @property
    def private_peak(self) -> int:
        """Peak RSS without the file-backed pages (anonymous memory: heap, arenas, buffers)."""
        return self.peak_rss - min(self.file_rss, self.peak_rss)


def peak_rss(argv: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
             cwd: str | os.PathLike | None = None) -> tuple[int, str, str, int]:
    """Run ``argv`` to completion and return ``(returncode, stdout, stderr, peak_rss_bytes)``
    (:func:`run_measured` without the CPU times)."""
    r = run_measured(argv, env=env, timeout=timeout, cwd=cwd)
    return r.returncode, r.stdout, r.stderr, r.peak_rss


def run_measured(argv: list[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
                 cwd: str | os.PathLike | None = None) -> RunStats:
    """Run ``argv`` to completion and return its :class:`RunStats`.

    The peak is the child's own ``ru_maxrss`` from ``wait4`` in a small wrapper process (so no
    polling misses a short spike, and the caller's own size does not leak into the number); the
    wrapper also samples the child's file-backed RSS (``RunStats.file_rss``).

    Raises:
        UserError: not on a POSIX system with ``wait4``; the command ran past ``timeout`` seconds.
    """
    if not hasattr(os, "wait4"):
        raise UserError("measuring peak RSS needs os.wait4 (Linux/macOS)", "run this on Linux or macOS")
    with tempfile.TemporaryDirectory() as d:
        rss_file = Path(d) / "maxrss"
        try:
            r = subprocess.run([sys.executable, "-c", _WRAPPER, str(rss_file), *argv], capture_output=True,
                               text=True, env=env, cwd=cwd, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise UserError(f"{' '.join(argv[:4])} ... ran longer than {timeout} s", "raise the timeout") from None
        if not rss_file.is_file():
            raise UserError(f"could not measure the peak RSS of {' '.join(argv[:4])} ...",
                            r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "check the command")
        kib, cpu, wall, file_kib = rss_file.read_text().split()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return RunStats(r.returncode, r.stdout, r.stderr, int(kib) * scale, float(cpu), float(wall),
                    int(file_kib) * 1024)


def predicted_for_bench(package: str | os.PathLike, device: str, *, kind: str = "executorch",
                        native: bool = False, prompt_len: int = 64, gen_len: int = 64,
                        threads: int | None = None) -> dict[str, Any]:
    """What the planner predicts for an ``edgekit bench`` run of ``package`` on ``device`` (a
    catalog name or profile JSON, e.g. the host's ``edgekit profile --out``): peak memory (MiB)
    and decode tok/s / TTFT, for printing beside the measured numbers."""
    from edgekit.plan.roofline import resolve_target
    from edgekit.profile import find_profile

    backend = "xnnpack" if kind == "executorch" else "onnxruntime"
    target = resolve_target(find_profile(device), backend, threads)
    p = predict_package(package, target, kind=kind, runtime="native" if native else "python",
                        prompt_len=prompt_len, gen_len=gen_len)
    sp = p["speed"]
    return {"device": device, "peak_rss_mib": p["memory"].total / 2**20,
            "decode_tok_s": sp.decode_tok_s if sp else None,
            "ttft_ms": sp.ttft_s * 1e3 if sp else None}
