"""Progress bars on stderr for long work; silent when disabled or not a terminal."""
from __future__ import annotations

import contextlib
import sys

import click


@contextlib.contextmanager
def bar(total: int, label: str, enabled: bool = True):
    """Yield update(n). Draws a click progress bar on an interactive stderr only."""
    if not enabled or not sys.stderr.isatty() or total <= 1:
        yield lambda n=1: None
        return
    with click.progressbar(length=total, label=label, file=sys.stderr, show_pos=True) as b:
        yield b.update


def null(total: int = 0, label: str = ""):
    """A progress factory that draws nothing (library default)."""
    return bar(total, label, enabled=False)
