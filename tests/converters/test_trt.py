"""`wan-export trt` and `onnx --quant`: real TensorRT-RTX plans of the tiny models, built ahead
of time on this CPU-only machine (fp16 on SM86+SM89, FP8 on SM89, NVFP4 on SM120, the VAE
decoder step graphs), validated CPU-side; the Q/DQ graphs checked against the fake-quant
reference; bad input gives exit 2, one line, no output.

The fp16 DiT export is the ONNX tests' session fixture (shared when both run).
"""
from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.converters.test_onnx import exported, shared_dir, sources  # noqa: F401  (session fixtures)
from wan_export.cli import cli
from wan_export.converters import trt_specs as T
from wan_export.errors import BadInputError, UnsupportedError

trt = pytest.importorskip("tensorrt_rtx")
T2V = "wan2.1-t2v-1.3b"


def _run(runner, args):
    from click.testing import CliRunner

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _passed(report) -> None:
    bad = [f"{c.name}: {c.failures}" for c in report.checks if not c.passed]
    assert not bad, "\n".join(bad)


# ---- tables --------------------------------------------------------------------------------------

def test_targets_and_refusals():
    assert T.parse_targets("all", "rtx") == [("sm80", "sm86"), ("sm89",), ("sm120",)]
    assert T.parse_targets("sm86,sm89", "rtx") == [("sm86", "sm89")]
    assert T.check_precision(T.parse_targets("all", "rtx"), "fp8", False) == [("sm89",), ("sm120",)]
    assert T.check_precision(T.parse_targets("all", "rtx"), "nvfp4", False) == [("sm120",)]
    for target, precision in (("sm75", "fp32"), ("sm75", "bf16"), ("sm86", "fp8"), ("sm89", "nvfp4")):
        with pytest.raises(UnsupportedError, match=f"{precision} cannot be built for {target}"):
            T.check_precision(T.parse_targets(target, "rtx"), precision, True)
    with pytest.raises(UnsupportedError, match="not a rtx target"):
        T.parse_targets("sm90", "rtx")


def test_profiles_from_real_use():
    prof = T.parse_profile("480p", (1, 2), 512)
    lo, opt, hi = T.graph_sizes(prof, "dit", 8, (2, 2), False)
    assert (opt["frames"], opt["hh"], opt["ww"], opt["batch"], opt["text_len"]) == (21, 30, 52, 2, 512)
    assert (lo["frames"], lo["batch"], lo["text_len"]) == (1, 1, 1)
    ti2v = T.graph_sizes(T.parse_profile("704p", (1, 2), 512), "dit", 16, (2, 2), False)[1]
    assert (ti2v["hh"], ti2v["ww"]) == (22, 40)                         # 1280x704 -> 80x44 latent
    with pytest.raises(BadInputError, match="odd"):                     # 1280x720 / 16 = 45 rows
        T.graph_sizes(T.parse_profile("720p", (1, 2), 512), "dit", 16, (2, 2), False)
    with pytest.raises(BadInputError, match="min width 1280 > opt 832"):
        T.parse_profile("720p:480p", (1, 2), 512)
    with pytest.raises(BadInputError, match="not 4k\\+1"):
        T.parse_profile("832x480x80", (1, 2), 512)
    with pytest.raises(BadInputError, match="min 3 must be >= 1 and <= max 2"):
        T.parse_batch("3-2")
    name = T.plan_name("transformer", "rtx", "1.7.1.116", ("sm86", "sm89"), "fp16", "0123abcd")
    assert T.PLAN_NAME.match(name)["targets"] == "sm86-sm89"


# ---- builds --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp16_dit(exported):  # noqa: F811
    return exported("dit", T2V, dtype="fp16")


