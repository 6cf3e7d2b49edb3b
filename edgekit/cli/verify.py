"""``edgekit verify``: check a package's files and programs against its manifest."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from edgekit.cli.common import emit_json, log, out


def verify(
    package: Annotated[str, typer.Argument(help="Package directory written by `edgekit export`.")],
    *,
    source: Annotated[Optional[str], typer.Option("--source", help="Also compare with the eager model of this checkpoint.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Verify checksums, then every program against the golden outputs (and --source).

    Exit 0 when all checks pass, 1 when a numeric check fails, 2 (one line naming the file) for a
    damaged package: missing, truncated or corrupt file, or an unknown manifest schema.

    Examples:
      edgekit verify out/stories
      edgekit verify out/stories --source ../shared/models/stories260K --json
    """
    from edgekit.export.verify import verify_package

    rep = verify_package(package, source=source, threads=threads, log=log)
    if json_out:
        emit_json(rep)
    else:
        from rich.table import Table

        t = Table(title=f"verify {package}")
        for c in ("check", "target", "result", "detail"):
            t.add_column(c)
        for r in rep["rows"]:
            t.add_row(r["check"], r["target"], "[green]pass[/]" if r["ok"] else "[red]FAIL[/]", r["detail"])
        out.print(t)
        out.print("[green]all checks passed[/]" if rep["ok"] else "[red]verification failed[/]")
    if not rep["ok"]:
        # sys.exit, not typer.Exit: click returns Exit codes from app(standalone_mode=False)
        # and main() does not pass that return value on.
        sys.exit(1)


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
