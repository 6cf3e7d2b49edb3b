"""Helpers shared by CLI commands: JSON/stdout output, stderr logging, progress bars."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

# Results go to stdout; logs and progress to stderr.
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def log(msg: str) -> None:
    """A log line on stderr."""
    err.print(msg, markup=False)


def emit_json(obj: Any) -> None:
    """Write a result as JSON on stdout (sorted keys, 2-space indent)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Any]:
    """A progress bar on stderr; yields ``advance(n=1)``. Silent when stderr is not a terminal
    unless EDGEKIT_PROGRESS=1, so logs in CI stay readable."""
    import os

    enabled = err.is_terminal or os.environ.get("EDGEKIT_PROGRESS") == "1"
    if not enabled:
        yield lambda n=1: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, transient=True) as p:
        task = p.add_task(description, total=total)
        yield lambda n=1: p.advance(task, n)