def test_fp16_dit_plan_sm86_sm89(fp16_dit, tmp_path):
    from wan_export.validators.trt import validate_trt

    onnx_dir, src = fp16_dit
    out = tmp_path / "plans"
    res = _run(None, ["trt", onnx_dir, "-o", str(out), "--target", "sm86,sm89", "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.output)
    (plan,) = result["plans"]
    assert plan["file"].startswith("transformer.rtx-") and ".sm86-sm89.fp16." in plan["file"]
    doc = json.loads((out / "trt.json").read_text())
    p = doc["plans"][0]
    assert p["targets"] == ["sm86", "sm89"] and p["build"]["compute_capabilities"] == ["SM86", "SM89"]
    latents = next(t for t in p["io"] if t["name"] == "latents")
    assert latents["profiles"][0] == {"min": [1, 16, 1, 60, 104], "opt": [2, 16, 21, 60, 104],
                                      "max": [2, 16, 21, 60, 104]}
    assert len(p["plan_sha256"]) == 64 and len(p["onnx_sha256"]) == 64 and p["plan_bytes"] > 0
    _passed(validate_trt(str(out), src))


@pytest.fixture(scope="module")
def calib(fp16_dit, tmp_path_factory):
    from tests.converters.calib_factory import make_calib
    from wan_export.components import load_component
    from wan_export.validators.onnx import _reference

    comp = load_component(fp16_dit[1])
    return make_calib(_reference(comp), comp.config, str(tmp_path_factory.mktemp("calib") / "calib.safetensors"))


def quantized_copy(onnx_dir: str, src: str, dest, quant: str, calib: str | None) -> str:
    """What `onnx --quant` does after exporting, applied to a copy of the shared fp16 export."""
    from wan_export.components import load_component
    from wan_export.converters.onnx_quant import Q, prepare

    shutil.copytree(onnx_dir, dest)
    plan = prepare(quant, calib, "dynamo", "fp16")
    mpath = os.path.join(dest, "wan_onnx.json")
    manifest = json.loads(open(mpath).read())
    manifest["graphs"][0].update(plan.apply(os.path.join(dest, "transformer.onnx"), load_component(src)))
    manifest["quant"], manifest["opset"] = plan.manifest(), Q.OPSET[quant]
    with open(mpath, "w") as f:
        json.dump(manifest, f)
    return str(dest)


@pytest.mark.parametrize("quant, target", [("fp8", "sm89"), ("nvfp4", "sm120")])
def test_qdq_graph_validates_and_builds(fp16_dit, calib, tmp_path, quant, target):
    import onnx

    from wan_export.validators.onnx import validate_onnx

    onnx_dir, src = fp16_dit
    qdir = quantized_copy(onnx_dir, src, tmp_path / "onnx", quant, calib)
    model = onnx.load(os.path.join(qdir, "transformer.onnx"), load_external_data=False)
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    kinds = {t.data_type for t in model.graph.initializer}
    if quant == "fp8":
        assert ("", "QuantizeLinear") in ops and onnx.TensorProto.FLOAT8E4M3FN in kinds
        assert any(t.name.endswith(".sdpa.softmax.scale") for t in model.graph.initializer)   # FP8 attention
    else:
        assert ("trt", "TRT_FP4DynamicQuantize") in ops and onnx.TensorProto.FLOAT4E2M1 in kinds
        assert model.opset_import[0].version == 23
    report = validate_onnx(qdir, src)
    _passed(report)
    assert any("vs fake-quant reference" in c.name for c in report.checks)
    out = tmp_path / "plans"
    res = _run(None, ["trt", qdir, "-o", str(out), "--target", target, "-q"])
    assert res.exit_code == 0, res.output
    assert [p.name for p in out.glob(f"*.{target}.{quant}.*.plan")]
    wrong = "sm86" if quant == "fp8" else "sm89"
    res = _run(None, ["trt", qdir, "-o", str(tmp_path / "no"), "--target", wrong])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and f"{quant} cannot be built for {wrong}" in res.output
    assert not (tmp_path / "no").exists()


def test_vae_decoder_step_plans_from_a_checkpoint(sources, tmp_path):  # noqa: F811
    from wan_export.validators.trt import validate_trt

    src = sources("vae", "2.1")
    out = tmp_path / "vae"
    res = _run(None, ["trt", src, "-o", str(out), "--component", "vae-decoder", "--target", "sm86",
                      "--exporter", "legacy", "--profile", "480p", "--batch", "1", "-q"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "trt.json").read_text())
    assert {p["graph"] for p in doc["plans"]} == {"vae_decoder_first.onnx", "vae_decoder_step.onnx"}
    assert doc["vae"]["decoder"]["step"] == "vae_decoder_step.onnx"        # the streaming protocol
    step = next(p for p in doc["plans"] if p["graph"] == "vae_decoder_step.onnx")
    latent = next(t for t in step["io"] if t["name"] == "latent")
    assert latent["profiles"][0]["max"] == [1, 16, 1, 60, 104]               # per latent size
    assert (out / "onnx" / "wan_onnx.json").exists()
    _passed(validate_trt(str(out), src))


# ---- bad input -----------------------------------------------------------------------------------

def _bad(args, tmp_path, message):
    res = _run(None, args)
    assert res.exit_code == 2, res.output
    assert res.output.count("\n") == 1 and res.output.startswith("Error: ") and message in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_bad_profiles_and_folders(fp16_dit, tmp_path):
    onnx_dir, _ = fp16_dit
    out = str(tmp_path / "out")
    _bad(["trt", onnx_dir, "-o", out, "--profile", "720p:480p"], tmp_path, "min width 1280 > opt 832")
    _bad(["trt", onnx_dir, "-o", out, "--profile", "840x480"], tmp_path, "latent size 105x60")
    _bad(["trt", onnx_dir, "-o", out, "--batch", "2-1"], tmp_path, "--batch '2-1'")
    _bad(["trt", onnx_dir, "-o", out, "--target", "sm86", "--precision", "nvfp4"], tmp_path,
         "nvfp4 cannot be built for sm86")
    res = _run(None, ["trt", onnx_dir, "-o", out, "--dry-run", "--precision", "fp16", "--json"])
    assert res.exit_code == 0 and len(json.loads(res.output)["plans"]) == 3       # one per tier
    assert not (tmp_path / "out").exists()
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(os.path.join(onnx_dir, "transformer.onnx"), bare)
    _bad(["trt", str(bare), "-o", out], tmp_path, "no wan_onnx.json")


def test_parser_rejected_node_is_named(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path / "onnx"
    folder.mkdir()
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "text_len"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "text_len"])
    y = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "text_len"])
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Frobnicate", ["f", "attention_mask"], ["last_hidden_state"], name="frob",
                              domain="acme")]
    graph = helper.make_graph(nodes, "t", [ids, mask], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid("acme", 1)]),
              str(folder / "text_encoder.onnx"))
    io = lambda v: {"name": v.name, "shape": ["batch", "text_len"], "dtype": "float32"}  # noqa: E731
    (folder / "wan_onnx.json").write_text(json.dumps({"dtype": "fp32", "opset": 20, "configs": {}, "graphs": [
        {"role": "text_encoder", "file": "text_encoder.onnx", "slot": "t5", "component": "t5",
         "inputs": [io(ids), io(mask)], "outputs": [io(y)]}]}))
    _bad(["trt", str(folder), "-o", str(tmp_path / "out"), "--target", "sm86"], tmp_path, "node frob (Frobnicate)")


