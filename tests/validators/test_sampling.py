"""`validate --sampling` on the project's own artifacts of tiny releases, and on broken diffusers folders.

Lossless artifacts (same weights as the source) must repeat the reference trajectory: bit for
bit through our readers, per-step rel-L2 <= 1e-6 through diffusers' scheduler (bound 1e-5).
A broken scheduler config fails with the field and its official value named.
"""
from __future__ import annotations

import base64
import json
import os
import shutil

import pytest

from wan_export.cli import cli
from wan_export.errors import BadInputError
from wan_export.validators.sampling import diffusers_scheduler_problems, validate_sampling
from wan_export.variants import VARIANTS

pytest.importorskip("diffusers")
STEPS = ["--sampling", "--steps", "3"]


@pytest.fixture(scope="module")
def artifacts(tiny_release, tmp_path_factory):
    """variant -> (release, {kind: artifact path}), cached: comfyui (bf16, lossless), stock file, diffusers."""
    from wan_export.converters.comfyui import convert as comfyui
    from wan_export.converters.diffusers import convert as diffusers

    cache = {}

    def make(variant):
        if variant not in cache:
            src = tiny_release(variant)
            out = tmp_path_factory.mktemp("art")
            comfyui(src, str(out / "comfy"), component="dit")
            diffusers(src, str(out / "diffusers"))
            found = {"diffusers": str(out / "diffusers")}
            found["comfyui"] = sorted(str(out / "comfy" / f) for f in os.listdir(out / "comfy"))
            cache[variant] = (src, found)
        return cache[variant]

    return make


def _run(runner, artifact, src, *extra):
    result = runner.invoke(cli, ["validate", artifact, "--against", src, *STEPS, "--json", *extra])
    return result.exit_code, (json.loads(result.stdout) if result.stdout.startswith("{") else result.output)


def test_lossless_comfyui_file_passes_through_the_cli(artifacts, runner):
    src, found = artifacts("wan2.1-t2v-1.3b")
    code, report = _run(runner, found["comfyui"][0], src)
    assert code == 0, report
    s = report["sampling"]
    assert s["weights"] == "exact" and s["step_rel_l2"] == [0.0, 0.0, 0.0]
    frame = s["preview_frames"]["artifact"][0]                     # uint8 [H, W, 3], base64 in JSON
    assert frame["shape"] == [32, 32, 3] and frame["dtype"] == "uint8"
    assert len(base64.b64decode(frame["base64"])) == 32 * 32 * 3


@pytest.mark.parametrize("kind", ["stock", "diffusers"])
def test_lossless_artifacts_pass(artifacts, tmp_path, kind):
    src, found = artifacts("wan2.1-t2v-1.3b")
    path = found["diffusers"]
    if kind == "stock":
        from wan_export.converters.stock import write_stock

        write_stock(src, str(tmp_path / "stock"))
        path = str(tmp_path / "stock")                              # an official release folder
    report = validate_sampling(path, src, steps=3)
    assert report.passed, report.to_markdown()
    s = report.extra["sampling"]
    assert s["weights"] == "exact"
    assert max(s["step_rel_l2"]) <= (1e-5 if kind == "diffusers" else 0.0)
    assert s["video_psnr_db"] > 80 and s["preview_frames"]["reference"][0].shape == (32, 32, 3)


def test_one_a14b_expert_file_is_matched_to_its_expert(artifacts):
    src, found = artifacts("wan2.2-t2v-a14b")
    low = [p for p in found["comfyui"] if "low_noise" in p][0]
    report = validate_sampling(low, src, steps=3)
    assert report.passed and "matched to low_noise_model" in report.info["sampling weights"]
    assert report.extra["sampling"]["experts"] == ["high_noise_model", "high_noise_model", "low_noise_model"]


# (file, field, broken value or None to delete, message part)
BROKEN = [
    ("scheduler/scheduler_config.json", "flow_shift", 3.0,
     "scheduler/scheduler_config.json: flow_shift is 3.0; the official value is 5.0"),
    ("scheduler/scheduler_config.json", "use_flow_sigmas", None,
     "scheduler/scheduler_config.json: use_flow_sigmas is missing; the official value is True"),
    ("scheduler/scheduler_config.json", "_class_name", "FlowMatchEulerDiscreteScheduler",
     "scheduler/scheduler_config.json: _class_name is 'FlowMatchEulerDiscreteScheduler'; "
     "the official value is 'UniPCMultistepScheduler'"),
    ("model_index.json", "boundary_ratio", 0.5, "model_index.json: boundary_ratio is 0.5; the official value is 0.875"),
]


@pytest.mark.parametrize("file,field,value,message", BROKEN)
def test_broken_fields_are_named(artifacts, tmp_path, file, field, value, message):
    variant = "wan2.2-t2v-a14b" if field == "boundary_ratio" else "wan2.1-t2v-1.3b"
    src, found = artifacts(variant)
    _break(found["diffusers"], tmp_path / "bad", file, field, value)
    assert diffusers_scheduler_problems(str(tmp_path / "bad"), VARIANTS[variant]) == [message]


def test_broken_scheduler_fails_through_the_cli(artifacts, runner, tmp_path):
    """A wrong flow_shift: the field is named and the trajectory diverges (exit 1)."""
    src, found = artifacts("wan2.1-t2v-1.3b")
    _break(found["diffusers"], tmp_path / "bad", *BROKEN[0][:3])
    code, report = _run(runner, str(tmp_path / "bad"), src)
    assert code == 1
    failed = {c["name"]: c["failures"] for c in report["checks"] if not c["passed"]}
    assert failed.pop("sampling scheduler config") == [BROKEN[0][3]]
    assert failed and all(f[0].startswith(("rel_l2", "psnr_db")) for f in failed.values())


def test_sampling_options_need_the_flag(artifacts, runner):
    src, found = artifacts("wan2.1-t2v-1.3b")
    result = runner.invoke(cli, ["validate", found["diffusers"], "--against", src, "--steps", "3"])
    assert result.exit_code == 2 and "go with --sampling" in result.output
    with pytest.raises(BadInputError, match=r"multiples of 16 \(VAE stride 8 x patch 2\)"):
        validate_sampling(found["diffusers"], src, steps=1, size=(30, 32))


def _break(folder, out, file, field, value):
    shutil.copytree(folder, out)
    path = os.path.join(out, file)
    with open(path) as f:
        d = json.load(f)
    if value is None:
        d.pop(field)
    else:
        d[field] = value
    with open(path, "w") as f:
        json.dump(d, f)
