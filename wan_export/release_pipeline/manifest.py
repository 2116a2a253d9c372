"""manifest.json, SHA256SUMS and timings.json of a release folder, and the hashes behind them.

The manifest holds nothing time-, host- or path-dependent (paths are relative to DIST or the
source), and metrics are rounded to 4 significant digits, so the same recipe and source give
the same bytes; wall times go to timings.json.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

from wan_export import __version__
from wan_export.atomic import atomic_file

MANIFEST_FORMAT = "wan-export-release/1"
# bound key -> (metric, how far the value is toward the bound: 1.0 = at the bound)
MARGINS = {
    "max_rel_l2": ("rel_l2", lambda v, b: v / b if b else (0.0 if v == 0 else math.inf)),
    "max_abs": ("max_abs", lambda v, b: v / b if b else (0.0 if v == 0 else math.inf)),
    "min_cosine": ("cosine", lambda v, b: (1 - v) / (1 - b) if b < 1 else (0.0 if v >= 1 else math.inf)),
    "min_snr_db": ("snr_db", lambda v, b: b / v if v > 0 else math.inf),
    "min_psnr_db": ("psnr_db", lambda v, b: b / v if v > 0 else math.inf),
}


def sha256_file(path: str) -> str:
    from wan_export.hashing import file_sha256

    return file_sha256(path)


def sha256_json(obj) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def plain(o):
    """JSON for numpy arrays/scalars (lists, numbers); anything else as its text."""
    return o.tolist() if hasattr(o, "tolist") else str(o)


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=plain)


def file_rows(root: str, under: str = "") -> list[dict]:
    """{path (relative to root), bytes, sha256} of every file below root/under, sorted, hidden files skipped."""
    base = os.path.join(root, under) if under else root
    if os.path.isfile(base):
        return [{"path": os.path.basename(base), "bytes": os.path.getsize(base), "sha256": sha256_file(base)}]
    rows = []
    for r, dirs, files in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(files):
            if not n.startswith("."):
                p = os.path.join(r, n)
                rows.append({"path": os.path.relpath(p, root).replace(os.sep, "/"), "bytes": os.path.getsize(p),
                             "sha256": sha256_file(p)})
    return sorted(rows, key=lambda x: x["path"])


def round_sig(v, digits: int = 4):
    if isinstance(v, float) and math.isfinite(v) and v != 0:
        return float(f"{v:.{digits}g}")
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def worst_check(report: dict) -> dict | None:
    """The check closest to (or furthest beyond) its bound: {check, metric, value, bound, margin}."""
    worst = None
    for c in report.get("checks", []):
        for key, bound in (c.get("tolerance") or {}).items():
            metric, margin = MARGINS[key]
            value = (c.get("metrics") or {}).get(metric)
            if not isinstance(value, (int, float)):
                continue
            m = margin(float(value), float(bound))
            if worst is None or m > worst["margin"]:
                worst = {"check": c["name"], "metric": metric, "value": value, "bound": bound, "margin": m}
    return worst


def validation_summary(reports: list[dict]) -> dict:
    checks = [c for r in reports for c in r.get("checks", [])]
    worsts = [w for w in map(worst_check, reports) if w]
    worst = max(worsts, key=lambda w: w["margin"]) if worsts else None
    return {"passed": all(r.get("passed") for r in reports), "checks": len(checks),
            "failed": sum(not c["passed"] for c in checks),
            "worst": {k: round_sig(v) for k, v in worst.items()} if worst else None}


def manifest(recipe, source: dict, records: list[dict]) -> dict:
    arts = []
    for rec in records:
        row = {k: rec.get(k) for k in ("name", "format", "options", "status", "reason", "input_sha256", "bytes",
                                        "files", "gate")}
        row["validation"] = validation_summary(rec["reports"]) if rec.get("reports") else None
        arts.append({k: v for k, v in row.items() if v is not None})
    return {"format": MANIFEST_FORMAT, "tool": {"name": "wan-export", "version": __version__},
            "recipe": {"file": os.path.basename(recipe.path), "sha256": recipe.sha256},
            "model": recipe.model, "source": source, "calibration": recipe.calibration, "artifacts": arts}


def write_json(path: str, obj) -> None:
    with atomic_file(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True, default=plain) + "\n")


def write_sums(path: str, records: list[dict]) -> None:
    """sha256sum -c format, one line per artifact file, paths relative to DIST."""
    rows = sorted((f["path"], f["sha256"]) for r in records for f in r.get("files", []))
    with atomic_file(path, "w") as f:
        f.write("".join(f"{h}  {p}\n" for p, h in rows))


def bounds_text(checks: list[dict]) -> str:
    """Each stated bound with the worst measured value against it: 'rel_l2 0.0823 (bound 0.17)'."""
    worst: dict[str, tuple] = {}
    for c in checks:
        for key, bound in (c.get("tolerance") or {}).items():
            metric, margin = MARGINS[key]
            value = (c.get("metrics") or {}).get(metric)
            m = margin(float(value), float(bound)) if isinstance(value, (int, float)) else -1.0
            if key not in worst or m > worst[key][0]:
                worst[key] = (m, metric, value, bound)
    parts = []
    for key, (m, metric, value, bound) in sorted(worst.items()):
        shown = f"{round_sig(value)}" if isinstance(value, (int, float)) else "not measured"
        parts.append(f"{metric} {shown} (bound {bound:g})")
    return ", ".join(parts)


def human_size(n) -> str:
    if not n:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3f} {unit}" if unit == "GB" else f"{n / scale:.1f} {unit}"
    return f"{n} B"
