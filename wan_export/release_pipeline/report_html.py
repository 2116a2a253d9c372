"""Parity reports of a release (or of one validated artifact) as report.html, report.md and
report.json with the same content: a summary table (artifact, size, ratio to bf16, gate, worst
metric against its bound), per-layer error bars worst first, sampling-parity curves and decoded
preview frames (when a validation report carries a `sampling` entry), and every check with its
measured value next to its bound.

The HTML is one self-contained file: inline CSS and SVG, frames as PNG data URIs, no scripts,
no network. A validation report's optional `sampling` entry is read as
`{"per_step_rel_l2": [float, ...] | {series: [float, ...]}, "frames": {"reference": [HxWx3 uint8],
"artifact": [HxWx3 uint8]}}` (frames as nested lists or arrays; `steps` is accepted for the curve).
"""
from __future__ import annotations

import json
import math
import os
from html import escape

from wan_export.atomic import atomic_file
from wan_export.release_pipeline import svg
from wan_export.release_pipeline.manifest import MARGINS, human_size, plain, round_sig, worst_check

LAYER_KEYS = ("block", "layer", "tensor")
MAX_BARS = 30
CSS = ("body{font-family:system-ui,sans-serif;margin:24px;color:#222}table{border-collapse:collapse;margin:8px 0}"
       "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}"
       ".pass{color:#1a7f37;font-weight:bold}.fail{color:#c62828;font-weight:bold}.na{color:#777}"
       ".frames img{image-rendering:pixelated;width:192px;margin:2px;border:1px solid #999}"
       "section{margin-bottom:28px}.note{color:#777;font-style:italic}")


def measured(check: dict) -> list[str]:
    """'rel_l2 0.0823 <= 0.17' for each bound a check states (the measured value first)."""
    out = []
    for key, bound in (check.get("tolerance") or {}).items():
        metric = MARGINS[key][0]
        value = (check.get("metrics") or {}).get(metric)
        op = "<=" if key.startswith("max") else ">="
        shown = f"{round_sig(value)}" if isinstance(value, (int, float)) else "not measured"
        out.append(f"{metric} {shown} {op} {bound:g}")
    return out


def layer_rows(report: dict) -> tuple[str, list[tuple[str, float]]]:
    """(table title, [(layer, rel_l2)] worst first) from the first per-layer table of a report."""
    for title, rows in (report.get("tables") or {}).items():
        if not rows:
            continue
        key = next((k for k in LAYER_KEYS if k in rows[0]), None)
        if key and isinstance(rows[0].get("rel_l2"), (int, float)):
            pairs = [(str(r[key]), float(r["rel_l2"])) for r in rows if isinstance(r.get("rel_l2"), (int, float))]
            return title, sorted(pairs, key=lambda p: (-p[1] if math.isfinite(p[1]) else -math.inf, p[0]))
    return "", []


def _sampling(report: dict) -> dict | None:
    s = report.get("sampling")
    if not s:
        return None
    curve = s.get("step_rel_l2", s.get("per_step_rel_l2", s.get("steps")))
    series = curve if isinstance(curve, dict) else {"rel L2 per step": list(curve or [])}
    frames = s.get("preview_frames", s.get("frames")) or {}
    return {"series": {k: [float(v) for v in vals] for k, vals in series.items()},
            "frames": {k: [_frame(f) for f in frames.get(k) or []] for k in ("reference", "artifact")}}


def _frame(f):
    """A preview frame as the validator keeps it: an array, nested lists, or (from JSON)
    {dtype, shape, base64} as validators/report.json_default writes arrays."""
    if isinstance(f, dict) and "base64" in f:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(f["base64"]), dtype=f["dtype"]).reshape(f["shape"])
    return f


def artifact_model(name: str, status: str, reports: list[dict], reason: str | None = None) -> dict:
    out = {"name": name, "status": status, "reason": reason, "reports": []}
    for r in reports:
        title, layers = layer_rows(r)
        out["reports"].append({
            "file": r.get("artifact"), "format": r.get("format"), "passed": r.get("passed"),
            "checks": [{"name": c["name"], "passed": c["passed"], "measured": measured(c),
                        "failures": c.get("failures", [])} for c in r.get("checks", [])],
            "layers_title": title, "layers": layers[:MAX_BARS], "layers_total": len(layers),
            "sampling": _sampling(r)})
    return out


