"""`wan-export release` on a tiny recipe: files, manifest, SHA256SUMS, model card, reports,
determinism, fan-out (plan -> --only jobs -> --collect == one run), resume, gates, interruption."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from wan_export.cli import cli
from wan_export.release_pipeline import formats

RECIPE = """schema = 1
[model]
name = "tiny"
license = "apache-2.0"
base_model = "Wan-AI/Wan2.1-T2V-1.3B"
[source]
synthetic = "wan2.1-t2v-1.3b"
[[artifact]]
name = "comfyui-bf16"
format = "comfyui"
dtype = "bf16"
component = "dit"
[[artifact]]
name = "gguf"
format = "gguf"
types = ["Q8_0"]
[[artifact]]
name = "vae"
format = "comfyui"
component = "vae"
"""


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(RECIPE)
    return str(path)


@pytest.fixture(scope="module")
def one_run(recipe, tmp_path_factory):
    from click.testing import CliRunner

    dist = tmp_path_factory.mktemp("one") / "dist"
    result = CliRunner().invoke(cli, ["release", recipe, "-o", str(dist), "-q", "--json"])
    assert result.exit_code == 0, result.output
    return dist, json.loads(result.stdout)


def _read(p) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def test_release_writes_everything(one_run):
    dist, result = one_run
    status = {a["name"]: a["status"] for a in result["artifacts"]}
    assert status == {"comfyui-bf16": "passed", "gguf": "passed", "vae": "passed"}
    man = json.loads(_read(dist / "manifest.json"))
    assert man["format"] == "wan-export-release/1" and man["source"]["synthetic"] == "wan2.1-t2v-1.3b"
    sums = _read(dist / "SHA256SUMS").decode().splitlines()
    files = [f for a in man["artifacts"] for f in a.get("files", [])]
    assert len(sums) == len(files) == 3
    for line in sums:
        digest, path = line.split("  ")
        assert hashlib.sha256(_read(dist / path)).hexdigest() == digest
    gguf = next(a for a in man["artifacts"] if a["name"] == "gguf")
    w = gguf["validation"]["worst"]
    assert gguf["validation"]["passed"] and 0 < w["value"] < w["bound"] == 0.015 and w["metric"] == "rel_l2"
    card = _read(dist / "README.md").decode()
    assert card.startswith("---\nbase_model: Wan-AI/Wan2.1-T2V-1.3B\nbase_model_relation: quantized\n")
    for text in ("library_name:", "pipeline_tag: text-to-video", "license: apache-2.0", "tags:",
                 "ComfyUI/models/diffusion_models/", "UnetLoaderGGUF", "sd -M vid_gen", "VAELoader"):
        assert text in card
    html = _read(dist / "report.html").decode()
    assert "<svg" in html and "http" not in html.replace("http://www.w3.org/2000/svg", "") and "<script" not in html
    assert "sampling parity: not run" in html
    report = json.loads(_read(dist / "report.json"))
    assert [s["artifact"] for s in report["summary"]] == ["comfyui-bf16", "gguf", "vae"]
    assert 0.5 < report["summary"][1]["ratio_bf16"] < 0.9    # Q8_0 vs bf16 (tiny: F16/F32 embeddings dominate)
    assert "timings" not in man and json.loads(_read(dist / "timings.json"))["gguf"]["build_s"] >= 0


def test_same_recipe_same_bytes_and_fan_out(runner, recipe, one_run, tmp_path):
    """plan -> two --only jobs -> --collect: the manifest of one run, byte for byte."""
    dist, _ = one_run
    plan = runner.invoke(cli, ["release", recipe, "--plan", "--json"])
    assert plan.exit_code == 0, plan.output
    matrix = json.loads(plan.stdout)["matrix"]["include"]
    assert [m["artifact"] for m in matrix] == ["comfyui-bf16", "gguf", "vae"]
    jobs = []
    for m in matrix:
        out = tmp_path / f"job-{m['artifact']}"
        r = runner.invoke(cli, ["release", recipe, "--only", m["artifact"], "-o", str(out), "-q"])
        assert r.exit_code == 0, r.output
        assert not (out / "manifest.json").exists()
        jobs.append(str(out))
    merged = tmp_path / "merged"
    r = runner.invoke(cli, ["release", recipe, "--collect", *jobs, "-o", str(merged)])
    assert r.exit_code == 0, r.output
    for name in ("manifest.json", "SHA256SUMS", "README.md", "report.json", "report.html", "report.md"):
        assert _read(merged / name) == _read(dist / name), name
    assert _read(merged / "gguf" / os.listdir(dist / "gguf")[0]) == _read(dist / "gguf" / os.listdir(dist / "gguf")[0])


def test_resume_skips_matching_and_rebuilds_changed(runner, recipe, one_run, tmp_path):
    import shutil

    dist = tmp_path / "dist"
    shutil.copytree(one_run[0], dist)
    r = runner.invoke(cli, ["release", recipe, "-o", str(dist), "--resume", "--json", "-q"])
    assert r.exit_code == 0 and all(a["resumed"] for a in json.loads(r.stdout)["artifacts"])
    victim = dist / "gguf" / os.listdir(dist / "gguf")[0]
    victim.write_bytes(b"corrupt")
    r = runner.invoke(cli, ["release", recipe, "-o", str(dist), "--resume", "--json", "-q"])
    resumed = {a["name"]: a["resumed"] for a in json.loads(r.stdout)["artifacts"]}
    assert resumed == {"comfyui-bf16": True, "gguf": False, "vae": True}
    assert _read(dist / "manifest.json") == _read(one_run[0] / "manifest.json")


def test_failed_gate_exits_1_and_keeps_everything(runner, recipe, tmp_path):
    path = tmp_path / "gated.toml"
    path.write_text(open(recipe).read() + "[gates.gguf]\nmax_rel_l2 = 1e-9\n")
    dist = tmp_path / "dist"
    r = runner.invoke(cli, ["release", str(path), "-o", str(dist), "--only", "gguf", "-q"])
    assert r.exit_code == 1 and "gate failed for gguf" in r.stderr
    assert any(n.endswith(".gguf") for n in os.listdir(dist / "gguf"))
    assert json.loads(_read(dist / "jobs" / "gguf.json"))["status"] == "failed"


def test_interrupted_build_leaves_nothing(runner, recipe, tmp_path, monkeypatch):
    def explode(src, folder, opts, ctx):
        with open(os.path.join(folder, "half.gguf"), "wb") as f:
            f.write(b"x")
        raise KeyboardInterrupt
    monkeypatch.setitem(formats.FORMATS, "gguf", formats.FORMATS["gguf"].__class__(
        **{**formats.FORMATS["gguf"].__dict__, "build": explode}))
    dist = tmp_path / "dist"
    r = runner.invoke(cli, ["release", recipe, "-o", str(dist), "--only", "gguf", "-q"])
    assert r.exit_code == 130
    assert not (dist / "gguf").exists() and not (dist / "jobs" / "gguf.json").exists()
    assert not [n for n in os.listdir(dist) if n.startswith(".gguf")]


def test_gguf_dry_run_sizes_equal_written_files(runner, one_run, tmp_path):
    dist, _ = one_run
    r = runner.invoke(cli, ["gguf", str(dist / "source"), "--dry-run", "--json", "-t", "Q8_0,Q4_K_M"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["files"]
    out = tmp_path / "g"
    assert runner.invoke(cli, ["gguf", str(dist / "source"), "-o", str(out), "-t", "Q8_0,Q4_K_M", "-q"]).exit_code == 0
    assert {f["path"]: f["bytes"] for f in rows} == {n: os.path.getsize(out / n) for n in os.listdir(out)}
    assert all(f["exact"] for f in rows) and sum(len(f["tensors"]) for f in rows) == 2 * 69


def test_comfyui_and_diffusers_dry_runs_equal_written_sizes(runner, one_run, tmp_path):
    src = str(one_run[0] / "source")
    for writer in ("comfyui", "diffusers"):
        r = runner.invoke(cli, [writer, src, "--dry-run", "--json"])
        assert r.exit_code == 0, r.output
        out = tmp_path / writer
        assert runner.invoke(cli, [writer, src, "-o", str(out), "-q"]).exit_code == 0
        for f in json.loads(r.stdout)["files"]:
            if f["exact"]:
                assert os.path.getsize(out / f["path"]) == f["bytes"], f["path"]
    assert not os.path.exists("wan2.1_t2v_custom_d256_l2_bf16.safetensors")


def test_full_size_plan_and_dry_run_from_shapes(runner):
    from wan_export.converters.gguf import file_size
    from wan_export.variants import VARIANTS

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = runner.invoke(cli, ["release", os.path.join(root, "recipes", "wan2.1-t2v-14b.toml"), "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["source"] == "wan2.1-t2v-14b full-size shapes (no data)"
    jobs = {j["name"]: j for j in plan["jobs"]}
    ggufs = {f["path"]: f["bytes"] for f in jobs["gguf"]["files"]}
    assert ggufs["wan2.1-t2v-14b-Q4_K_M.gguf"] == file_size(VARIANTS["wan2.1-t2v-14b"].config, "Q4_K_M")
    dit = next(f for f in jobs["comfyui-bf16"]["files"] if f["path"] == "wan2.1_t2v_14B_bf16.safetensors")
    assert 28.5e9 < dit["bytes"] < 28.7e9 and len(dit["tensors"]) == 1095
    assert jobs["calibrate"]["status"] == "ready" and jobs["trt-fp8-sm89"]["needs"] == ["calibrate"]
    assert {m["artifact"] for m in plan["matrix"]["include"]} == set(jobs) - {"calibrate"}
