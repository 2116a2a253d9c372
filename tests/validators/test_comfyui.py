"""validate_comfyui: ComfyUI's loader rules (detection, class, exact keys, spiece_model) and parity."""
from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from click.testing import CliRunner

from tests.converters.release_factory import layout_release, write_dit
from wan_export.cli import cli
from wan_export.converters.comfyui import convert
from wan_export.dtypes import cast
from wan_export.errors import ParityError
from wan_export.keymaps.vae_diffusers import to_diffusers
from wan_export.safetensors_io import SafetensorsFile
from wan_export.synthetic import dit_state, tiny_dit_config, write_safetensors
from wan_export.validators.comfyui import MEASURED_CAST, validate_comfyui
from wan_export.validators.parity import WEIGHT_DTYPE_TOLERANCE

# the ComfyUI class each released variant must become (formats-comfyui.md section 2)
CLASSES = {"wan2.1-t2v-1.3b": "WAN21_T2V", "wan2.1-i2v-14b": "WAN21_I2V", "wan2.1-flf2v-14b": "WAN21_I2V",
           "wan2.1-vace-1.3b": "WAN21_Vace", "wan2.2-i2v-a14b": "WAN21_T2V", "wan2.2-ti2v-5b": "WAN22_T2V",
           "wan2.2-t2v-a14b": "WAN21_T2V"}


def read_all(path) -> dict:
    f = SafetensorsFile(str(path))
    return {i.name: np.array(f.read(i.name)) for i in f.infos()}


def validate(path, against):
    return CliRunner().invoke(cli, ["validate", str(path), "--against", str(against)])


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rel") / "src"
    layout_release(str(folder), "wan2.1-t2v-1.3b", dtype="F32")
    out = tmp_path_factory.mktemp("comfy")
    files = {r["component"]: r["path"] for r in convert(str(folder), str(out))["files"]}
    return str(folder), files


@pytest.mark.parametrize("variant", sorted(CLASSES))
def test_good_dit_files_pass_and_become_the_right_class(tmp_path, variant):
    src = tmp_path / "src"
    layout_release(str(src), variant, layout="diffusers", dtype="BF16", vae=False, t5=False, tokenizer=False)
    for row in convert(str(src), str(tmp_path / "out"))["files"]:
        report = validate_comfyui(row["path"], str(src))
        assert report.passed, report.to_markdown()
        assert f"class {CLASSES[variant]}," in report.info["dit (ComfyUI)"]
        assert report.info["dit tolerance"].startswith("exact")
        assert all(c.metrics["max_abs"] == 0 for c in report.checks if c.name.startswith("dit output"))


def test_every_component_passes_exactly(release):
    src, files = release                      # (the checkpoint: test_casts_stay_within_the_stated_bounds)
    for path in files.values():
        r = validate(path, src)
        assert r.exit_code == 0, r.output
        assert "FAIL" not in r.output and "| max_abs 0 | ok |" in r.output


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_casts_stay_within_the_stated_bounds(tmp_path, release, dtype):
    """Measured on these tiny models (MEASURED_CAST) and bounded by parity.WEIGHT_DTYPE_TOLERANCE."""
    src, _ = release
    code = {"bf16": "BF16", "fp16": "F16"}[dtype]
    convert(src, str(tmp_path / "aio.safetensors"), checkpoint=True, dtype=dtype)
    report = validate_comfyui(str(tmp_path / "aio.safetensors"), src)
    assert report.passed, report.to_markdown()
    bound = WEIGHT_DTYPE_TOLERANCE[code].max_rel_l2
    lossy = ("dit", "vae") if code == "BF16" else ("dit", "vae", "text encoder")    # the tiny T5 is bf16 already
    for label in lossy:
        checks = [c for c in report.checks if c.name.startswith(label + " ") and c.metrics["rel_l2"] != "-"]
        assert checks and all(0 <= c.metrics["rel_l2"] <= min(bound, 2 * MEASURED_CAST[label, code])
                              for c in checks), label
        assert report.info[f"{label} tolerance"].startswith(f"{code} cast: max_rel_l2 {bound:g}")
        assert report.tables[f"{label} per-tensor error"]


def test_one_perturbed_block_fails_with_exit_1(tmp_path, release):
    src, files = release
    state = read_all(files["dit"])
    state["blocks.1.ffn.0.weight"] = state["blocks.1.ffn.0.weight"] * np.float32(1.001)
    bad = write_safetensors(str(tmp_path / "bad.safetensors"), state)
    r = validate(bad, src)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].startswith(f"Error: {bad}: parity failed in 2 of 3 checks: dit output")
    with pytest.raises(ParityError):
        validate_comfyui(bad, src).raise_if_failed()


def test_bf16_file_with_a_perturbed_block_fails(tmp_path, release):
    src, _ = release
    convert(src, str(tmp_path / "b.safetensors"), component="dit", dtype="bf16")
    state = read_all(tmp_path / "b.safetensors")
    rng = np.random.default_rng(0)
    for k in [k for k in state if k.startswith("blocks.1.") and state[k].ndim == 2]:
        noise = rng.standard_normal(state[k].shape).astype(np.float32) * 0.05
        state[k] = cast(state[k].astype(np.float32) + noise, "BF16")
    bad = write_safetensors(str(tmp_path / "bad.safetensors"), state)
    assert validate(bad, src).exit_code == 1


def test_diffusers_names_fail_comfyui_detection(tmp_path, release):
    src, _ = release
    path = str(tmp_path / "diffusers.safetensors")
    write_dit(path, dit_state(tiny_dit_config("wan2.1-t2v-1.3b")), "diffusers")
    r = validate(path, src)
    assert r.exit_code == 1
    last = r.output.strip().splitlines()[-1]
    assert "Could not detect model type" in last and "diffusers names" in last and "wan-export comfyui" in last


