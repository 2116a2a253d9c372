"""Bad input through the CLI: exit 2 and exactly one `Error: <path>: <problem>` line on stderr.

Covers missing, truncated and corrupt files, unsafe pickles, index path escapes,
wrong shapes and NaN weights (a warning for inspect, an error for converters).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import struct

import numpy as np
import pytest

from wan_export import synthetic
from wan_export.cli import cli

VARIANT = "wan2.1-t2v-1.3b"
NAN_TENSOR = "blocks.0.ffn.0.weight"
# conversion command -> output name given to -o (a file, or a folder for diffusers)
CONVERTER_OUTPUTS = {"comfyui": "model", "diffusers": "model", "gguf": "model.gguf",
                     "stock": "model", "onnx": "model"}
CONVERTERS = [c for c in CONVERTER_OUTPUTS if c in cli.commands]


class Payload:
    """Pickled by reference: loading it would need to import and run this module's code."""


def one_error_line(result, path: str) -> str:
    """Assert exit 2, nothing on stdout, one `Error: <path>: ...` line on stderr; return the problem."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and result.stderr.endswith("\n"), result.stderr
    prefix = f"Error: {path}: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix):]


def inspect(runner, path) -> object:
    return runner.invoke(cli, ["inspect", str(path)])


def test_missing_file(runner, tmp_path):
    path = str(tmp_path / "nope.safetensors")
    assert one_error_line(inspect(runner, path), path) == "no such file or directory"


def test_truncated_in_the_data(runner, tmp_path, tiny_dit_file):
    data = open(tiny_dit_file(VARIANT), "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: 8 + n + (len(data) - 8 - n) // 2])
    problem = one_error_line(inspect(runner, path), str(path))
    assert re.fullmatch(r"truncated: tensor '[\w.]+' ends at byte \d+ of \d+", problem), problem


@pytest.mark.parametrize("damage, problem", [
    (lambda d, n: d[:8] + b"\x00\xff" * (n // 2) + d[8 + n:], "corrupt safetensors header (not valid JSON)"),
    (lambda d, n: struct.pack("<Q", len(d)) + d[8:], None),
])
def test_corrupt_header(runner, tmp_path, tiny_dit_file, damage, problem):
    data = open(tiny_dit_file(VARIANT), "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    path = tmp_path / "bad.safetensors"
    path.write_bytes(damage(data, n))
    problem = problem or f"corrupt safetensors header (length {len(data)}, file {len(data)} bytes)"
    assert one_error_line(inspect(runner, path), str(path)) == problem


def test_pickle_that_needs_code_is_refused(runner, tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": Payload()}, str(path))
    assert one_error_line(inspect(runner, path), str(path)) == (
        "refusing to load: the pickle needs code to run (only weights_only=True pickles are accepted)")


def _escaping_index(tmp_path, tiny_dit_file, shard: str):
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_dit_file(VARIANT), tmp_path / "x.safetensors")   # the escape target exists
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"head.modulation": shard}}))
    return folder, index


@pytest.mark.parametrize("absolute", [False, True])
def test_index_shard_escaping_its_folder(runner, tmp_path, tiny_dit_file, absolute):
    shard = str(tmp_path / "x.safetensors") if absolute else "../x.safetensors"
    folder, index = _escaping_index(tmp_path, tiny_dit_file, shard)
    expected = f"shard name {shard!r} escapes its folder"
    assert one_error_line(inspect(runner, index), str(index)) == expected
    assert one_error_line(inspect(runner, folder), str(index)) == expected


def test_wrong_shape(runner, tmp_path):
    state = synthetic.dit_state(synthetic.tiny_dit_config(VARIANT), dtype="BF16")
    state["blocks.1.self_attn.q.weight"] = state["blocks.1.self_attn.q.weight"][:, :128].copy()
    path = synthetic.write_safetensors(str(tmp_path / "m.safetensors"), state)
    assert one_error_line(inspect(runner, path), path) == (
        "keys do not fit a Wan DiT (t2v): 1 wrong shape: blocks.1.self_attn.q.weight [256, 128] "
        "(expected [256, 256])")


@pytest.fixture(scope="module")
def nan_release(tmp_path_factory):
    """A release whose single DiT file has one NaN in NAN_TENSOR."""
    folder = synthetic.write_release(str(tmp_path_factory.mktemp("nan") / "release"), VARIANT, shards=1)
    cfg = synthetic.tiny_dit_config(VARIANT)
    state = synthetic.dit_state(cfg, dtype="BF16")
    state[NAN_TENSOR] = state[NAN_TENSOR].copy()
    state[NAN_TENSOR][3, 5] = np.nan
    dit = os.path.join(folder, "diffusion_pytorch_model.safetensors")
    synthetic.write_safetensors(dit, state, {"format": "pt"})
    return folder, dit


def test_nan_weights_warn_in_inspect(runner, nan_release):
    folder, _ = nan_release
    result = inspect(runner, folder)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"warning: dit: 1 tensors contain NaN/Inf: {NAN_TENSOR} (1)"


@pytest.mark.parametrize("command", CONVERTERS)
def test_nan_weights_stop_conversion(runner, tmp_path, monkeypatch, nan_release, command):
    folder, dit = nan_release
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)       # so a default-named output would land here too
    result = runner.invoke(cli, [command, folder, "-o", str(out / CONVERTER_OUTPUTS[command])])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert re.match(rf"Error: ({re.escape(dit)}|{re.escape(folder)}): ", lines[0]), lines[0]
    assert NAN_TENSOR in lines[0] and "NaN" in lines[0]
    assert os.listdir(out) == []
