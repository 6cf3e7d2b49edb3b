"""Entry point: builds the Typer app from the command modules and maps errors to exit codes."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated, Optional

import typer

from edgekit import __version__
from edgekit.errors import EdgekitError

app = typer.Typer(
    name="edgekit",
    help="Profile a device, plan under its memory budget, quantize, export, verify and bench a small LM.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines register(app). Order is the order in --help.
COMMANDS = ["generate", "profile", "devices", "plan", "quantize", "export", "run", "chat",
            "verify", "bench", "eval", "build_runner"]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                    help="Print the version and exit.")] = None,
) -> None:
    """edgekit: profile -> plan -> quantize -> export -> verify -> bench."""


for _name in COMMANDS:
    try:
        _mod = importlib.import_module(f"edgekit.cli.{_name}")
    except ModuleNotFoundError as _e:
        if _e.name != f"edgekit.cli.{_name}":
            raise
        continue
    _mod.register(app)


def main() -> None:
    """Run the CLI: user errors exit 2 with one line, internal ones 1; traceback only with
    EDGEKIT_DEBUG=1."""
    debug = os.environ.get("EDGEKIT_DEBUG") == "1"
    try:
        rc = app(standalone_mode=False)  # click returns typer.Exit's code instead of raising
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except EdgekitError as e:
        if debug:
            raise
        print(e.one_line(), file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors and real bugs
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(2)
        if debug:
            raise
        print(f"error: internal failure: {type(e).__name__}: {e} | hint: rerun with EDGEKIT_DEBUG=1 "
              "for a traceback and report it", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
