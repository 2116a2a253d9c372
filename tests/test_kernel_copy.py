"""Kernel copies of unchanged tensor bytes: every fallback gives the same file, and runs coalesce."""
from __future__ import annotations

import numpy as np
import pytest

import wan_export.kernel_copy as kc
from wan_export.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorInfo, file_span


def _source(path):
    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.standard_normal((17, 5 + i)).astype(np.float32) for i in range(6)}
    with SafetensorsWriter(str(path), [TensorInfo(k, v.shape, "F32") for k, v in arrays.items()]) as w:
        for k, v in arrays.items():
            w.write(k, v)
    return arrays


@pytest.mark.parametrize("broken", [(), ("copy_file_range",), ("copy_file_range", "sendfile")])
def test_every_copy_method_gives_the_same_bytes(tmp_path, monkeypatch, broken):
    arrays = _source(tmp_path / "src.safetensors")
    monkeypatch.setattr(kc, "_broken", set(broken))
    calls = []
    monkeypatch.setattr(kc, "copy_range", lambda *a, _f=kc.copy_range, **k: calls.append(a[3]) or _f(*a, **k))
    src = SafetensorsFile(str(tmp_path / "src.safetensors"))
    names = [i.name for i in src.infos()]
    order = names[:3] + names[4:] + [names[3]]          # one tensor out of place: three runs
    out = tmp_path / "out.safetensors"
    with SafetensorsWriter(str(out), [TensorInfo(n, arrays[n].shape, "F32") for n in order]) as w:
        for n in order:
            arr = src.read(n)
            assert file_span(arr) is not None
            w.write(n, arr)
    assert len(calls) == 3
    back = SafetensorsFile(str(out))
    for n in order:
        assert np.array_equal(back.read(n), arrays[n])


def test_arrays_not_from_a_mapping_are_written_normally(tmp_path):
    arrays = _source(tmp_path / "src.safetensors")
    src = SafetensorsFile(str(tmp_path / "src.safetensors"))
    assert file_span(np.array(src.read("t0"))) is None             # a copy
    assert file_span(src.read("t1")[:, ::2]) is None              # not contiguous
    assert file_span(src.read("t2")[3:]) is not None              # a contiguous slice still is
    assert np.array_equal(src.read("t2")[3:], arrays["t2"][3:])
