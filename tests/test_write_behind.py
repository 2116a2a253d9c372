"""write_behind: a long sequential write comes out byte-identical, on a file and on a pipe."""
from __future__ import annotations

import os

import numpy as np

from wan_export import write_behind
from wan_export.write_behind import WriteBehind


def test_windows_are_handed_off_and_bytes_unchanged(tmp_path, monkeypatch):
    monkeypatch.setattr(write_behind, "WINDOW", 1 << 16)
    data = np.random.default_rng(0).integers(0, 256, 5 << 16 | 123, dtype=np.uint8)
    path = tmp_path / "out.bin"
    with open(path, "wb") as f:
        wb = WriteBehind(f.fileno())
        for chunk in np.array_split(data, 37):
            f.write(chunk.tobytes())
            f.flush()
            wb.advance()
    if write_behind._SFR is not None:
        assert wb._next == 5 << 16 and wb._prev == 4 << 16
    assert path.read_bytes() == data.tobytes()


def test_pipe_turns_it_off():
    r, w = os.pipe()
    try:
        wb = WriteBehind(w)
        os.write(w, b"x")
        wb.advance()          # lseek fails on a pipe: must not raise
    except OSError:
        raise AssertionError("WriteBehind raised on a pipe")
    finally:
        os.close(r)
        os.close(w)
