"""`wan-export release`: build and validate every artifact of a recipe into DIST, then write the
manifest, SHA256SUMS, model card and reports.

Each artifact is one job: built into DIST/<name>/ under a temp name (atomic_dir), validated, and
recorded in DIST/jobs/<name>.json (files with sha256, reports, input hash; wall times beside it
in <name>.timing.json). `finish` turns the records into the release files, so one run, a resumed
run, and --only jobs merged with --collect give the same manifest.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import time
from dataclasses import dataclass, field

from wan_export import __version__
from wan_export.atomic import atomic_dir
from wan_export.errors import BadInputError, ParityError
from wan_export.progress import null
from wan_export.release_pipeline import formats as F
from wan_export.release_pipeline import manifest as M
from wan_export.release_pipeline.recipe import Recipe, load

JOBS_DIR = "jobs"


@dataclass
class Context:
    recipe: Recipe
    dist: str
    src: str
    progress: object = null
    jobs: int = 0
    _source: dict = field(default_factory=dict)

    def recipe_path(self, p: str | None) -> str | None:
        return None if p is None else os.path.join(self.recipe.folder, p)

    @property
    def source(self) -> dict:
        """Variant, files with sha256 (relative to the source) and their joint hash; computed once."""
        if not self._source:
            from wan_export.release import open_input

            rel = open_input(self.src)
            want = self.recipe.source.get("variant")
            got = rel.variant.name if rel.variant else None
            if want and got != want:
                raise BadInputError(f"source is {got or 'not a Wan DiT release'}, the recipe wants {want}", self.src)
            files = M.file_rows(self.src)
            bf16: dict[str, int] = {}
            for comp in rel.components.values():
                bf16[comp.kind] = bf16.get(comp.kind, 0) + 2 * sum(i.numel for i in comp.table.infos())
            self._source = {"variant": got, "files": files, "sha256": M.sha256_json(files), "bf16_bytes": bf16}
            if "synthetic" in self.recipe.source:
                self._source["synthetic"] = self.recipe.source["synthetic"]
        return self._source

    def record_path(self, name: str, suffix: str = ".json") -> str:
        return os.path.join(self.dist, JOBS_DIR, name + suffix)


def resolve_source(recipe: Recipe, dist: str, override: str | None) -> str:
    """--source, else [source] path (relative to the recipe), else a synthetic release in DIST/source."""
    if override:
        path = override
    elif "path" in recipe.source:
        path = os.path.join(recipe.folder, recipe.source["path"])
    else:
        path = os.path.join(dist, "source")
        if not os.path.isdir(path):
            from wan_export.synthetic import write_release

            with atomic_dir(path) as tmp:
                write_release(tmp, recipe.source["synthetic"], seed=recipe.source.get("seed", 0))
    if not os.path.exists(path):
        raise BadInputError("source not found (set [source] path or pass --source)", path)
    return os.path.abspath(path)


def input_hash(ctx: Context, art: dict) -> str:
    calib = ctx.recipe.calibration if F.needs_calibration(art) else None
    return M.sha256_json({"tool": __version__, "format": art["format"], "options": art["options"],
                          "calibrated": art["calibrated"], "validate": art["validate"],
                          "sampling": art.get("sampling", False),
                          "gate": ctx.recipe.gates.get(art["name"]), "calibration": calib,
                          "source": ctx.source["sha256"]})


def _base_record(ctx: Context, art: dict) -> dict:
    return {"name": art["name"], "format": art["format"], "options": art["options"],
            "gate": ctx.recipe.gates.get(art["name"]), "recipe_sha256": ctx.recipe.sha256,
            "source": ctx.source, "input_sha256": input_hash(ctx, art)}


def build(ctx: Context, art: dict) -> dict:
    """Build one artifact into DIST/<name>/ (all or nothing) and record it (status 'built')."""
    rec = _base_record(ctx, art)
    why = F.unavailable(art)
    if why:
        rec.update(status="unavailable", reason=why)
    else:
        start = time.perf_counter()
        opts = dict(art["options"])
        if F.needs_calibration(art):
            from wan_export.release_pipeline.calibration import ensure

            opts["_calib"] = ensure(ctx)
        with atomic_dir(os.path.join(ctx.dist, art["name"]), overwrite=True) as tmp:
            F.FORMATS[art["format"]].build(ctx.src, tmp, opts, ctx)
        rec.update(status="built", files=M.file_rows(ctx.dist, art["name"]))
        rec["bytes"] = sum(f["bytes"] for f in rec["files"])
        _timing(ctx, art["name"], build_s=time.perf_counter() - start)
    M.write_json(ctx.record_path(art["name"]), rec)
    return rec


def check(ctx: Context, art: dict) -> dict:
    """Validate a built artifact with its consumer's back-loader, apply its gate, update its record."""
    rec = read_record(ctx.record_path(art["name"]))
    if rec.get("status") != "built" or not art["validate"]:
        return rec
    from importlib import import_module

    fmt, start, reports = F.FORMATS[art["format"]], time.perf_counter(), []
    module, fn = (fmt.validator or "wan_export.validators.validate:validate").split(":")
    validate = getattr(import_module(module), fn)
    for target in F.validation_targets(fmt, os.path.join(ctx.dist, art["name"])):
        sampling = {"sampling": {}} if art.get("sampling") and not fmt.validator else {}
        report = validate(target, ctx.src, **sampling)
        _apply_gate(report, ctx.recipe.gates.get(art["name"]))
        d = json.loads(report.to_json())
        d.update(artifact=os.path.relpath(target, ctx.dist).replace(os.sep, "/"), against="source")
        reports.append(d)
    rec.update(reports=reports, status="passed" if all(r["passed"] for r in reports) else "failed")
    _timing(ctx, art["name"], validate_s=time.perf_counter() - start)
    M.write_json(ctx.record_path(art["name"]), rec)
    return rec


