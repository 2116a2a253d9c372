"""Copy byte ranges between files inside the kernel, appending at the output's position.

Unchanged tensor bytes (renames, merged shards) never pass through user space:
`os.copy_file_range` copies page-cache pages (or reflinks where the filesystem
can), falling back to `os.sendfile`, then to a plain read/write loop where
neither is available (other systems, odd filesystems). Adjacent ranges are
coalesced into one call, so a file of many small tensors costs a few syscalls.
"""
from __future__ import annotations

import errno
import os

from wan_export.errors import BadInputError

# errors meaning "this call cannot do that here": try the next method
_UNSUPPORTED = {errno.ENOSYS, errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM,
                getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
COALESCE_LIMIT = 32 << 20     # flush a run every 32 MiB so the next tensor's NaN check overlaps the copy
_PLAIN_CHUNK = 8 << 20
_broken: set[str] = set()     # methods found unsupported in this process


def _copy_file_range(src: int, dst: int, offset: int, n: int) -> int:
    return os.copy_file_range(src, dst, n, offset)


def _sendfile(src: int, dst: int, offset: int, n: int) -> int:
    return os.sendfile(dst, src, offset, n)


def _plain(src: int, dst: int, offset: int, n: int) -> int:
    data = os.pread(src, min(n, _PLAIN_CHUNK), offset)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]
    return len(data)


METHODS = (("copy_file_range", _copy_file_range), ("sendfile", _sendfile), ("plain", _plain))


def copy_range(src: int, offset: int, dst: int, n: int, path: str = "") -> None:
    """Append n bytes of fd `src` from `offset` at fd `dst`'s current position."""
    while n > 0:
        k = 0
        for name, fn in METHODS:
            if name in _broken or not hasattr(os, name if name != "plain" else "pread"):
                continue
            try:
                k = fn(src, dst, offset, n)
                break
            except OSError as e:
                if e.errno not in _UNSUPPORTED or name == "plain":
                    raise
                _broken.add(name)
        if k <= 0:
            raise BadInputError(f"truncated while copying (byte {offset})", path)
        offset += k
        n -= k


class RangeCopier:
    """Collects (source path, offset, length) runs for one output fd and copies them in order."""

    def __init__(self, dst_fd: int):
        self.dst = dst_fd
        self._fds: dict[str, int] = {}
        self._run: list = []          # [path, offset, length] of the pending run

    def add(self, path: str, offset: int, n: int) -> None:
        run = self._run
        if run and run[0] == path and run[1] + run[2] == offset and run[2] + n <= COALESCE_LIMIT:
            run[2] += n
            return
        self.flush()
        self._run = [path, offset, n]

    def flush(self) -> None:
        if self._run:
            path, offset, n = self._run
            self._run = []
            copy_range(self._fd(path), offset, self.dst, n, path)

    def _fd(self, path: str) -> int:
        if path not in self._fds:
            try:
                self._fds[path] = os.open(path, os.O_RDONLY)
            except OSError as e:
                raise BadInputError(f"cannot read: {e.strerror}", path) from None
        return self._fds[path]

    def close(self) -> None:
        self._run = []
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
