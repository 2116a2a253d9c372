"""The demo's STEPS rows that release recipes/demo.toml: each artifact's build and validation is
one row (the same engine functions `wan-export release` runs), and a last row writes the manifest,
model card and reports. A row returns what demo.run_step summarises.
"""
from __future__ import annotations

import os
from pathlib import Path

from wan_export.release_pipeline import engine
from wan_export.release_pipeline.recipe import load

DEMO_RECIPE = str(Path(__file__).resolve().parents[2] / "recipes" / "demo.toml")


def _ctx(recipe: str, dist: str, source: str) -> engine.Context:
    r = load(recipe)
    os.makedirs(dist, exist_ok=True)
    return engine.Context(r, os.path.abspath(dist), engine.resolve_source(r, dist, source))


def build(recipe: str, artifact: str, dist: str, source: str) -> dict:
    ctx = _ctx(recipe, dist, source)
    rec = engine.build(ctx, ctx.recipe.artifact(artifact))
    return {"artifact": os.path.join(ctx.dist, artifact), "result": rec["status"]}


def check(recipe: str, artifact: str, dist: str, source: str) -> dict:
    ctx = _ctx(recipe, dist, source)
    rec = engine.check(ctx, ctx.recipe.artifact(artifact))
    reports = rec.get("reports") or []
    return {"artifact": os.path.join(ctx.dist, artifact), "passed": rec["status"] == "passed",
            "checks": [c for r in reports for c in r["checks"]]}


def calibrate(recipe: str, dist: str, source: str) -> dict:
    """The recipe's shared CALIB (release_pipeline.calibration), as the release job 'calibrate' makes it."""
    from wan_export.release_pipeline.calibration import ensure

    return {"artifact": ensure(_ctx(recipe, dist, source)), "result": "written"}


def finish(recipe: str, dist: str, source: str) -> dict:
    result = engine.finish(_ctx(recipe, dist, source))
    return {"artifact": os.path.join(result["dist"], "report.html")}
