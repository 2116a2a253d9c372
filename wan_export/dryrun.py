"""Dry runs of the writers: what would be written (files, tensors, types, sizes), writing nothing.

Each function takes a path or an opened Release (a shapes-only one from meta_release works: no
tensor is read) and the writer's options, and returns file rows
`{"path", "bytes", "exact", "tensors": [{"name", "type", "shape", "bytes"}]}` from the writers'
own planning code, so names and sizes are the writers'. Safetensors and GGUF sizes are exact
(header + data); ONNX sizes count the weights only (`exact: false`).
"""
from __future__ import annotations

import json
import math
import os

from wan_export.errors import BadInputError
from wan_export.release import Release, open_input


def _rel(src) -> Release:
    return src if isinstance(src, Release) else open_input(str(src))


def _tensor_rows(infos) -> list[dict]:
    return [{"name": i.name, "type": i.dtype, "shape": list(i.shape), "bytes": i.nbytes} for i in infos]


def safetensors_row(path: str, infos, metadata: dict | None) -> dict:
    from wan_export.safetensors_io import build_header

    header = build_header(list(infos), metadata)
    return {"path": path, "bytes": 8 + len(header) + sum(i.nbytes for i in infos), "exact": True,
            "tensors": _tensor_rows(infos)}


def _json_row(path: str, obj: dict, **dump) -> dict:
    text = json.dumps(obj, **dump) + "\n"
    return {"path": path, "bytes": len(text.encode()), "exact": True, "tensors": []}


def comfyui(src, dtype: str | None = None, component: str = "all", checkpoint: bool = False, **_) -> list[dict]:
    from wan_export.converters import comfyui as c

    rel, notes = _rel(src), []
    jobs = c.checkpoint_jobs(rel, dtype, notes) if checkpoint else c.component_jobs(rel, dtype, component, notes)
    return [safetensors_row(j.name, [p.info for part in j.parts for p in part.tensors], j.metadata) for j in jobs]


def stock(src, dtype: str | None = None, **_) -> list[dict]:
    """DiT safetensors exact; the .pth files as their tensor bytes (zip overhead not counted)."""
    from wan_export.converters import stock as s

    rel = _rel(src)
    rows = []
    for _, comp in sorted(rel.dits.items()):
        folder = f"{comp.expert}_model/" if comp.expert else ""
        code = s.component_dtype(comp, dtype)
        part = s.plan_component(comp, code)
        meta = s.provenance("dit", comp.variant, code, expert=comp.expert)
        shards = s.shard_plan(part.tensors, s.MAX_SHARD_BYTES)
        for k, shard in enumerate(shards, 1):
            name = "diffusion_pytorch_model" + (f"-{k:05d}-of-{len(shards):05d}" if len(shards) > 1 else "")
            rows.append(safetensors_row(f"{folder}{name}.safetensors", [p.info for p in shard], meta))
    for _, comp in sorted(rel.components.items()):
        if comp.kind in s.STOCK_JOBS and comp.kind != "dit":
            part = s.plan_component(comp, s.component_dtype(comp, None))
            infos = [p.info for p in part.tensors]
            name = s.VAE_FILES.get(getattr(comp.config, "version", None)) if comp.kind == "vae" else (
                s.T5_FILE.format(dtype=s.CODE_NAMES[part.tensors[0].dtype]) if comp.kind == "t5" else s.CLIP_FILE)
            rows.append({"path": name, "bytes": sum(i.nbytes for i in infos), "exact": False,
                         "tensors": _tensor_rows(infos)})
    return rows