def test_missing_tensorrt_is_one_line_with_the_install_command(fp16_dit, tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name in ("tensorrt_rtx", "tensorrt"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    _bad(["trt", fp16_dit[0], "-o", str(tmp_path / "out"), "--backend", "rtx"], tmp_path,
         'pip install "wan-export[trt]"')


def test_onnx_quant_options_are_checked_before_export(fp16_dit, tmp_path):
    src = fp16_dit[1]
    _bad(["onnx", src, "-o", str(tmp_path / "out"), "--calib", "x.safetensors"], tmp_path, "--calib needs --quant")
    _bad(["onnx", src, "-o", str(tmp_path / "out"), "--quant", "fp8", "--exporter", "legacy"], tmp_path,
         "--quant needs the dynamo exporter")


def test_standard_tensorrt_path_drives_the_same_builder(tmp_path):
    """The `tensorrt` code path (TensorRT 10.x network flag, no compute capabilities) on a
    module with the same API: TensorRT-RTX stands in, since standard TensorRT is not installable."""
    import onnx
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from wan_export.converters.trt_backend import Backend, BuildSettings, build_plan, engine_validity

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 8])
    w = numpy_helper.from_array(np.ones((16, 8), np.float16), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    path = str(tmp_path / "g.onnx")
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    for backend in (Backend("tensorrt", trt, "10.16.0"), Backend("rtx", trt, trt.__version__)):
        plan, info = build_plan(backend, path, [{"x": [[1, 16], [2, 16], [4, 16]]}], BuildSettings(("sm86",)))
        assert plan and [t["name"] for t in info["io"]] == ["x", "y"]
        assert engine_validity(backend, plan)[1] == []          # well-formed header (INVALID on a CPU)
    with pytest.raises(BadInputError, match="no profile shapes for network inputs x"):
        build_plan(backend, path, [{}], BuildSettings(("sm86",)))
