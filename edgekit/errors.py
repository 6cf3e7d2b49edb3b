"""Typed errors. The library raises these; the CLI turns them into one line and an exit code.

Every user-facing error carries a ``hint`` saying how to fix it. ``UserError`` subclasses exit
with code 2 (bad input), ``InternalError`` with 1.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """Base class. ``exit_code`` is what the CLI returns."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The single line the CLI prints: ``error: ... hint: ...``."""
        text = f"error: {self.message}"
        if self.hint:
            text += f" | hint: {self.hint}"
        return text.replace("\n", " ")


class UserError(EdgekitError):
    """Bad input from the user: a path, a flag, a file. Exit code 2."""

    exit_code = 2


class ModelLoadError(UserError):
    """A checkpoint or tokenizer is missing, truncated, corrupt or of an unsupported kind."""


class PackageError(UserError):
    """An exported package is missing files, fails its checksums or has an unknown schema."""


class ProfileError(UserError):
    """A device profile is missing or malformed."""


class BudgetError(UserError):
    """A memory budget that cannot hold the requested configuration."""


class InternalError(EdgekitError):
    """A bug or an environment failure (e.g. a toolchain crashed). Exit code 1."""

    exit_code = 1
