"""``edgekit build-runner``: build (or reuse) the native C++ runner and the CPU kernel libraries."""

from __future__ import annotations

from typing import Annotated

import typer

from edgekit.cli.common import emit_json, log


def build_runner(
    *,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if a cached build exists.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the build result as JSON.")] = False,
) -> None:
    """Build the native runner (edgekit_runner) against the installed executorch wheel.

    The build is cached under ~/.cache/edgekit/native/<key>/ ($EDGEKIT_CACHE overrides) and
    reused until the C++ sources or the executorch version change. Prints the runner's path.

    Examples:
      edgekit build-runner
      edgekit build-runner --force --json
    """
    from edgekit.runtime.native import build_runner_info

    info = build_runner_info(force=force)
    if json_out:
        emit_json(info.to_dict())
        return
    log(f"{'built' if info.built else 'reused'} runner {info.key} "
        f"(executorch {info.executorch_version}{f', {info.seconds:.1f} s' if info.built else ''})")
    typer.echo(info.path)


def register(app: typer.Typer) -> None:
    app.command("build-runner")(build_runner)