@pytest.mark.parametrize("layout", ["comfyui-prefixed", "net-prefixed", "stock"])
def test_prefixes_comfyui_strips(tmp_path, release, layout):
    src, files = release
    path = str(tmp_path / "p.safetensors")
    write_dit(path, read_all(files["dit"]), layout)
    assert validate_comfyui(path, src).passed


@pytest.mark.parametrize("prefix", ["diffusion_model.", "transformer."])
def test_prefixes_comfyui_does_not_strip(tmp_path, release, prefix):
    src, files = release
    state = {prefix + k: v for k, v in read_all(files["dit"]).items()}
    path = write_safetensors(str(tmp_path / "p.safetensors"), state)
    report = validate_comfyui(path, src)
    assert not report.passed and "no head.modulation after prefix" in report.checks[0].failures[0]


def test_missing_key_fails_though_comfyui_only_logs_it(tmp_path, release):
    src, files = release
    state = read_all(files["dit"])
    del state["blocks.0.norm3.bias"]
    report = validate_comfyui(write_safetensors(str(tmp_path / "m.safetensors"), state), src)
    assert report.checks[0].failures == ["1 missing: blocks.0.norm3.bias"]


def test_text_encoder_rules(tmp_path, release):
    src, files = release
    state = read_all(files["t5"])
    spiece = state.pop("spiece_model")
    report = validate_comfyui(write_safetensors(str(tmp_path / "nosp.safetensors"), state), src)
    assert any("no spiece_model" in f for f in report.checks[0].failures)
    state["spiece_model"] = spiece[:-1]
    report = validate_comfyui(write_safetensors(str(tmp_path / "other.safetensors"), state), src)
    assert any("differs from the source's spiece.model" in f for f in report.checks[0].failures)
    stock_named = os.path.join(src, "models_t5_umt5-xxl-enc-bf16.pth")
    from wan_export.release import open_input

    t5 = open_input(stock_named).components["t5"]
    path = write_safetensors(str(tmp_path / "stock.safetensors"), {k: t5.table.read(k) for k in t5.table.names()})
    report = validate_comfyui(path, src)
    assert "stock Wan T5 names" in report.checks[0].failures[0]


def test_diffusers_vae_layout_is_refused(tmp_path, release):
    src, files = release
    state = read_all(files["vae"])
    names = to_diffusers(state)
    path = write_safetensors(str(tmp_path / "dv.safetensors"), {names[k]: v for k, v in state.items()})
    report = validate_comfyui(path, src)
    assert "misdetects it as an SD AutoencoderKL" in report.checks[0].failures[0]


def test_fp8_scaled_file_validates_with_the_fp8_bound(tmp_path, release):
    src, files = release
    path = str(tmp_path / "fp8.safetensors")
    write_dit(path, read_all(files["dit"]), "fp8-scaled")
    report = validate_comfyui(path, src)
    assert report.passed, report.to_markdown()
    assert "quantized layers 20" in report.info["dit (ComfyUI)"]
    assert report.info["dit tolerance"].startswith("F8_E4M3 cast")
    e5m2 = {k: (v.astype(np.float32).astype(ml_dtypes.float8_e5m2) if v.dtype == ml_dtypes.float8_e4m3fn else v)
            for k, v in read_all(path).items()}
    report = validate_comfyui(write_safetensors(str(tmp_path / "e5.safetensors"), e5m2), src)
    assert any("e5m2" in f for f in report.checks[0].failures)


def test_a14b_experts_are_matched_by_metadata(tmp_path):
    src = tmp_path / "src"
    layout_release(str(src), "wan2.2-t2v-a14b", vae=False, t5=False, tokenizer=False)
    rows = convert(str(src), str(tmp_path / "out"), dtype="bf16")["files"]
    for row in rows:
        assert validate(row["path"], src).exit_code == 0
    swapped = tmp_path / "swapped.safetensors"
    state = read_all(rows[0]["path"])
    write_safetensors(str(swapped), state, {"wan_export.expert": "low_noise"})
    assert validate(swapped, src).exit_code == 1


def test_report_json_round_trips(tmp_path, release):
    src, files = release
    out = tmp_path / "r.json"
    r = CliRunner().invoke(cli, ["validate", files["dit"], "--against", src, "--report", str(out)])
    assert r.exit_code == 0
    data = json.loads(out.read_text())
    assert data["format"] == "comfyui" and data["passed"] and data["info"]["loader"] == "UNETLoader"


def test_head_dim_override_is_honoured_and_needed(tmp_path):
    from dataclasses import replace

    from wan_export.converters.stock import hub_config

    cfg = replace(tiny_dit_config("wan2.1-t2v-1.3b"), num_heads=4)          # head_dim 64
    src = tmp_path / "src"
    src.mkdir()
    write_safetensors(str(src / "diffusion_pytorch_model.safetensors"), dit_state(cfg))
    (src / "config.json").write_text(json.dumps(hub_config(cfg)))
    good = str(tmp_path / "good.safetensors")
    convert(str(src), good)
    report = validate_comfyui(good, str(src))
    assert report.passed and "heads 4" in report.info["dit (ComfyUI)"]
    stripped = write_safetensors(str(tmp_path / "stripped.safetensors"), read_all(good))      # no metadata
    report = validate_comfyui(stripped, str(src))
    assert "heads 2" in report.info["dit (ComfyUI)"] and not report.passed