def diffusers(src, dtype: str | None = None, flow_shift: float | None = None, **_) -> list[dict]:
    from wan_export.converters import diffusers as d
    from wan_export.dtypes import DTYPE_NAMES
    from wan_export.writing import shard_plan

    rel = _rel(src)
    plan = d.plan_folder(rel, DTYPE_NAMES[dtype] if dtype else None, flow_shift)
    rows = []
    for part in plan.parts:
        base = f"{part.folder}/" if part.folder else ""
        rows.append(_json_row(base + "config.json", part.config, indent=2, sort_keys=True))
        shards = shard_plan(part.plan, part.shard_bytes)
        names = [f"{part.stem}.safetensors"] if len(shards) == 1 else [
            f"{part.stem}-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)]
        for name, shard in zip(names, shards):
            rows.append(safetensors_row(base + name, [p.info for p in shard], d.SAFETENSORS_METADATA))
        if len(shards) > 1:
            wm = {p.name: n for n, shard in zip(names, shards) for p in shard}
            index = {"metadata": {"total_size": sum(p.info.nbytes for p in part.plan)},
                     "weight_map": dict(sorted(wm.items()))}
            rows.append(_json_row(base + f"{part.stem}.safetensors.index.json", index, indent=2))
    rows += [_json_row(k, v, indent=2, sort_keys=True) for k, v in plan.jsons.items()]
    if plan.tokenizer_dir and os.path.isdir(plan.tokenizer_dir):
        rows += [{"path": f"tokenizer/{n}", "bytes": os.path.getsize(os.path.join(plan.tokenizer_dir, n)),
                  "exact": True, "tensors": []} for n in d.TOKENIZER_FILES
                 if os.path.isfile(os.path.join(plan.tokenizer_dir, n))]
    return sorted(rows, key=lambda r: r["path"])


def gguf(src, types="Q4_K_M", tensor_types=(), float_type: str | None = None, **_) -> list[dict]:
    """Exact: the writer's own header layout (GGUF sizes equal the written files)."""
    from wan_export.converters import gguf as g
    from wan_export.converters.gguf_write import TensorEntry
    from wan_export.quantizers.gguf_policy import parse_overrides

    rel = _rel(src)
    plans = g.plan_outputs(g._dits(rel), g._parse_types(types), "", parse_overrides(tensor_types), float_type, None)
    rows = []
    for p in (p for row in plans for p in row):
        tensors = [{"name": d.name, "type": d.ggml, "shape": list(d.shape),
                    "bytes": TensorEntry(d.name, g.stored_shape(d.shape), d.ggml).nbytes} for d in p.decisions]
        rows.append({"path": os.path.basename(p.path), "bytes": p.layout.file_size, "exact": True,
                     "tensors": tensors})
    return rows


def onnx(src, component: str = "dit", dtype: str = "fp32", **_) -> list[dict]:
    """Graph files with their weights at the graph dtype (the protobuf graph itself is not counted)."""
    from wan_export.converters import onnx_export as e
    from wan_export.converters import onnx_specs as s
    from wan_export.dtypes import itemsize

    rel = _rel(src)
    code = s.DTYPES.get(dtype) or _bad("dtype", dtype, s.DTYPES)
    rows = []
    for job in e.plan(rel, component):
        infos = job.comp.table.infos()
        tensors = [{"name": i.name, "type": code if i.dtype.startswith(("F", "BF")) else i.dtype,
                    "shape": list(i.shape), "bytes": math.prod(i.shape) * itemsize(code)} for i in infos]
        weights = sum(t["bytes"] for t in tensors)
        for spec in job.specs:
            external = weights > s.EXTERNAL_DATA_BYTES
            rows.append({"path": spec.file, "bytes": 0 if external else weights, "exact": False,
                         "tensors": [] if external else tensors})
            if external:
                rows.append({"path": f"{spec.file}.data", "bytes": weights, "exact": False, "tensors": tensors})
    return rows


def _bad(what, value, choices):
    raise BadInputError(f"unknown {what} {value!r} (choose from {', '.join(choices)})")


def render_text(rows: list[dict], title: str = "dry run: nothing written") -> str:
    lines = [title]
    for r in rows:
        types = sorted({t["type"] for t in r["tensors"]})
        approx = "" if r["exact"] else "~"
        lines.append(f"  {r['path']}  {approx}{r['bytes']:,} bytes" +
                     (f"  ({len(r['tensors'])} tensors: {', '.join(types)})" if r["tensors"] else ""))
    lines.append(f"total {sum(r['bytes'] for r in rows):,} bytes in {len(rows)} files")
    return "\n".join(lines)
