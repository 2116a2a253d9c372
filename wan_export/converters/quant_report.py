"""What a quantized write reports: the policy per component, per-layer rounding / clip records, text."""
from __future__ import annotations

from wan_export.quantizers.policy import summary


def quant_result(req) -> dict:
    records = dict(sorted(req.records.items()))
    gptq = [r for r in records.values() if r.get("rounding") == "gptq"]
    fell_back = [n for n, r in records.items() if req.rounding == "gptq" and r.get("rounding") == "nearest"]
    return {"quant": req.quant, "calibrated": bool(req.calib), "act_calib": req.act_calib if req.calib else None,
            "rounding": req.rounding,
            "policy": {slot: summary(d) for slot, d in sorted(getattr(req, "decisions", {}).items())},
            "layers": records, "gptq_layers": len(gptq), "nearest_fallback_layers": fell_back}


def render_quant_text(result: dict) -> str:
    lines = []
    for r in result["files"]:
        size = f"{r['bytes']:,} bytes" if r.get("bytes") is not None else "not written (--dry-run)"
        lines.append(f"{r['path']}  ({r['component']}, {size})")
    for slot, rows in result.get("policy", {}).items():
        lines.append(f"policy {slot}:")
        lines += [f"  {row['rule']:<16} {row['format']:<6} {row['tensors']:>5} tensors  {row['why']}" for row in rows]
    if result.get("rounding") == "gptq":
        lines.append(f"gptq: {result['gptq_layers']} layers improved, "
                     f"{len(result['nearest_fallback_layers'])} kept nearest (no gain or no input_sample)")
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]])
