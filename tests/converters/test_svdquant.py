"""`wan-export svdquant`: every variant's tiny release as a Nunchaku Lite folder that diffusers' own
loader takes (emulated kernel) and that validates; the format; bad input; determinism.

One calibrated tiny release and one converted folder per (variant, precision, smooth) are
shared by every test (module cache). Most use a fixed alpha (one smoothing candidate) to stay
fast; the (alpha, beta) search runs on the NVFP4 case.
"""
from __future__ import annotations

import json
import os

import pytest

from wan_export.cli import cli
from wan_export.safetensors_io import SafetensorsFile
from wan_export.variants import VARIANTS

pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow

_CACHE: dict = {}


@pytest.fixture(scope="module")
def svdq(tiny_release, tmp_path_factory):
    """svdq(variant, precision="int4", smooth="0.5") -> (release, calib, folder)."""
    from wan_export.converters.svdquant import convert
    from wan_export.quantizers.calib_synthetic import write_synthetic_calib

    def make(variant: str, precision: str = "int4", smooth: str = "0.5"):
        key = (variant, precision, smooth)
        if key not in _CACHE:
            rel = tiny_release(variant)
            tmp = tmp_path_factory.mktemp("svdq")
            calib = write_synthetic_calib(rel, str(tmp / "calib.safetensors"), save_activations=32)
            out = str(tmp / "out")
            convert(rel, calib, out, precision=precision, smooth=smooth)
            _CACHE[key] = (rel, calib, out)
        return _CACHE[key]

    return make


def _transformers(out: str) -> list[str]:
    subs = [s for s in ("transformer", "transformer_2") if os.path.isdir(os.path.join(out, s))]
    return [os.path.join(out, s) for s in subs] or [out]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_loads_through_diffusers_nunchaku_lite_and_validates(svdq, variant):
    from wan_export.validators.validate import validate

    rel, _, out = svdq(variant)
    report = validate(out, rel)
    assert report.format == "diffusers-nunchaku-lite"
    assert report.passed, report.to_markdown()
    names = [c.name for c in report.checks]
    assert any("vs plain W4A4" in n for n in names) and any("emulated kernel vs logical" in n for n in names)
    experts = 2 if VARIANTS[variant].experts else 1
    assert len(_transformers(out)) == experts
    tables = [t for t in report.tables if "per-layer" in t]
    assert len(tables) == experts and all(report.tables[t] for t in tables)
    rows = report.tables[tables[0]]
    assert [r["rel_l2"] for r in rows] == sorted((r["rel_l2"] for r in rows), reverse=True)


def test_nvfp4_with_smoothing_search_validates(svdq):
    from wan_export.validators.svdquant import validate_svdquant

    rel, _, out = svdq("wan2.1-t2v-1.3b", "nvfp4", "auto")
    report = validate_svdquant(out, rel)
    assert report.passed, report.to_markdown()
    layers = json.load(open(os.path.join(out, "transformer", "svdquant.json")))["layers"]
    assert {(r["alpha"], r["beta"]) for r in layers} - {(0.5, 0.5)}, "the search never moved off one candidate"
    assert all(r["error"] <= r["plain_w4a4_error"] for r in layers)


def test_format_matches_svdqw4a4linear(svdq):
    import torch

    from wan_export.quantizers.svdquant_pack import unpack_scales

    _, _, out = svdq("wan2.1-t2v-1.3b", "nvfp4", "auto")
    folder = os.path.join(out, "transformer")
    cfg = json.load(open(os.path.join(folder, "config.json")))
    q = cfg["quantization_config"]
    assert q["quant_method"] == "nunchaku_lite" and q["compute_dtype"] == "bfloat16"
    sv = q["svdq_w4a4"]
    assert (sv["precision"], sv["group_size"], sv["rank"]) == ("nvfp4", 16, 32)
    assert "blocks.0.attn1.to_q" in sv["targets"] and "blocks.1.ffn.net.0.proj" in sv["targets"]
    f = SafetensorsFile(os.path.join(folder, "diffusion_pytorch_model.safetensors"))
    infos = {i.name: (i.dtype, tuple(i.shape)) for i in f.infos()}
    p = "blocks.0.ffn.net.0.proj."
    assert infos[p + "qweight"] == ("I8", (512, 128)) and infos[p + "wscales"] == ("F8_E4M3", (16, 512))
    assert infos[p + "proj_down"] == ("BF16", (256, 32)) and infos[p + "proj_up"] == ("BF16", (512, 32))
    assert infos[p + "wtscale"] == ("BF16", (1,)) and infos[p + "wcscales"] == ("BF16", (512,))
    assert p + "weight" not in infos and "patch_embedding.weight" in infos
    assert {d for n, (d, _) in infos.items() if n.startswith("condition_embedder")} == {"BF16"}
    meta = json.loads(f.metadata["wan_export.svdquant"])
    assert f.metadata["runtime_tensor_layout"] == "nunchaku_packed" == meta["layout"]
    assert meta["precision"] == "nvfp4" and meta["rank"] == 32 and meta["calibration"]["variant"]
    smooth = unpack_scales(torch.from_numpy(f.read(p + "smooth_factor").view("int16").copy()).view(torch.bfloat16))
    assert not torch.equal(smooth, torch.ones_like(smooth))


def test_cli_dit_file_dry_run_exclude_and_same_bytes(tiny_dit_file, runner, tmp_path):
    from wan_export.quantizers.calib_synthetic import write_synthetic_calib

    src = tiny_dit_file("wan2.1-t2v-1.3b")
    calib = write_synthetic_calib(src, str(tmp_path / "calib.safetensors"), save_activations=16)
    args = ["svdquant", src, "--calib", calib, "--smooth", "0.5", "--rank", "16", "--exclude-blocks", "1", "--json"]
    dry = runner.invoke(cli, args + ["-o", str(tmp_path / "dry"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert not (tmp_path / "dry").exists() and json.loads(dry.stdout)["targets"] == 10
    digests = []
    for name in ("a", "b"):
        r = runner.invoke(cli, args + ["-o", str(tmp_path / name), "-q"])
        assert r.exit_code == 0, r.output
        res = json.loads(r.stdout)
        assert res["layout"] == "transformer" and res["targets"] == 10
        assert {k["rule"] for k in res["kept_16bit"]} == {"--exclude-blocks"} and len(res["kept_16bit"]) == 10
        digests.append({n: open(tmp_path / name / n, "rb").read() for n in sorted(os.listdir(tmp_path / name))})
    assert digests[0] == digests[1]
    v = runner.invoke(cli, ["validate", str(tmp_path / "a"), "--against", src, "--json"])
    assert v.exit_code == 0, v.output
    assert json.loads(v.stdout)["passed"]


def test_default_name():
    from wan_export.converters.svdquant import default_output, make_config

    cfg = make_config("int4", 32, "auto", False, "bfloat16")
    assert default_output(VARIANTS["wan2.1-t2v-14b"], cfg, False) == "Wan2.1-T2V-14B-Diffusers-svdq-int4-r32"
