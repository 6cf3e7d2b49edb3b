"""``edgekit devices``: list the device catalog (or show one profile)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, out


def print_table(table) -> None:
    """A rich table on stdout; pipes and files get 200 columns instead of wrapped 80-column cells."""
    if out.is_terminal:
        out.print(table)
    else:
        import sys

        from rich.console import Console

        Console(file=sys.stdout, width=200, highlight=False).print(table)


def _row(p) -> dict:
    g = p.accelerators.gpus[0] if p.accelerators.gpus else None
    n = p.accelerators.npus[0] if p.accelerators.npus else None
    return {
        "name": p.name, "class": p.identity.device_class, "display_name": p.identity.display_name,
        "soc": p.identity.soc, "cores": p.cpu.cores,
        "ram_gib": p.memory.total_gib.value, "app_usable_gib": p.memory.app_usable_gib.value,
        "ram_bandwidth_gbps": p.memory.bandwidth_gbps.value if p.memory.bandwidth_gbps else None,
        "gpu": g.name if g else None,
        "gpu_memory_gib": g.memory_gib.value if g and g.memory_gib else None,
        "gpu_bandwidth_gbps": g.bandwidth_gbps.value if g and g.bandwidth_gbps else None,
        "npu": n.name if n else None,
        "npu_tops": n.peak_int8_tops.value if n and n.peak_int8_tops else None,
        "backends": list(p.backends),
    }


def devices(
    name: Annotated[Optional[str], typer.Argument(help="Show this device's full profile.")] = None,
    *,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """List the shipped device profiles (device_profiles/), or show one in full.

    Examples:
      edgekit devices
      edgekit devices --json
      edgekit devices galaxy-s24 --json
    """
    from edgekit.profile import find_profile, list_profiles

    if name is not None:
        p = find_profile(name)
        if json_out:
            emit_json(p.to_json_dict())
        else:
            import json

            out.print(json.dumps(p.to_json_dict(), indent=2), markup=False)
        return
    rows = [_row(p) for p in list_profiles()]
    if json_out:
        emit_json(rows)
        return
    from rich.table import Table

    t = Table(title=f"{len(rows)} device profiles", title_justify="left")
    numeric = {"RAM GiB", "usable GiB", "RAM GB/s", "GPU GiB", "GPU GB/s", "NPU TOPS"}
    for col in ("name", "class", "SoC / CPU", "RAM GiB", "usable GiB", "RAM GB/s", "GPU", "GPU GiB", "GPU GB/s",
                "NPU TOPS", "backends"):
        t.add_column(col, justify="right" if col in numeric else "left")

    def num(v, fmt="{:g}"):
        return "-" if v is None else fmt.format(v)

    for r in rows:
        t.add_row(r["name"], r["class"], r["soc"] or "-", num(r["ram_gib"]), num(r["app_usable_gib"]),
                  num(r["ram_bandwidth_gbps"]), r["gpu"] or "-", num(r["gpu_memory_gib"]),
                  num(r["gpu_bandwidth_gbps"]), num(r["npu_tops"]), ",".join(r["backends"]))
    print_table(t)


def register(app: typer.Typer) -> None:
    app.command("devices")(devices)
