"""`wan-export svdquant` bad input: exit 2, one `Error: <file>: <problem>` line, nothing written."""
from __future__ import annotations

import os

import numpy as np
import pytest

from tests.test_bad_input import one_error_line
from wan_export.cli import cli

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def dit_and_calibs(tiny_dit_file, tmp_path_factory):
    """(DiT file, CALIB with samples, CALIB without samples)."""
    from wan_export.calibration import calibfile
    from wan_export.quantizers.calib_synthetic import write_synthetic_calib

    src = tiny_dit_file("wan2.1-t2v-1.3b")
    tmp = tmp_path_factory.mktemp("svdq_bad")
    full = write_synthetic_calib(src, str(tmp / "calib.safetensors"), save_activations=8)
    c = calibfile.read_calib(full)
    tensors = [(i.name, np.array(c._file.read(i.name))) for i in c._file.infos()
               if not i.name.endswith(".input_sample")]
    calibfile.write_calib(str(tmp / "nosample.safetensors"), tensors, {k: v for k, v in c.meta.items()
                                                                        if k != "format"})
    return src, full, str(tmp / "nosample.safetensors")


CASES = {
    "no calib": ([], "src", "--calib is required"),
    "no samples for the search": (["--calib", "{nosample}"], "nosample", "no activation samples"),
    "rank not a multiple of 16": (["--calib", "{calib}", "--rank", "20"], "src", "multiple of 16"),
    "rank above min(N, K)": (["--calib", "{calib}", "--rank", "512"], "src", "exceeds min(N, K) = 256"),
    "unknown precision": (["--calib", "{calib}", "--precision", "fp6"], "src", "unknown precision 'fp6'"),
    "bad smooth": (["--calib", "{calib}", "--smooth", "lots"], "src", "--smooth must be"),
    "bad exclude": (["--calib", "{calib}", "--exclude-blocks", "x"], "src", "--exclude-blocks"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_one_line_nothing_written(dit_and_calibs, runner, tmp_path, case):
    src, calib, nosample = dit_and_calibs
    extra, where, text = CASES[case]
    args = [a.format(calib=calib, nosample=nosample) for a in extra]
    out = tmp_path / "out"
    r = runner.invoke(cli, ["svdquant", src, *args, "-o", str(out)])
    problem = one_error_line(r, {"src": src, "nosample": nosample}[where])
    assert text in problem
    assert not out.exists() and os.listdir(tmp_path) == []


def test_fixed_alpha_works_without_samples(dit_and_calibs, runner, tmp_path):
    src, _, nosample = dit_and_calibs
    r = runner.invoke(cli, ["svdquant", src, "--calib", nosample, "--smooth", "0.5", "--rank", "16",
                            "--exclude-blocks", "0-1", "--dry-run", "-o", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no Linear fits" in r.stderr     # everything excluded: nothing to do
    r = runner.invoke(cli, ["svdquant", src, "--calib", nosample, "--smooth", "0.5", "--dry-run",
                            "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output


def test_targets_must_be_linears_and_fit_the_tiles():
    from types import SimpleNamespace

    from wan_export.converters.svdquant import select_targets
    from wan_export.errors import BadInputError
    from wan_export.safetensors_io import TensorInfo

    def comp(shapes):
        infos = [TensorInfo(n, s, "BF16") for n, s in shapes.items()]
        return SimpleNamespace(path="x.safetensors", table=SimpleNamespace(infos=lambda: infos))

    mapping = {"blocks.0.ffn.0.weight": "blocks.0.ffn.net.0.proj.weight",
               "blocks.0.ffn.2.weight": "blocks.0.ffn.net.2.weight"}
    with pytest.raises(BadInputError, match="must be Linears.*blocks.0.ffn.0"):
        select_targets(comp({"blocks.0.ffn.0.weight": (512, 256, 1), "blocks.0.ffn.0.bias": (512,)}), mapping, set())
    targets, kept = select_targets(comp({"blocks.0.ffn.0.weight": (512, 256), "blocks.0.ffn.0.bias": (512,),
                                         "blocks.0.ffn.2.weight": (256, 200), "blocks.0.ffn.2.bias": (256,)}),
                                   mapping, set())
    assert [t.name for t in targets] == ["blocks.0.ffn.net.0.proj"]
    assert kept == [{"layer": "blocks.0.ffn.net.2", "rule": "[256, 200] does not fit 128-out x 128-in tiles"}]