def release_model(man: dict, records: list[dict]) -> dict:
    bf16 = man["source"].get("bf16_bytes") or {}
    from wan_export.release_pipeline.formats import artifact_kinds

    summary, arts = [], []
    for a, rec in zip(man["artifacts"], records):
        kinds, copies = artifact_kinds(a)
        base = copies * sum(bf16.get(k, 0) for k in kinds)
        worst = (a.get("validation") or {}).get("worst")
        summary.append({"artifact": a["name"], "format": a["format"], "bytes": a.get("bytes"),
                        "ratio_bf16": round(a["bytes"] / base, 4) if a.get("bytes") and base else None,
                        "gate": _gate(a["status"]), "worst": worst})
        arts.append(artifact_model(a["name"], a["status"], rec.get("reports") or [], a.get("reason")))
    return {"title": f"Parity report: {man['model']['name']}", "tool": man["tool"], "recipe": man["recipe"],
            "summary": summary, "artifacts": arts}


def single_model(report: dict) -> dict:
    worst = worst_check(report)
    status = "passed" if report.get("passed") else "failed"
    return {"title": f"Parity report: {report.get('format')} {os.path.basename(str(report.get('artifact')))}",
            "summary": [{"artifact": report.get("artifact"), "format": report.get("format"), "bytes": None,
                         "ratio_bf16": None, "gate": _gate(status),
                         "worst": {k: round_sig(v) for k, v in worst.items()} if worst else None}],
            "artifacts": [artifact_model(str(report.get("artifact")), status, [report])]}


def _gate(status: str) -> str:
    return {"passed": "pass", "failed": "FAIL", "unavailable": "not available in this build"}.get(status, status)


def _worst_text(w: dict | None) -> str:
    if not w:
        return "-"
    op = "<=" if w["metric"] in ("rel_l2", "max_abs") else ">="
    return f"{w['metric']} {w['value']} {op} {w['bound']} ({w['check']})"


def _size(n) -> str:
    return human_size(n)


# ---------------------------------------------------------------- HTML


def _cls(gate: str) -> str:
    return "pass" if gate == "pass" else ("fail" if gate == "FAIL" else "na")


def _summary_html(model: dict) -> list[str]:
    out = ["<table><tr><th>artifact</th><th>format</th><th>size</th><th>ratio to bf16</th><th>gate</th>"
           "<th>worst metric vs bound</th></tr>"]
    for s in model["summary"]:
        ratio = f"{s['ratio_bf16']:.3f}" if s["ratio_bf16"] else "-"
        out.append(f"<tr><td>{escape(str(s['artifact']))}</td><td>{escape(str(s['format']))}</td>"
                   f"<td>{_size(s['bytes'])}</td><td>{ratio}</td><td class=\"{_cls(s['gate'])}\">{escape(s['gate'])}"
                   f"</td><td>{escape(_worst_text(s['worst']))}</td></tr>")
    return out + ["</table>"]


