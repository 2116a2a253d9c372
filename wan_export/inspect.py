"""`wan-export inspect`: what a file or folder holds, as a dict and as text."""
from __future__ import annotations

import math
from collections import defaultdict

from wan_export.progress import null
from wan_export.release import open_input
from wan_export.writing import nonfinite_count


def _component_report(slot: str, comp, scan: bool, update) -> dict:
    dtypes: dict = defaultdict(lambda: {"tensors": 0, "bytes": 0})
    params = 0
    bad = []
    for info in comp.table.infos():
        params += math.prod(info.shape)
        dtypes[info.dtype]["tensors"] += 1
        dtypes[info.dtype]["bytes"] += info.nbytes
        if scan:
            n = nonfinite_count(comp.table.read(info.name), info.dtype)
            if n:
                bad.append(f"{info.name} ({n})")
            update(1)
    warnings = list(comp.warnings)
    if bad:
        warnings.append(f"{len(bad)} tensors contain NaN/Inf: {', '.join(bad[:10])}")
    cfg = comp.config.to_dict() if hasattr(comp.config, "to_dict") else comp.config
    extra = {"bytes_by_format": _format_bytes(comp.config)} if comp.kind == "dit" else {}
    return {**extra, "slot": slot, "kind": comp.kind, "path": comp.path, "layout": comp.layout,
            "variant": comp.variant, "expert": comp.expert, "config": cfg,
            "tensors": len(comp.table.entries), "parameters": params,
            "bytes": sum(d["bytes"] for d in dtypes.values()), "dtypes": dict(dtypes),
            "notes": list(comp.table.notes), "warnings": warnings}


def _format_bytes(cfg) -> dict[str, int]:
    """Weight bytes of this DiT in each deployable format (the cost model's size table)."""
    from wan_export.cost.formats import INSPECT_FORMATS, bytes_by_format

    return bytes_by_format(cfg, INSPECT_FORMATS)


def inspect_path(path: str, scan: bool = True, progress=null) -> dict:
    rel = open_input(path)
    total = sum(len(c.table.entries) for c in rel.components.values()) if scan else 0
    with progress(total, "scanning") as update:
        comps = [_component_report(s, c, scan, update) for s, c in sorted(rel.components.items())]
    v = rel.variant
    dit_labels = sorted({c["variant"] for c in comps if c["kind"] == "dit"})
    exact = len(dit_labels) == 1 and v is not None and dit_labels[0] == v.name
    report = {"path": rel.path, "layout": rel.layout, "components": comps,
              "variant": (v.name if exact or len(rel.dits) == 2 else dit_labels[0]) if v else None,
              "defaults_from": v.name if v else None,
              "tokenizer": rel.tokenizer_dir, "clip_tokenizer": rel.clip_tokenizer_dir,
              "warnings": [w for c in comps for w in (f"{c['slot']}: {x}" for x in c["warnings"])]}
    if v:
        report["pairs_with_vae"] = v.vae
        report["flow_shift"] = v.flow_shift
        if v.boundary_ratio:
            report["boundary_ratio"] = v.boundary_ratio
        vaes = [c for c in comps if c["kind"] == "vae"]
        if vaes and vaes[0]["config"]["version"] != v.vae:
            report["warnings"].append(f"{v.name} pairs with the Wan{v.vae} VAE, "
                                      f"but this folder holds a Wan{vaes[0]['config']['version']} VAE")
    return report


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def render_text(r: dict) -> str:
    lines = [f"{r['path']}  ({r['layout']})"]
    if r.get("variant"):
        extra = f", boundary {r['boundary_ratio']}" if r.get("boundary_ratio") else ""
        like = "" if r["defaults_from"] == r["variant"] else f"; defaults of {r['defaults_from']}"
        lines.append(f"variant: {r['variant']}  (flow shift {r['flow_shift']}{extra}; "
                     f"pairs with the Wan{r['pairs_with_vae']} VAE{like})")
    for c in r["components"]:
        dt = ", ".join(f"{k} {v['tensors']}" for k, v in sorted(c["dtypes"].items()))
        lines.append(f"  {c['slot']:<14} {c['variant']:<34} {c['parameters']:>15,} params  "
                     f"{_size(c['bytes']):>9}  [{dt}]  {c['layout']}")
        if c["kind"] == "dit":
            cfg = c["config"]
            lines.append(f"  {'':<14} model_type {cfg['model_type']}, dim {cfg['dim']}, ffn {cfg['ffn_dim']}, "
                         f"heads {cfg['num_heads']}, layers {cfg['num_layers']}, in {cfg['in_dim']}, "
                         f"out {cfg['out_dim']}")
            sizes = ", ".join(f"{k} {_size(v)}" for k, v in c["bytes_by_format"].items())
            lines.append(f"  {'':<14} bytes per format: {sizes}")
    if r.get("tokenizer"):
        lines.append(f"  tokenizer      {r['tokenizer']}")
    for w in r["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
