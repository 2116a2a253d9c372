"""`release --plan` / `--dry-run`: the job graph of a recipe with what each job would write, from
the writers' dry runs; and the text forms of plans and release results.

Without the source's data the plan works from shapes: a recipe whose [source] names a `variant`
is planned on that variant's full-size shapes (meta_release) when its path is absent, so a 14B
recipe plans in seconds with no weights. The GitHub Actions matrix has one entry per runnable job.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from importlib import import_module

from wan_export.release_pipeline import formats as F
from wan_export.release_pipeline.recipe import load


@contextlib.contextmanager
def plan_source(recipe, override: str | None):
    """(Release, description): the real source if present, else shapes only."""
    from wan_export.release import open_input

    path = override or (os.path.join(recipe.folder, recipe.source["path"]) if "path" in recipe.source else None)
    if path and os.path.exists(path):
        yield open_input(path), os.path.abspath(path)
    elif recipe.source.get("variant"):
        from wan_export.meta_release import meta_release

        yield meta_release(recipe.source["variant"]), f"{recipe.source['variant']} full-size shapes (no data)"
    elif "synthetic" in recipe.source:
        from wan_export.synthetic import write_release

        with tempfile.TemporaryDirectory(prefix="wan-plan-") as tmp:
            folder = write_release(os.path.join(tmp, "source"), recipe.source["synthetic"],
                                   seed=recipe.source.get("seed", 0))
            yield open_input(folder), f"synthetic {recipe.source['synthetic']}"
    else:
        from wan_export.errors import BadInputError

        raise BadInputError("source not found and [source] names no variant to plan from shapes", path)


def dry_run(rel, art: dict) -> list[dict]:
    module, fn = F.FORMATS[art["format"]].dry_run.split(":")
    opts = {k: v for k, v in art["options"].items() if k not in ("quant", "imatrix")}
    return getattr(import_module(module), fn)(rel, **opts)


def plan(recipe_path: str, source: str | None = None, tensors: bool = False) -> dict:
    recipe = load(recipe_path)
    jobs, calib = [], any(F.needs_calibration(a) for a in recipe.artifacts)
    if calib:
        jobs.append({"name": "calibrate", "format": "calibration", "needs": [],
                     "status": "ready" if F.CALIBRATE else "unavailable",
                     "reason": None if F.CALIBRATE else "calibration not available in this build"})
    with plan_source(recipe, source) as (rel, where):
        for a in recipe.artifacts:
            why = F.unavailable(a)
            job = {"name": a["name"], "format": a["format"], "options": a["options"],
                   "needs": ["calibrate"] if F.needs_calibration(a) else [],
                   "status": "unavailable" if why else "ready", "reason": why}
            if F.FORMATS[a["format"]].dry_run and not (why and a["options"].get("quant")):   # quant changes sizes
                files = dry_run(rel, a)
                job["files"] = files if tensors else [{k: f[k] for k in ("path", "bytes", "exact")} for f in files]
                job["bytes"] = sum(f["bytes"] for f in files)
            jobs.append(job)
    matrix = {"include": [{"artifact": j["name"]} for j in jobs if j["status"] == "ready" and j["name"] != "calibrate"]}
    return {"recipe": recipe.path, "recipe_sha256": recipe.sha256, "source": where, "jobs": jobs, "matrix": matrix}


def _size(n) -> str:
    from wan_export.release_pipeline.manifest import human_size

    return human_size(n)


def render_text(p: dict, tensors: bool = False) -> str:
    lines = [f"release plan: {p['recipe']} (source: {p['source']})",
             f"{'job':<22} {'format':<10} {'status':<12} {'files':>5} {'size':>12}  needs"]
    for j in p["jobs"]:
        files = j.get("files")
        lines.append(f"{j['name']:<22} {j['format']:<10} {j['status']:<12} {len(files) if files else '-':>5} "
                     f"{_size(j.get('bytes')):>12}  {','.join(j['needs']) or '-'}"
                     + (f"  ({j['reason']})" if j.get("reason") else ""))
        for f in (files or []) if tensors else ():
            lines.append(f"    {f['path']}  {'' if f['exact'] else '~'}{f['bytes']:,} bytes"
                         + (f"  {len(f['tensors'])} tensors: {', '.join(sorted({t['type'] for t in f['tensors']}))}"
                            if f["tensors"] else ""))
    lines.append("matrix=" + json.dumps(p["matrix"], separators=(",", ":")))
    return "\n".join(lines)


def render_result(r: dict) -> str:
    lines = [f"wan-export release: {r['recipe']} -> {r['dist']}"]
    for a in r["artifacts"]:
        v = a.get("validation") or {}
        w = v.get("worst")
        worst = f"worst {w['metric']} {w['value']} vs bound {w['bound']}" if w else ""
        state = a["status"] + (" (resumed)" if a["resumed"] else "")
        detail = a.get("reason") or (f"{v['checks'] - v['failed']}/{v['checks']} checks; {worst}" if v else "")
        lines.append(f"  {a['name']:<22} {state:<20} {_size(a.get('bytes')):>12}  {detail}")
    tail = "release files written" if r["finished"] else "job outputs written (merge them with --collect)"
    lines.append(("all gates passed; " if r["passed"] else "a gate FAILED; ") + tail)
    return "\n".join(lines)