def _report_html(r: dict) -> list[str]:
    out = [f"<h3>{escape(str(r['file']))} ({escape(str(r['format']))}): "
           f"<span class=\"{'pass' if r['passed'] else 'fail'}\">{'pass' if r['passed'] else 'FAIL'}</span></h3>"]
    if r["layers"]:
        more = f" (worst {len(r['layers'])} of {r['layers_total']})" if r["layers_total"] > len(r["layers"]) else ""
        out.append(svg.bars(r["layers"], title=f"per-layer error, worst first: {r['layers_title']}{more}"))
    else:
        out.append('<p class="note">no per-layer error table in this validation</p>')
    s = r["sampling"]
    if s:
        out.append(svg.curves(s["series"], title="sampling parity: rel L2 per step"))
        pairs = list(zip(s["frames"]["reference"], s["frames"]["artifact"]))
        if pairs:
            out.append('<div class="frames"><p>decoded frames: reference (left) vs artifact (right)</p>')
            out += [f'<div><img alt="reference frame {i}" src="{svg.png_data_uri(a)}">'
                    f'<img alt="artifact frame {i}" src="{svg.png_data_uri(b)}"></div>' for i, (a, b) in enumerate(pairs)]
            out.append("</div>")
    else:
        out.append('<p class="note">sampling parity: not run for this artifact</p>')
    out.append("<table><tr><th>check</th><th>measured vs bound</th><th>result</th></tr>")
    for c in r["checks"]:
        res = "ok" if c["passed"] else "FAIL: " + "; ".join(c["failures"])
        out.append(f"<tr><td>{escape(c['name'])}</td><td>{escape(', '.join(c['measured']) or '-')}</td>"
                   f"<td class=\"{'pass' if c['passed'] else 'fail'}\">{escape(res)}</td></tr>")
    return out + ["</table>"]


def to_html(model: dict) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{escape(model['title'])}</title><style>{CSS}</style></head><body>",
           f"<h1>{escape(model['title'])}</h1>", "<section><h2>Summary</h2>", *_summary_html(model), "</section>"]
    for a in model["artifacts"]:
        out.append(f"<section><h2>{escape(a['name'])}</h2>")
        if a["status"] == "unavailable":
            out.append(f'<p class="na">not built: {escape(str(a["reason"]))}</p>')
        elif not a["reports"]:
            out.append('<p class="note">not validated</p>')
        for r in a["reports"]:
            out += _report_html(r)
        out.append("</section>")
    return "\n".join(out + ["</body></html>"]) + "\n"


# ---------------------------------------------------------------- Markdown / JSON


def to_markdown(model: dict) -> str:
    out = [f"# {model['title']}", "", "| artifact | format | size | ratio to bf16 | gate | worst metric vs bound |",
           "|---|---|---|---|---|---|"]
    for s in model["summary"]:
        ratio = f"{s['ratio_bf16']:.3f}" if s["ratio_bf16"] else "-"
        out.append(f"| {s['artifact']} | {s['format']} | {_size(s['bytes'])} | {ratio} | {s['gate']} "
                   f"| {_worst_text(s['worst'])} |")
    for a in model["artifacts"]:
        out += ["", f"## {a['name']}", ""]
        if a["status"] == "unavailable":
            out.append(f"not built: {a['reason']}")
        for r in a["reports"]:
            out += [f"### {r['file']} ({r['format']}): {'pass' if r['passed'] else 'FAIL'}", ""]
            if r["layers"]:
                out += [f"Per-layer error, worst first ({r['layers_title']}):", "", "| layer | rel L2 |", "|---|---|"]
                out += [f"| {k} | {round_sig(v)} |" for k, v in r["layers"]]
                out.append("")
            s = r["sampling"]
            out.append("Sampling parity: " + ("; ".join(f"{k}: " + ", ".join(f"{round_sig(v)}" for v in vals)
                                                        for k, vals in s["series"].items()) if s else "not run"))
            out += ["", "| check | measured vs bound | result |", "|---|---|---|"]
            out += [f"| {c['name']} | {', '.join(c['measured']) or '-'} | "
                    f"{'ok' if c['passed'] else 'FAIL: ' + '; '.join(c['failures'])} |" for c in r["checks"]]
    return "\n".join(out) + "\n"


def to_json(model: dict) -> str:
    return json.dumps(model, indent=2, sort_keys=True, default=plain) + "\n"


RENDER = {".html": to_html, ".md": to_markdown, ".json": to_json}


def write_model(path: str, model: dict) -> None:
    ext = os.path.splitext(path)[1]
    with atomic_file(path, "w") as f:
        f.write(RENDER.get(ext, to_markdown)(model))


def write_release(dist: str, man: dict, records: list[dict]) -> None:
    model = release_model(man, records)
    for ext in RENDER:
        write_model(os.path.join(dist, f"report{ext}"), model)
