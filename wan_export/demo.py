"""`wan-export demo`: write a tiny synthetic release, run every conversion and validation on it, summarise.

STEPS is the one table of what the demo runs. Each row is
`(label, "module:function", kwargs)`; string kwargs are formatted with `{src}`
(the release folder), `{out}` (the demo folder) and `{variant}`. A function
returns a path, a dict, or an object with `to_dict()` (a validators Report).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from importlib import import_module

from wan_export.errors import BadInputError, ParityError, WanExportError
from wan_export.release_pipeline.demo_steps import DEMO_RECIPE
from wan_export.release_pipeline.manifest import bounds_text
from wan_export.variants import VARIANTS

DEFAULT_VARIANT = "wan2.1-t2v-1.3b"
SUMMARY_FILE = "demo.json"      # also marks a folder that --overwrite may replace

# The demo releases recipes/demo.toml: each of its artifacts is a build row and a validation row
# (release_pipeline.demo_steps, the engine `wan-export release` runs), into {out}/dist; "report"
# writes its manifest, model card and reports. Other rows may call any function directly.
_BUILD, _CHECK = "wan_export.release_pipeline.demo_steps:build", "wan_export.release_pipeline.demo_steps:check"


def _art(name: str) -> dict:
    return {"recipe": DEMO_RECIPE, "artifact": name, "dist": "{out}/dist", "source": "{src}"}


# (label, "module:function", kwargs). The artifact of a row is its `output` kwarg, else the
# path it returns, else its result's "artifact". A result with "passed" is a parity check.
STEPS: tuple[tuple[str, str, dict], ...] = (
    ("release", "wan_export.synthetic:write_release", {"folder": "{src}", "variant": "{variant}"}),
    ("inspect", "wan_export.inspect:inspect_path", {"path": "{src}"}),
    ("calibrate", "wan_export.release_pipeline.demo_steps:calibrate",
     {"recipe": DEMO_RECIPE, "dist": "{out}/dist", "source": "{src}"}),
    ("comfyui-bf16", _BUILD, _art("comfyui-bf16")),
    ("validate-comfyui", _CHECK, _art("comfyui-bf16")),
    ("stock", _BUILD, _art("stock")),
    ("validate-stock", _CHECK, _art("stock")),
    ("diffusers", _BUILD, _art("diffusers")),
    ("validate-diffusers", _CHECK, _art("diffusers")),
    ("gguf-Q4_K_M", _BUILD, _art("gguf-Q4_K_M")),
    ("validate-gguf", _CHECK, _art("gguf-Q4_K_M")),
    ("onnx-dit", _BUILD, _art("onnx-dit")),
    ("validate-onnx", _CHECK, _art("onnx-dit")),
    ("comfyui-fp8-calibrated", _BUILD, _art("comfyui-fp8")),
    ("validate-comfyui-fp8", _CHECK, _art("comfyui-fp8")),
    ("diffusers-fp8", _BUILD, _art("diffusers-fp8")),
    ("validate-diffusers-fp8", _CHECK, _art("diffusers-fp8")),
    ("svdquant-int4", _BUILD, _art("svdquant-int4")),
    ("validate-svdquant", _CHECK, _art("svdquant-int4")),
    ("report", "wan_export.release_pipeline.demo_steps:finish",
     {"recipe": DEMO_RECIPE, "dist": "{out}/dist", "source": "{src}"}),
)


def run_demo(output: str, variant: str = DEFAULT_VARIANT, *, overwrite: bool = False,
             steps=None) -> dict:
    """Run every step (default STEPS) into `output`; return the summary, also written to demo.json."""
    if variant not in VARIANTS:
        raise BadInputError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    output = os.path.abspath(output)
    _prepare(output, overwrite)
    context = {"src": os.path.join(output, "release"), "out": output, "variant": variant}
    start = time.perf_counter()
    rows = [run_step(label, impl, kwargs, context) for label, impl, kwargs in (steps or STEPS)]
    summary = {"variant": variant, "output": output, "release": context["src"], "steps": rows,
               "seconds": round(time.perf_counter() - start, 3),
               "ok": all(r["status"] in ("ok", "skipped") for r in rows)}
    with open(os.path.join(output, SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    return summary


def _prepare(output: str, overwrite: bool) -> None:
    if os.path.isdir(output) and os.listdir(output):
        if not overwrite:
            raise BadInputError("output exists (use --overwrite)", output)
        if not os.path.exists(os.path.join(output, SUMMARY_FILE)):
            raise BadInputError(f"not a demo folder (no {SUMMARY_FILE}); refusing to replace it", output)
        shutil.rmtree(output)
    elif os.path.exists(output) and not os.path.isdir(output):
        raise BadInputError("output exists and is not a folder", output)
    os.makedirs(output, exist_ok=True)


def run_step(label: str, impl: str, kwargs: dict, context: dict) -> dict:
    """Run one STEPS row; a WanExportError becomes the row's error, anything else propagates."""
    args = {k: v.format(**context) if isinstance(v, str) else v for k, v in kwargs.items()}
    row = {"step": label, "function": impl, "artifact": args.get("output"), "bytes": None,
           "seconds": 0.0, "status": "ok", "result": ""}
    module, name = impl.split(":")
    try:
        fn = getattr(import_module(module), name)
    except (ModuleNotFoundError, AttributeError) as e:
        return {**row, "status": "skipped", "result": f"not available ({e})"}
    start = time.perf_counter()
    try:
        result = fn(**args)
    except WanExportError as e:
        row.update(status="error", result=e.one_line(), exit_code=e.exit_code)
    else:
        row.update(_describe(result, row["artifact"]))
    row["seconds"] = round(time.perf_counter() - start, 3)
    if row["artifact"] and os.path.exists(row["artifact"]):
        row["bytes"] = _size(row["artifact"])
    return row


