"""Atomic outputs: build a file or folder under a temp name, rename when complete.

An interrupted or failed run never leaves anything under the final name, and a
full disk becomes one clear error instead of a half-written artifact.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile

from wan_export.errors import BadInputError, WanExportError


def _os_error(e: OSError, path: str) -> WanExportError:
    if e.errno == errno.ENOSPC:
        return BadInputError("no space left on device while writing", path)
    return BadInputError(f"cannot write: {e.strerror or e}", path)


@contextlib.contextmanager
def atomic_file(path: str, mode: str = "wb"):
    """Yield a file object writing to a temp file beside `path`; rename on success."""
    with atomic_path(path, overwrite=True) as tmp:
        with open(tmp, mode) as f:
            yield f
            f.flush()


@contextlib.contextmanager
def atomic_dir(path: str, overwrite: bool = False):
    """Yield a temp folder beside `path`; it replaces `path` only on success."""
    path = os.path.abspath(path)
    if os.path.exists(path) and not overwrite and (not os.path.isdir(path) or os.listdir(path)):
        raise BadInputError("output exists (use --overwrite)", path)
    parent = os.path.dirname(path)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=parent)
    except OSError as e:
        raise _os_error(e, path) from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if os.path.exists(path):
            old = tmp + ".old"
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise _os_error(e, path) from None
    except BaseException:
        _remove(tmp)
        raise


class AtomicWriter:
    """The context-manager protocol of the streaming writers: close() on success, abort() on error."""

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:
            self.abort()
        return False


def check_output_file(path: str, overwrite: bool) -> None:
    if os.path.exists(path) and not overwrite:
        raise BadInputError("output exists (use --overwrite)", path)


def _remove(p: str) -> None:
    if os.path.isdir(p):
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(p)


@contextlib.contextmanager
def atomic_path(path: str, overwrite: bool = False):
    """Yield a temp path beside `path` for tools that write files by name (ffmpeg); rename on success."""
    path = os.path.abspath(path)
    check_output_file(path, overwrite)
    parent = os.path.dirname(path)
    base, ext = os.path.splitext(os.path.basename(path))
    try:
        os.makedirs(parent, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=f".partial{ext}", dir=parent)
        os.close(fd)
    except OSError as e:
        raise _os_error(e, path) from None
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        _remove(tmp)
        raise _os_error(e, path) from None
    except BaseException:
        _remove(tmp)
        raise
