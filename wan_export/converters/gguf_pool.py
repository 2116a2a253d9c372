"""Quantize one tensor to several ggml types on every core, with bounded memory.

The tensor is staged once as float32 rows in shared memory; workers quantize
row chunks (blocks never cross rows, so the bytes do not depend on the worker
count or chunking) straight into a shared output buffer, which the writers
stream out. Both buffers are sized from the plan's largest tensor, so peak
memory follows the largest tensor, never the model size.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from multiprocessing import shared_memory

import numpy as np

from wan_export.quantizers.ggml import GGML_TYPES, quantize

CHUNK_ELEMENTS = 1 << 18        # ~1 MB of float32 per task: small enough to balance, big enough to amortise
_WORKER: dict = {}              # per worker process: attached shared buffers


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _context():
    # fork starts workers in milliseconds; they only run numpy on shared buffers.
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _init_worker(in_name: str, out_name: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # the parent handles Ctrl-C and terminates us
    _WORKER["in"] = shared_memory.SharedMemory(in_name)
    _WORKER["out"] = shared_memory.SharedMemory(out_name)


def _run_task(task) -> None:
    """Quantize rows [r0, r1) of the staged tensor to `type_name` into the output buffer."""
    type_name, rows, n, r0, r1, out_offset, has_imatrix = task
    x = np.ndarray((rows, n), np.float32, buffer=_WORKER["in"].buf)
    imatrix = np.ndarray((n,), np.float32, buffer=_WORKER["in"].buf, offset=rows * n * 4) if has_imatrix else None
    q = quantize(x[r0:r1], type_name, imatrix)
    out = np.ndarray(q.shape, np.uint8, buffer=_WORKER["out"].buf, offset=out_offset + r0 * q.shape[1])
    out[...] = q


class QuantEngine:
    """stage(array) then quantize(types): float32 rows -> ggml bytes for each type.

    With jobs <= 1 everything runs in this process (no shared memory, no pool).
    Results are views valid until the next `stage`.
    """

    def __init__(self, jobs: int, max_elements: int, max_row: int, max_out_bytes: int):
        self.jobs = jobs if jobs > 0 else cpu_count()
        self._pool = self._in = self._out = None
        self._x = self._imatrix = None
        self._local = True
        self._rows = self._n = 0
        if self.jobs > 1:
            in_bytes = (max_elements + max_row) * 4
            self._in = shared_memory.SharedMemory(create=True, size=max(in_bytes, 1))
            self._out = shared_memory.SharedMemory(create=True, size=max(max_out_bytes, 1))
            self._pool = _context().Pool(self.jobs, _init_worker, (self._in.name, self._out.name))

    def stage(self, arr: np.ndarray, imatrix: np.ndarray | None = None, shared: bool = True) -> np.ndarray:
        """Cast a tensor to float32 rows [rows, ne0] once; returns that float32 view.

        shared=False keeps it local (a tensor that only gets float types, which
        the shared buffer is not sized for)."""
        n = arr.shape[-1] if arr.ndim else 1
        rows = arr.size // n if n else 0
        self._local = self._pool is None or not shared
        if self._local:
            self._x = np.asarray(arr, dtype=np.float32).reshape(rows, n)
            self._imatrix = imatrix
        else:
            self._x = np.ndarray((rows, n), np.float32, buffer=self._in.buf)
            np.copyto(self._x, arr.reshape(rows, n), casting="unsafe")
            if imatrix is not None:
                np.ndarray((n,), np.float32, buffer=self._in.buf, offset=rows * n * 4)[...] = imatrix
            self._imatrix = imatrix
        self._rows, self._n = rows, n
        return self._x

    def quantize(self, types: list[str]) -> list[np.ndarray]:
        """ggml bytes [rows, row_bytes] of the staged tensor for each block type."""
        if self._local or self._x.size < 2 * CHUNK_ELEMENTS:
            return [quantize(self._x, t, self._imatrix) for t in types]
        rows, n = self._rows, self._n
        step = max(1, CHUNK_ELEMENTS // n)
        tasks, outs, offset = [], [], 0
        for t in types:
            row_bytes = GGML_TYPES[t].row_bytes(n)
            tasks += [(t, rows, n, r0, min(rows, r0 + step), offset, self._imatrix is not None)
                      for r0 in range(0, rows, step)]
            outs.append(np.ndarray((rows, row_bytes), np.uint8, buffer=self._out.buf, offset=offset))
            offset += rows * row_bytes
        for _ in self._pool.imap_unordered(_run_task, tasks):
            pass
        return outs

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
        self._x = None
        for shm in (self._in, self._out):
            if shm is not None:
                try:
                    shm.close()
                except BufferError:     # a caller still holds a result view; the mapping goes with it
                    pass
                shm.unlink()
        self._in = self._out = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