def _apply_gate(report, gate: dict | None) -> None:
    """A gate replaces the bounds a check states (an exact check stays exact unless max_abs is gated)."""
    from dataclasses import replace

    for c in report.checks if gate else ():
        fields = {k: v for k, v in gate.items() if getattr(c.tolerance, k) is not None}
        if fields:
            c.tolerance = replace(c.tolerance, **fields)


def _timing(ctx: Context, name: str, **seconds) -> None:
    path = ctx.record_path(name, ".timing.json")
    old = read_record(path) if os.path.exists(path) else {}
    M.write_json(path, {**old, **{k: round(v, 3) for k, v in seconds.items()}})


def read_record(path: str) -> dict:
    from wan_export.release import read_json

    return read_json(path)


def up_to_date(ctx: Context, art: dict) -> bool:
    """--resume: the record's input hash matches and every recorded file is there with its sha256."""
    path = ctx.record_path(art["name"])
    if not os.path.exists(path):
        return False
    rec = read_record(path)
    if rec.get("input_sha256") != input_hash(ctx, art) or rec.get("status") not in ("passed", "failed",
                                                                                     "unavailable"):
        return False
    files = rec.get("files", [])
    return all(os.path.isfile(os.path.join(ctx.dist, f["path"])) and
               os.path.getsize(os.path.join(ctx.dist, f["path"])) == f["bytes"] and
               M.sha256_file(os.path.join(ctx.dist, f["path"])) == f["sha256"] for f in files)


def run_job(ctx: Context, art: dict, resume: bool) -> dict:
    if resume and up_to_date(ctx, art):
        rec = read_record(ctx.record_path(art["name"]))
        return {**rec, "resumed": True}
    build(ctx, art)
    return check(ctx, art)


def release(recipe_path: str, dist: str | None = None, *, only=(), source: str | None = None, jobs: int = 0,
            resume: bool = False, progress=null) -> dict:
    """Run the recipe's jobs (or --only NAMEs) into DIST; a full run also writes the release files."""
    recipe = load(recipe_path)
    names = [n for n in only if n != "calibrate"] if only else recipe.names
    arts = [recipe.artifact(n) for n in names]
    dist = os.path.abspath(dist or "dist")
    os.makedirs(dist, exist_ok=True)
    ctx = Context(recipe, dist, resolve_source(recipe, dist, source), progress, jobs)
    if "calibrate" in only and recipe.calibration is not None:    # the plan's calibration job
        from wan_export.release_pipeline.calibration import ensure

        ensure(ctx)
    records = [run_job(ctx, a, resume) for a in arts]
    if only:
        return _result(ctx, records, finished=False)
    return finish(ctx, resumed={r["name"] for r in records if r.get("resumed")})


