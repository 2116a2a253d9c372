"""`comfyui --quant` and `diffusers --quant`: layouts, calibration, GPTQ, validation, bad input.

Every variant's tiny release is written and validated (both parity levels) in ComfyUI and ModelOpt
form; one DiT input case keeps that inside the CI budget. CALIB files come from
quantizers.calib_synthetic (the recorder hooks of `wan-export calibrate` on random DiT inputs).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from wan_export.cli import cli
from wan_export.quantizers.calib_synthetic import write_synthetic_calib
from wan_export.safetensors_io import SafetensorsFile, SafetensorsWriter, TensorInfo
from wan_export.validators import parity
from wan_export.validators.validate import validate
from wan_export.variants import VARIANTS

T2V = "wan2.1-t2v-1.3b"
ONE_CASE = (parity.DIT_CASES[0],)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def calib_for(tiny_release, tmp_path_factory):
    cache = {}

    def make(variant: str) -> tuple[str, str]:
        if variant not in cache:
            rel = tiny_release(variant)
            path = str(tmp_path_factory.mktemp("calib") / "calib.safetensors")
            cache[variant] = (rel, write_synthetic_calib(rel, path, cases=ONE_CASE))
        return cache[variant]
    return make


@pytest.fixture
def one_case(monkeypatch):
    monkeypatch.setattr(parity, "DIT_CASES", ONE_CASE)


def comfy_file(folder) -> str:
    return next(os.path.join(folder, n) for n in sorted(os.listdir(folder)) if n.startswith("wan"))


# ---------------------------------------------------------------- every variant, both consumers

@pytest.mark.parametrize("variant", sorted(VARIANTS), ids=str)
def test_every_variant_validates_in_comfyui_and_modelopt_layouts(variant, calib_for, tmp_path, one_case):
    rel, calib = calib_for(variant)
    fmt = ("fp8", "nvfp4", "mxfp8")[sorted(VARIANTS).index(variant) % 3]
    r = run("comfyui", rel, "--component", "dit", "--quant", fmt, "--calib", calib, "-o", tmp_path / "c", "-q")
    assert r.exit_code == 0, r.output
    files = sorted(os.listdir(tmp_path / "c"))
    assert len(files) == (2 if VARIANTS[variant].experts else 1)
    assert all(n.endswith({"fp8": "_fp8_e4m3fn_scaled.safetensors", "nvfp4": "_nvfp4.safetensors",
                           "mxfp8": "_mxfp8.safetensors"}[fmt]) for n in files)
    for n in files:
        rep = validate(str(tmp_path / "c" / n), rel)
        assert rep.passed, rep.to_markdown()
        assert any("emulated" in c.name for c in rep.checks) and any("weight-only" in c.name for c in rep.checks)
    dfmt = "nvfp4" if fmt == "nvfp4" else "fp8"
    r = run("diffusers", rel, "--quant", dfmt, "--calib", calib, "-o", tmp_path / "d", "-q")
    assert r.exit_code == 0, r.output
    rep = validate(str(tmp_path / "d"), rel)
    assert rep.passed and rep.format == "diffusers-modelopt", rep.to_markdown()


# ---------------------------------------------------------------- ComfyUI layout details

def test_comfy_fp8_calibrated_layout_metadata_and_determinism(calib_for, tmp_path):
    rel, calib = calib_for(T2V)
    outs = []
    for k in range(2):
        r = run("comfyui", rel, "--component", "dit", "--quant", "fp8", "--calib", calib,
                "--act-calib", "percentile:99.9", "-o", tmp_path / f"o{k}", "--json")
        assert r.exit_code == 0, r.output
        outs.append(comfy_file(tmp_path / f"o{k}"))
    assert sha(outs[0]) == sha(outs[1])
    sf = SafetensorsFile(outs[0])
    infos = {i.name: i for i in sf.infos()}
    layers = [n[: -len(".comfy_quant")] for n in infos if n.endswith(".comfy_quant")]
    assert len(layers) == 20 and all(infos[f"{n}.weight"].dtype == "F8_E4M3" for n in layers)
    assert all(infos[f"{n}.input_scale"].dtype == "F32" for n in layers)
    assert json.loads(bytes(sf.read(f"{layers[0]}.comfy_quant")).decode()) == {"format": "float8_e4m3fn"}
    assert "text_embedding.0.weight" in infos and infos["text_embedding.0.weight"].dtype == "BF16"
    policy = json.loads(sf.metadata["wan_export.quant"])
    assert policy["params"]["quant"] == "fp8" and policy["calibrated"] and policy["act_calib"] == "percentile:99.9"
    assert {r["rule"] for r in policy["rules"]} >= {"block-linear", "embedding", "norm", "bias", "modulation"}
    stats = json.loads(r.output)["layers"][layers[0]]
    assert stats["input_clip"] <= stats["input_amax"]
    assert float(sf.read(f"{layers[0]}.input_scale")) == pytest.approx(stats["input_clip"] / 448, rel=1e-6)


def test_weight_only_file_says_comfyui_uses_scale_one(tiny_release, tmp_path):
    r = run("comfyui", tiny_release(T2V), "--component", "dit", "--quant", "nvfp4", "-o", tmp_path)
    assert r.exit_code == 0 and "ComfyUI then quantizes FP8/FP4 GEMM activations with scale 1.0" in r.output
    assert not any(i.name.endswith("input_scale") for i in SafetensorsFile(comfy_file(tmp_path)).infos())


def test_legacy_fp8_with_umt5_and_checkpoint(tiny_release, tmp_path, one_case):
    rel = tiny_release(T2V)
    r = run("comfyui", rel, "--quant", "fp8-legacy", "-o", tmp_path / "all", "-q")
    assert r.exit_code == 0, r.output
    names = sorted(os.listdir(tmp_path / "all"))
    dit = next(n for n in names if n.startswith("wan2.1"))
    t5 = next(n for n in names if n.startswith("umt5"))
    assert dit.endswith("_fp8_scaled.safetensors") and t5.endswith("_fp8_e4m3fn_scaled.safetensors")
    keys = {i.name: i for i in SafetensorsFile(str(tmp_path / "all" / dit)).infos()}
    assert keys["scaled_fp8"].dtype == "F8_E4M3" and "blocks.0.ffn.0.scale_weight" in keys
    t5_keys = {i.name: i.dtype for i in SafetensorsFile(str(tmp_path / "all" / t5)).infos()}
    assert "scaled_fp8" in t5_keys and t5_keys["encoder.block.0.layer.1.DenseReluDense.wo.weight"] == "F8_E4M3"
    for n in (dit, t5):
        rep = validate(str(tmp_path / "all" / n), rel)
        assert rep.passed, rep.to_markdown()
    r = run("comfyui", rel, "--checkpoint", "--quant", "nvfp4", "-o", tmp_path / "ck", "-q")
    assert r.exit_code == 0, r.output
    ck = comfy_file(tmp_path / "ck")
    keys = {i.name for i in SafetensorsFile(ck).infos()}
    assert "model.diffusion_model.blocks.0.ffn.0.comfy_quant" in keys and "blocks.0.ffn.0.comfy_quant" not in keys
    rep = validate(ck, rel)
    assert rep.passed, rep.to_markdown()


def test_gptq_records_and_never_worse(calib_for, tmp_path):
    rel, calib = calib_for(T2V)
    r = run("comfyui", rel, "--component", "dit", "--quant", "nvfp4", "--calib", calib, "--rounding", "gptq",
            "-o", tmp_path, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["gptq_layers"] >= 15
    for rec in res["layers"].values():
        assert min(rec["output_error_gptq"], rec["output_error_nearest"]) == pytest.approx(
            rec["output_error_gptq"] if rec["rounding"] == "gptq" else rec["output_error_nearest"])


def test_policy_options_and_dry_run(tiny_release, tmp_path):
    rel = tiny_release(T2V)
    r = run("comfyui", rel, "--component", "dit", "--quant", "nvfp4", "--exclude-blocks", "first:1",
            "--tensor-type", r"ffn\.2=fp8", "--tensor-type", r"cross_attn\.o=bf16", "--dry-run", "--json",
            "-o", tmp_path)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert os.listdir(tmp_path) == [] and res["files"][0]["written"] is False
    rows = {(row["rule"], row["format"]): row["tensors"] for row in res["policy"]["dit"]}
    assert rows[("excluded-block", "bf16")] == 8          # block 0 minus ffn.2 and cross_attn.o (overrides first)
    assert rows[("user:ffn\\.2", "fp8")] == 2 and rows[("user:cross_attn\\.o", "bf16")] == 2
    assert rows[("block-linear", "nvfp4")] == 8


# ---------------------------------------------------------------- ModelOpt layout details

def test_modelopt_a14b_both_experts_and_config(calib_for, tmp_path, one_case):
    rel, calib = calib_for("wan2.2-t2v-a14b")
    r = run("diffusers", rel, "--quant", "nvfp4", "--calib", calib, "-o", tmp_path / "d", "-q")
    assert r.exit_code == 0, r.output
    for sub in ("transformer", "transformer_2"):
        cfg = json.load(open(tmp_path / "d" / sub / "config.json"))
        q = cfg["quantization_config"]
        assert q["quant_algo"] == "NVFP4" and q["quant_method"] == "modelopt"
        assert q["config_groups"]["group_0"]["weights"] == {"dynamic": False, "group_size": 16, "num_bits": 4,
                                                           "type": "float"}
        sf = SafetensorsFile(str(tmp_path / "d" / sub / "diffusion_pytorch_model.safetensors"))
        infos = {i.name: i for i in sf.infos()}
        assert infos["blocks.0.attn1.to_q.weight"].dtype == "U8"
        assert infos["blocks.0.attn1.to_q.weight_scale"].shape == (256, 16)
        s2 = [float(sf.read(f"blocks.0.attn1.to_{x}.weight_scale_2")) for x in "qkv"]
        assert s2[0] == s2[1] == s2[2]                    # fused q/k/v share one weight amax
    rep = validate(str(tmp_path / "d"), rel)
    assert rep.passed, rep.to_markdown()
    assert "refused by diffusers" in rep.info["transformer diffusers"]


# ---------------------------------------------------------------- bad input: exit 2, one line, nothing written

def _copy_calib(src: str, dst: str, edit) -> str:
    sf = SafetensorsFile(src)
    tensors = edit({i.name: np.array(sf.read(i.name)) for i in sf.infos()})
    infos = [TensorInfo(n, a.shape, "F32" if a.dtype == np.float32 else "I64") for n, a in tensors.items()]
    with SafetensorsWriter(dst, infos, dict(sf.metadata)) as w:
        for n, a in tensors.items():
            w.write(n, a)
    return dst


def _nan_release(rel: str, dst) -> str:
    """A copy of the release with one NaN in a block Linear weight."""
    shutil.copytree(rel, dst)
    for n in sorted(os.listdir(dst)):
        if not (n.startswith("diffusion_pytorch_model-") and n.endswith(".safetensors")):
            continue
        path = os.path.join(dst, n)
        sf = SafetensorsFile(path)
        tensors = {i.name: np.array(sf.read(i.name)) for i in sf.infos()}
        name = next((k for k in tensors if k.endswith("ffn.0.weight")), None)
        if name is None:
            continue
        tensors[name].reshape(-1)[3] = np.nan
        infos, meta = [TensorInfo(i.name, i.shape, i.dtype) for i in sf.infos()], dict(sf.metadata)
        sf.close()
        with SafetensorsWriter(path, infos, meta) as w:
            for k, a in tensors.items():
                w.write(k, a)
        return str(dst)
    raise AssertionError("no ffn.0.weight in the release")


def bad_cases(tiny_release, calib_for, tmp_path):
    rel, calib = calib_for(T2V)
    _, other = calib_for("wan2.1-vace-1.3b")
    missing = _copy_calib(calib, str(tmp_path / "missing.safetensors"),
                          lambda t: {n: a for n, a in t.items() if not n.startswith("blocks.1.ffn.2.")})
    nan_stat = _copy_calib(calib, str(tmp_path / "nan.safetensors"),
                           lambda t: {**t, "blocks.0.ffn.0.input_amax": np.array(np.nan, np.float32)})
    return {
        "foreign calib": (["comfyui", rel, "--quant", "fp8", "--calib", other], "vace_blocks.0."),
        "missing layer": (["comfyui", rel, "--quant", "fp8", "--calib", missing], "no statistics for blocks.1.ffn.2"),
        "nan statistic": (["comfyui", rel, "--quant", "nvfp4", "--calib", nan_stat], "blocks.0.ffn.0.input_amax"),
        "unknown quant": (["comfyui", rel, "--quant", "int3"], "unknown --quant 'int3'"),
        "norm override": (["comfyui", rel, "--quant", "fp8", "--tensor-type", "norm3=fp8"], "cannot take fp8 (norm weight"),
        "conv override": (["diffusers", rel, "--quant", "fp8", "--tensor-type", "patch_embedding=fp8"], "Conv3d"),
        "nvfp4 legacy": (["comfyui", rel, "--quant", "fp8-legacy", "--tensor-type", "ffn=nvfp4"], "float8_e4m3fn"),
        "mxfp8 modelopt": (["diffusers", rel, "--quant", "mxfp8"], "--quant mxfp8 is not available"),
        "nan weight": (["comfyui", _nan_release(rel, tmp_path / "nanrel"), "--quant", "fp8"], "NaN/Inf"),
    }


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tiny_release, calib_for, tmp_path):
    for label, (args, needle) in bad_cases(tiny_release, calib_for, tmp_path).items():
        out = tmp_path / f"out_{label.replace(' ', '_')}"
        out.mkdir()
        r = CliRunner().invoke(cli, [str(a) for a in args] + ["-o", str(out), "-q"])
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert r.exit_code == 2, (label, r.output)
        assert len(lines) == 1 and lines[0].startswith("Error: ") and needle in lines[0], (label, r.output)
        assert os.listdir(out) == [], label
