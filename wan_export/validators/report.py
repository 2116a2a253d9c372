"""Parity reports shared by every validator: checks against stated tolerances,
optional tables (e.g. per-tensor errors), JSON and Markdown output.

A validator collects every check, then `raise_if_failed` raises one
ParityError (exit 1) naming each failed check.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from wan_export.errors import ParityError


@dataclass(frozen=True)
class Tolerance:
    """Pass when every stated bound holds; None means not checked."""

    max_rel_l2: float | None = None
    min_cosine: float | None = None
    max_abs: float | None = None
    min_snr_db: float | None = None
    min_psnr_db: float | None = None

    def failures(self, m: dict) -> list[str]:
        out = []
        if not m.get("finite", True):
            out.append("output has NaN/Inf")
        for key, metric, worse in (("max_rel_l2", "rel_l2", lambda v, b: v > b),
                                   ("min_cosine", "cosine", lambda v, b: v < b),
                                   ("max_abs", "max_abs", lambda v, b: v > b),
                                   ("min_snr_db", "snr_db", lambda v, b: v < b),
                                   ("min_psnr_db", "psnr_db", lambda v, b: v < b)):
            bound = getattr(self, key)
            if bound is not None and (worse(m[metric], bound) or math.isnan(m[metric])):
                out.append(f"{metric} {_fmt(m[metric])} beyond {_fmt(bound)}")
        return out

    def describe(self) -> str:
        return ", ".join(f"{k} {_fmt(v)}" for k, v in asdict(self).items() if v is not None) or "none"


@dataclass
class Check:
    name: str                      # e.g. "dit output t2v B=1 F=3 8x8"
    metrics: dict
    tolerance: Tolerance
    note: str = ""

    @property
    def failures(self) -> list[str]:
        return self.tolerance.failures(self.metrics)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Report:
    artifact: str
    against: str
    format: str                    # comfyui | diffusers | gguf | onnx | ...
    checks: list[Check] = field(default_factory=list)
    tables: dict[str, list[dict]] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)      # named data sections (e.g. "sampling") for reports/plots

    def add(self, name: str, metrics: dict, tolerance: Tolerance, note: str = "") -> Check:
        c = Check(name, metrics, tolerance, note)
        self.checks.append(c)
        return c

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "against": self.against, "format": self.format,
                "passed": self.passed, "info": self.info, "tables": self.tables,
                "checks": [{"name": c.name, "passed": c.passed, "failures": c.failures,
                            "tolerance": {k: v for k, v in asdict(c.tolerance).items() if v is not None},
                            "metrics": c.metrics, "note": c.note} for c in self.checks], **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=json_default)

    def to_markdown(self) -> str:
        lines = [f"# Parity report: {self.format}", "",
                 f"- artifact: `{self.artifact}`", f"- reference: `{self.against}`",
                 f"- result: **{'PASS' if self.passed else 'FAIL'}**"]
        lines += [f"- {k}: {v}" for k, v in self.info.items()]
        lines += ["", "| check | rel L2 | cosine | max abs | SNR dB | tolerance | result |",
                  "|---|---|---|---|---|---|---|"]
        for c in self.checks:
            m = c.metrics
            lines.append(f"| {c.name} | {_fmt(m['rel_l2'])} | {_fmt(m['cosine'], 6)} | {_fmt(m['max_abs'])} "
                         f"| {_fmt(m['snr_db'], 1)} | {c.tolerance.describe()} "
                         f"| {'ok' if c.passed else 'FAIL: ' + '; '.join(c.failures)} |")
        for title, rows in self.tables.items():
            if not rows:
                continue
            cols = list(rows[0])
            lines += ["", f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
        return "\n".join(lines) + "\n"

    def write(self, path: str) -> None:
        """Write JSON for *.json paths, a self-contained HTML page (plots inline) for *.html,
        Markdown otherwise (atomically)."""
        from wan_export.atomic import atomic_file

        if str(path).endswith(".html"):
            from wan_export.release_pipeline.report_html import single_model, to_html

            text = to_html(single_model(json.loads(self.to_json())))
        else:
            text = self.to_json() if str(path).endswith(".json") else self.to_markdown()
        with atomic_file(path, "w") as f:
            f.write(text)

    def raise_if_failed(self) -> None:
        bad = [c for c in self.checks if not c.passed]
        if bad:
            detail = "; ".join(f"{c.name}: {', '.join(c.failures)}" for c in bad[:5])
            raise ParityError(f"parity failed in {len(bad)} of {len(self.checks)} checks: {detail}",
                              self.artifact)


def json_default(o):
    """JSON for what json cannot write: numpy arrays (e.g. preview frames) as dtype, shape and
    base64 of the C-order bytes; anything else as str."""
    if hasattr(o, "tobytes") and hasattr(o, "shape") and o.shape == ():
        return o.item()
    if hasattr(o, "tobytes") and hasattr(o, "shape"):
        import base64

        return {"dtype": str(o.dtype), "shape": list(o.shape), "base64": base64.b64encode(o.tobytes()).decode()}
    if isinstance(o, float) and not math.isfinite(o):
        return str(o)
    return str(o)


def _fmt(v, digits: int = 3) -> str:
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.{digits}e}"
        return f"{v:.{digits}f}" if digits > 3 else f"{v:.{digits + 1}g}"
    return str(v)
