"""One error hierarchy that carries its exit code.

Library code raises these and never prints or exits; the CLI wrapper turns
them into a single `Error: <file>: <problem>` line and the exit code.
"""
from __future__ import annotations


class WanExportError(Exception):
    """Base error. `path` names the file at fault, when there is one."""

    exit_code = 2

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)

    def one_line(self) -> str:
        text = " ".join(self.message.split())
        return f"{self.path}: {text}" if self.path else text


class BadInputError(WanExportError):
    """Corrupt, unsafe, unknown or inconsistent input (exit 2)."""


class UnsupportedError(WanExportError):
    """A valid request this tool cannot honour (exit 2)."""


class ParityError(WanExportError):
    """An artifact computed something different from the reference (exit 1)."""

    exit_code = 1
