"""``edgekit profile``: detect and measure this host (or an Android phone over adb)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log, out, progress
from edgekit.errors import UserError


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror}", "pass --out to a writable path") from None


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


def _summary(p) -> None:
    c, m = p.cpu, p.memory
    clusters = ", ".join(f"{cl.cores}x {cl.name}" + (f" @ {cl.max_freq_ghz.value:.2f} GHz" if cl.max_freq_ghz else "")
                         for cl in c.clusters)
    _say(f"device   {p.identity.display_name}  [{p.identity.device_class}]  name={p.name}")
    _say(f"cpu      {c.model} ({c.arch}): {clusters}")
    _say(f"isa      {' '.join(c.isa) or '-'}")
    _say(f"memory   {m.total_gib.value:.2f} GiB total, {m.app_usable_gib.value:.2f} GiB usable "
              f"({m.app_usable_gib.source})")
    for g in p.accelerators.gpus:
        mem = f"{g.memory_gib.value:.1f} GiB" if g.memory_gib else "unified"
        _say(f"gpu      {g.count}x {g.name} ({mem})")
    for n in p.accelerators.npus:
        _say(f"npu      {n.name}" + (f" ({n.peak_int8_tops.value:g} TOPS)" if n.peak_int8_tops else ""))
    _say(f"backends {', '.join(p.backends)}")
    if p.measured:
        for s in p.measured.bandwidth:
            _say(f"bw       {s.kind:4s} {s.device} {s.threads:3d} threads  {s.gbps:8.1f} GB/s  ({s.buffer_mib} MiB)")
        for s in p.measured.compute:
            unit = "GOP/s" if s.dtype == "int8" else "GFLOP/s"
            _say(f"compute  {s.op} {s.dtype:4s} {s.device} {s.threads:3d} threads  {s.gflops:9.1f} {unit}  "
                      f"{'x'.join(map(str, s.shape))}")


def profile(
    *,
    out_file: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write the profile JSON here "
                                                     "(usable as `edgekit plan --device FILE`).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller buffers, fewer repeats, 1 and N threads "
                                        "(under 20 s).")] = False,
    adb: Annotated[Optional[str], typer.Option("--adb", metavar="SERIAL", help="Profile the Android device "
                                               "with this adb serial instead of this host.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Largest thread count to "
                                                   "measure (default: usable cores).")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="identity.name of the profile.")] = None,
    no_measure: Annotated[bool, typer.Option("--no-measure", help="Detect only; skip the benchmarks.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the profile as JSON on stdout.")] = False,
) -> None:
    """Detect the hardware and measure memory bandwidth and GEMM/GEMV throughput.

    Examples:
      edgekit profile --quick
      edgekit profile --out my-host.json --json
      edgekit profile --adb R5CX1234ABC --out s24.json
    """
    if adb is not None:
        from edgekit.profile.adb import profile_adb

        prof = profile_adb(adb, name=name)
        log(f"profiled adb device {adb}")
    else:
        from edgekit.profile.host import measurement_steps, profile_host

        steps = 0 if no_measure else measurement_steps(quick=quick, threads=threads)
        log(f"profiling this host ({'quick' if quick else 'full'}{', detect only' if no_measure else ''})")
        with progress("measuring", steps or None) as advance:
            prof = profile_host(quick=quick, threads=threads, name=name, measure=not no_measure, advance=advance)
    data = prof.to_json_dict()
    if out_file is not None:
        _write(out_file, data)
        log(f"wrote {out_file}")
    if json_out:
        emit_json(data)
    else:
        _summary(prof)


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