def collect(recipe_path: str, dirs, dist: str | None = None, progress=null) -> dict:
    """Merge the job outputs of --only runs (each a DIST folder) into one DIST, then finish it."""
    recipe = load(recipe_path)
    dist = os.path.abspath(dist or "dist")
    os.makedirs(os.path.join(dist, JOBS_DIR), exist_ok=True)
    for d in dirs:
        found = sorted(glob.glob(os.path.join(d, JOBS_DIR, "*.json")))
        if not found:
            raise BadInputError(f"no job outputs ({JOBS_DIR}/*.json) here", d)
        for path in (p for p in found if not p.endswith(".timing.json")):
            rec = read_record(path)
            if rec.get("recipe_sha256") != recipe.sha256:
                raise BadInputError(f"job {rec.get('name')} was built from another recipe", path)
            _copy_job(os.path.abspath(d), dist, rec)
    records = [p for p in glob.glob(os.path.join(dist, JOBS_DIR, "*.json")) if not p.endswith(".timing.json")]
    srcs = {M.canonical(read_record(p)["source"]) for p in records}
    if len(srcs) > 1:
        raise BadInputError("the jobs were built from different sources", dist)
    rec0 = read_record(os.path.join(dist, JOBS_DIR, recipe.names[0] + ".json")) if os.path.exists(
        os.path.join(dist, JOBS_DIR, recipe.names[0] + ".json")) else None
    ctx = Context(recipe, dist, "", progress, _source=rec0["source"] if rec0 else {})
    return finish(ctx)


def _copy_job(src_dist: str, dist: str, rec: dict) -> None:
    if os.path.samefile(src_dist, dist):
        return
    for f in rec.get("files", []):
        target = os.path.join(dist, f["path"])
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(src_dist, f["path"]), target)
    for suffix in (".json", ".timing.json"):
        p = os.path.join(src_dist, JOBS_DIR, rec["name"] + suffix)
        if os.path.exists(p):
            shutil.copyfile(p, os.path.join(dist, JOBS_DIR, rec["name"] + suffix))


def finish(ctx: Context, resumed=frozenset()) -> dict:
    """manifest.json, SHA256SUMS, timings.json, README.md and report.{html,md,json} from the records."""
    from wan_export.release_pipeline import modelcard, report_html

    records = []
    for name in ctx.recipe.names:
        path = ctx.record_path(name)
        if not os.path.exists(path):
            raise BadInputError(f"artifact {name} has no job output (run it with --only {name}, "
                                "or --collect the folder that has it)", ctx.dist)
        records.append(read_record(path))
    source = ctx._source or records[0]["source"]
    man = M.manifest(ctx.recipe, source, records)
    M.write_json(os.path.join(ctx.dist, "manifest.json"), man)
    M.write_sums(os.path.join(ctx.dist, "SHA256SUMS"), records)
    timings = {n: read_record(ctx.record_path(n, ".timing.json")) for n in ctx.recipe.names
               if os.path.exists(ctx.record_path(n, ".timing.json"))}
    M.write_json(os.path.join(ctx.dist, "timings.json"), timings)
    modelcard.write(ctx.dist, ctx.recipe, man)
    report_html.write_release(ctx.dist, man, records)
    return _result(ctx, [{**r, "resumed": r["name"] in resumed} for r in records], finished=True)


def _result(ctx: Context, records: list[dict], finished: bool) -> dict:
    rows = [{"name": r["name"], "format": r["format"], "status": r["status"], "bytes": r.get("bytes"),
             "reason": r.get("reason"), "resumed": bool(r.get("resumed")),
             "validation": M.validation_summary(r["reports"]) if r.get("reports") else None} for r in records]
    return {"recipe": ctx.recipe.path, "dist": ctx.dist, "finished": finished, "artifacts": rows,
            "passed": all(r["status"] != "failed" for r in rows)}


def raise_if_failed(result: dict) -> None:
    bad = [r["name"] for r in result["artifacts"] if r["status"] == "failed"]
    if bad:
        raise ParityError(f"gate failed for {', '.join(bad)} (report written; failed artifacts kept and marked)",
                          result["dist"])