def _describe(result, artifact: str | None) -> dict:
    """artifact / status / result text of a step's return value."""
    if isinstance(result, (str, os.PathLike)):
        return {"artifact": artifact or os.fspath(result), "result": "written"}
    d = result.to_dict() if hasattr(result, "to_dict") else dict(result or {})
    out = {"artifact": artifact or d.get("artifact")}
    if "passed" in d:
        checks = d.get("checks") or []
        n_ok = sum(bool(c.get("passed")) for c in checks)
        tol = sorted({f"{k} {v}" for c in checks for k, v in (c.get("tolerance") or {}).items()})
        verdict = "pass" if d["passed"] else "FAIL"
        measured = bounds_text(checks)           # the worst measured value next to each bound
        out.update(status="ok" if d["passed"] else "failed", parity=verdict, tolerance=", ".join(tol),
                   result=f"{verdict} {n_ok}/{len(checks)} checks" + (f"; worst {measured}" if measured else ""))
    elif d.get("variant"):
        out["result"] = f"variant {d['variant']}"
    return out


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def render_text(summary: dict) -> str:
    """The summary as an aligned table: step, artifact, size, time, result."""
    out = summary["output"]
    rows = [("step", "artifact", "size", "time", "result")]
    for r in summary["steps"]:
        art = os.path.relpath(r["artifact"], out) if r["artifact"] else "-"
        rows.append((r["step"], art, _human(r["bytes"]), f"{r['seconds']:.2f}s",
                     r["result"] if r["status"] in ("ok", "failed") else f"{r['status']}: {r['result']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [f"wan-export demo: {summary['variant']} in {out}"]
    lines += ["  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]),
                         row[3].rjust(widths[3]), row[4]]).rstrip() for row in rows]
    verdict = "all steps passed" if summary["ok"] else "some steps failed"
    lines.append(f"{verdict} in {summary['seconds']:.1f}s")
    return "\n".join(lines)


def raise_if_failed(summary: dict) -> None:
    """One error naming every failed step: exit 1 if only parity failed, else 2."""
    bad = [r for r in summary["steps"] if r["status"] in ("error", "failed")]
    if not bad:
        return
    detail = "; ".join(f"{r['step']}: {r['result']}" for r in bad)
    only_parity = all(r["status"] == "failed" or r.get("exit_code") == 1 for r in bad)
    cls = ParityError if only_parity else WanExportError
    raise cls(f"{len(bad)} of {len(summary['steps'])} demo steps failed: {detail}", summary["output"])
