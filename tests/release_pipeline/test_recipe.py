"""Recipes: every shipped recipe parses; a bad one exits 2 with one line naming the key and its line."""
from __future__ import annotations

import glob
import os

import pytest

from wan_export.cli import cli
from wan_export.release_pipeline import formats, recipe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.toml")))
GOOD = """schema = 1
[model]
name = "m"
license = "apache-2.0"
base_model = "Wan-AI/Wan2.1-T2V-1.3B"
[source]
synthetic = "wan2.1-t2v-1.3b"
[[artifact]]
name = "a"
format = "comfyui"
dtype = "bf16"
[[artifact]]
name = "b"
format = "gguf"
types = ["Q8_0"]
"""


def test_shipped_recipes_parse():
    names = {os.path.basename(p) for p in RECIPES}
    for variant in ("wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p",
                    "wan2.1-flf2v-14b-720p", "wan2.1-vace-14b", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b",
                    "wan2.2-ti2v-5b", "demo"):
        assert f"{variant}.toml" in names
    for path in RECIPES:
        r = recipe.load(path)
        assert r.artifacts and r.model["base_model"].startswith("Wan-AI/")


def test_every_format_of_the_shipped_recipes_is_in_this_build():
    r = recipe.load(os.path.join(ROOT, "recipes", "wan2.1-t2v-14b.toml"))
    why = {a["name"]: formats.unavailable(a) for a in r.artifacts}
    assert set(why) >= {"comfyui-bf16", "comfyui-fp8", "diffusers", "trt-fp8-sm89", "svdquant-int4"}
    assert all(v is None for v in why.values()), why
    assert formats.unavailable({"format": "comfyui", "options": {"quant": "fp4x"}}) == \
        "comfyui quant fp4x not available in this build"
    assert r.calibration["steps"] == 8


@pytest.mark.parametrize("edit, line, message", [
    (("dtype = \"bf16\"", "dtype = \"bf8\""), 11, "artifact[0].dtype: 'bf8' is not one of bf16, fp16, fp32"),
    (("format = \"gguf\"", "format = \"gguff\""), 14, "artifact[1].format: unknown format 'gguff'"),
    (("types = [\"Q8_0\"]", "types = [\"Q8_0\"]\ncolour = 1"), 16, "artifact[1].colour: unknown key"),
    (("name = \"b\"", "name = \"a\""), 13, "artifact[1].name: duplicate artifact name 'a'"),
    (("license = \"apache-2.0\"\n", ""), 2, "model: missing required key 'license'"),
    (("synthetic = \"wan2.1-t2v-1.3b\"", "synthetic = \"x\"\npath = \"y\""), 6,
     "source: give exactly one of 'path' or 'synthetic'"),
    (("types = [\"Q8_0\"]", "types = [\"Q8_0\"]\n[gates.c]\nmax_rel_l2 = 0.1"), 16, "gates.c: no artifact named 'c'"),
    (("types = [\"Q8_0\"]", "types = [\"Q8_0\"]\n[gates.b]\nmax_rel_l2 = \"big\""), 17,
     "gates.b.max_rel_l2: expected float"),
    (("types = [\"Q8_0\"]", "types = [\"Q8_0\"]\nimatrix = \"calibration\""), 16,
     "artifact[1].imatrix: needs a [calibration] table"),
    (("dtype = \"bf16\"", "dtype = bf16"), 11, "not valid TOML"),
])
def test_bad_recipe_names_key_and_line(runner, tmp_path, edit, line, message):
    path = tmp_path / "r.toml"
    path.write_text(GOOD.replace(*edit, 1))
    result = runner.invoke(cli, ["release", str(path), "-o", str(tmp_path / "dist")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {path}: line {line}: {message}"), lines
    assert not (tmp_path / "dist").exists() or not os.listdir(tmp_path / "dist")


def test_missing_source(runner, tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(GOOD.replace('synthetic = "wan2.1-t2v-1.3b"', 'path = "nowhere"'))
    result = runner.invoke(cli, ["release", str(path), "-o", str(tmp_path / "dist")])
    assert result.exit_code == 2 and "source not found" in result.stderr


def test_key_lines():
    lines = recipe.key_lines(GOOD)
    assert lines[("artifact", 1, "types")] == 15 and lines[("model",)] == 2 and lines[("source", "synthetic")] == 7
