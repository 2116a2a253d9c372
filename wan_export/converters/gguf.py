"""`wan-export gguf`: Wan DiT -> GGUF for ComfyUI-GGUF and stable-diffusion.cpp, in one step.

Each DiT (both experts of an A14B release) becomes one file per requested type.
All files of a DiT are planned from shapes first (policy, header, offsets), then
the source is read once, tensor by tensor, and every tensor is quantized for
every type on all cores and appended to each file. Layout (formats-gguf.md §1, §4):
stock names without prefix, `general.architecture = "wan"`, modulation F32 with
n_dims 3, and each 5-D Conv3d weight folded to 4-D `[out*in, kt, kh, kw]` (ne =
sd.cpp's Conv3d ne) with `comfy.gguf.orig_shape.<name>` for ComfyUI-GGUF.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import numpy as np

from wan_export import __version__
from wan_export.converters import gguf_write as gw
from wan_export.converters.gguf_pool import QuantEngine
from wan_export.converters.gguf_read import ORIG_SHAPE
from wan_export.dtypes import cast
from wan_export.errors import BadInputError, UnsupportedError
from wan_export.progress import null
from wan_export.quantizers.ggml import GGML_TYPES
from wan_export.quantizers.gguf_policy import (MIXES, Decision, GGUFPolicy, missing_quantizers, fallbacks,
                                               parse_overrides, resolve, summary)
from wan_export.variants import VARIANTS, dit_shapes, match_variant, variant_label
from wan_export.writing import nonfinite_count

ARCH = "wan"
QUANTIZATION_VERSION = 2


@dataclass
class OutputPlan:
    """One output file: where, with which policy, each tensor's decision, and the header layout."""

    path: str
    policy: GGUFPolicy
    decisions: list[Decision]
    layout: gw.Layout


def stored_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """5-D Conv3d [out, in, kt, kh, kw] -> 4-D [out*in, kt, kh, kw]: ne [kw, kh, kt, in*out], sd.cpp's Conv3d ne."""
    if len(shape) == 5:
        return (shape[0] * shape[1],) + tuple(shape[2:])
    return tuple(shape)


def metadata(policy: GGUFPolicy, decisions: list[Decision], label: str, expert: str | None) -> list[gw.KV]:
    """KVs: the three ComfyUI-GGUF reads/writes, our provenance, and orig_shape of folded tensors."""
    kvs = [gw.string("general.architecture", ARCH),
           gw.uint32("general.quantization_version", QUANTIZATION_VERSION),
           gw.uint32("general.file_type", MIXES[policy.mix].file_type),
           gw.string("general.name", label),
           gw.string("wan_export.version", __version__),
           gw.string("wan_export.variant", label),
           gw.string("wan_export.quantization", policy.to_json())]
    if expert:
        kvs.append(gw.string("wan_export.expert", expert))
    fb = fallbacks(decisions)
    if fb:
        kvs.append(gw.string("wan_export.fallbacks", "; ".join(f"{d.name}: {d.note}" for d in fb)))
    kvs += [gw.int32_array(ORIG_SHAPE + d.name, d.shape) for d in decisions if stored_shape(d.shape) != d.shape]
    return kvs


def plan_file(shapes: dict[str, tuple], policy: GGUFPolicy, label: str = "",
              expert: str | None = None) -> tuple[list[Decision], gw.Layout]:
    """Decisions and header layout of one file, from names and shapes only (no data)."""
    decisions = resolve(policy, [(n, tuple(s)) for n, s in shapes.items()])
    entries = [gw.TensorEntry(d.name, stored_shape(d.shape), d.ggml) for d in decisions]
    return decisions, gw.Layout(metadata(policy, decisions, label, expert), entries)


def file_size(cfg, mix: str, **policy) -> int:
    """Bytes of the GGUF file a DiT config gives for a mix, from shapes only."""
    return plan_file(dit_shapes(cfg), GGUFPolicy(mix, **policy), variant_label(cfg))[1].file_size


def _released(cfg, expert: str | None):
    v = match_variant(cfg)
    if v is not None and v.name == "wan2.1-t2v-14b" and expert:
        v = VARIANTS["wan2.2-t2v-a14b"]
    return v


def default_name(cfg, expert: str | None, mix: str) -> str:
    """Community names: city96 `wan2.1-t2v-14b-Q4_K_M.gguf`; A14B experts as
    `wan2.2_t2v_high_noise_14B_Q4_K_M.gguf`; custom dims say so and never borrow a release name."""
    v = _released(cfg, expert)
    if v is not None and v.experts and expert:
        return f"{v.comfy_stem.format(expert=expert)}_{mix}.gguf"
    if v is not None:
        return f"{v.name}-{mix}.gguf"
    family = "wan2.2" if expert else variant_label(cfg).split("-", 1)[0]
    tail = f"-{expert}" if expert else ""
    return f"{family}-{cfg.model_type}-custom-{cfg.dim}d{cfg.num_layers}l{tail}-{mix}.gguf"


def _dits(rel) -> list:
    dits = [c for _, c in sorted(rel.dits.items())]
    if not dits:
        raise BadInputError("no Wan DiT found (GGUF holds the diffusion model only)", rel.path)
    return dits


def _output_paths(output: str | None, names: list[str]) -> list[str]:
    if output is None:
        return [os.path.abspath(n) for n in names]
    if str(output).endswith(".gguf"):
        if len(names) > 1:
            raise BadInputError(f"this writes {len(names)} files ({', '.join(names[:3])}...); "
                                "give -o a folder", output)
        return [os.path.abspath(output)]
    return [os.path.abspath(os.path.join(output, n)) for n in names]


def _parse_types(types) -> list[str]:
    items = types.split(",") if isinstance(types, str) else list(types)
    mixes = list(dict.fromkeys(t.strip() for t in items if t.strip()))
    if not mixes:
        raise UnsupportedError(f"no GGUF type given (choose from {', '.join(MIXES)})")
    for m in mixes:
        GGUFPolicy(m)       # validates the name with a one-line error
    missing = missing_quantizers(mixes)
    if missing:
        raise UnsupportedError(f"no quantizer available for {', '.join(missing)} in this installation "
                               f"({next(iter(missing.values()))})")
    return mixes


def plan_outputs(dits, mixes, output, overrides, float_type, imatrix_sha) -> list[list[OutputPlan]]:
    """Plans per DiT per mix; refuses clashing names before any work starts."""
    plans, names = [], []
    for comp in dits:
        shapes = dit_shapes(comp.config)
        label = variant_label(comp.config, comp.expert)
        row = []
        for m in mixes:
            policy = GGUFPolicy(m, float_type, overrides=overrides, imatrix=imatrix_sha)
            decisions, layout = plan_file(shapes, policy, label, comp.expert)
            row.append(OutputPlan("", policy, decisions, layout))
            names.append(default_name(comp.config, comp.expert, m))
        plans.append(row)
    paths = _output_paths(output, names)
    if len(set(paths)) != len(paths):
        raise BadInputError("two outputs would get the same name", output)
    for plan, path in zip((p for row in plans for p in row), paths):
        plan.path = path
    return plans


def _check_outputs(plans, overwrite: bool) -> None:
    for p in (p for row in plans for p in row):
        if os.path.exists(p.path) and not overwrite:
            raise BadInputError("output exists (use --overwrite)", p.path)


def _float_bytes(x: np.ndarray, t: str, name: str, path: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = cast(x, t)          # GGUF's F32/F16/BF16 are safetensors codes too; F16 via numba when installed
    if t != "F32" and nonfinite_count(out, t):
        raise BadInputError(f"tensor {name} overflows {t} (values beyond its range)", path)
    return out


def _read(comp, name: str, shape: tuple) -> np.ndarray:
    info = comp.table.entries[name][0]
    arr = comp.table.read(name)
    bad = nonfinite_count(np.ascontiguousarray(arr), info.dtype)
    if bad:
        raise BadInputError(f"tensor {name} has {bad} NaN/Inf values", comp.path)
    if tuple(arr.shape) != tuple(shape):
        raise BadInputError(f"tensor {name} has shape {list(arr.shape)}, expected {list(shape)}", comp.path)
    return arr


def _write_tensor(i: int, arr: np.ndarray, plans: list[OutputPlan], writers, engine, imatrix, path) -> None:
    """Stage one tensor once, quantize it for every block type wanted, append it to every file."""
    d0 = plans[0].decisions[i]
    wanted = list(dict.fromkeys(p.decisions[i].ggml for p in plans))
    blocks = [t for t in wanted if GGML_TYPES[t].impl]
    x = engine.stage(arr, imatrix.get(d0.name) if blocks else None, shared=bool(blocks))
    data = dict(zip(blocks, engine.quantize(blocks))) if blocks else {}
    for t in wanted:
        if t not in data:
            data[t] = _float_bytes(x, t, d0.name, path)
    for plan, w in zip(plans, writers):
        w.write(d0.name, data[plan.decisions[i].ggml])


def write_dit(comp, plans: list[OutputPlan], writers, engine: QuantEngine, imatrix: dict, update) -> None:
    """Read every tensor of one DiT once and append it to all of its output files."""
    for i, d in enumerate(plans[0].decisions):
        arr = _read(comp, d.name, d.shape)
        _write_tensor(i, arr, plans, writers, engine, imatrix, comp.path)
        update(1)


def write_all(dits, plans, engine: QuantEngine, imatrices: list[dict], update) -> None:
    """Every file stays a temp file until all are complete: a failure leaves none behind.

    imatrices[i] is the importance data of dits[i] (per expert for A14B)."""
    writers: list[gw.GGUFFileWriter] = []
    try:
        for comp, row, imatrix in zip(dits, plans, imatrices):
            for p in row:
                writers.append(gw.GGUFFileWriter(p.path, p.layout))
            write_dit(comp, row, writers[-len(row):], engine, imatrix, update)
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        raise


def _engine(plans, jobs: int) -> QuantEngine:
    """A quantization engine with buffers for the largest tensor and its largest set of outputs."""
    max_el = max_row = max_out = 0
    for row in plans:
        for i, d in enumerate(row[0].decisions):
            blocks = {p.decisions[i].ggml for p in row if GGML_TYPES[p.decisions[i].ggml].impl}
            if blocks:
                max_el, max_row = max(max_el, math.prod(d.shape)), max(max_row, d.shape[-1])
                max_out = max(max_out, sum(gw.TensorEntry(d.name, d.shape, t).nbytes for t in blocks))
    return QuantEngine(jobs if max_out else 1, max_el, max_row, max_out)


def _result(src_path: str, plans, notes: list[str], seconds: float) -> dict:
    outs = []
    for row in plans:
        for p in row:
            counts: dict[str, int] = {}
            for d in p.decisions:
                counts[d.ggml] = counts.get(d.ggml, 0) + 1
            outs.append({"path": p.path, "type": p.policy.mix, "bytes": p.layout.file_size,
                         "tensors": len(p.decisions), "ggml_types": counts, "rules": summary(p.decisions),
                         "fallbacks": [{"tensor": d.name, "note": d.note} for d in fallbacks(p.decisions)],
                         "policy": p.policy.to_dict()})
    return {"source": src_path, "outputs": outs, "notes": notes, "seconds": round(seconds, 3)}


def convert_gguf(src, output: str | None = None, types="Q4_K_M", tensor_types=(), imatrix: str | None = None,
                 float_type: str | None = None, jobs: int = 0, overwrite: bool = False, progress=null) -> dict:
    """Write one GGUF per DiT per type from SRC (a path or an opened Release); returns a result dict."""
    from wan_export.converters.gguf_imatrix import load_imatrix, sha256
    from wan_export.release import open_input

    t0 = time.monotonic()
    mixes, overrides = _parse_types(types), parse_overrides(tensor_types)
    GGUFPolicy(mixes[0], float_type, overrides=overrides)      # option errors before any reading
    rel = open_input(str(src)) if isinstance(src, (str, os.PathLike)) else src
    dits = _dits(rel)
    notes = []
    ims = [load_imatrix(imatrix, dit_shapes(c.config), c.expert) if imatrix else {} for c in dits]
    plans = plan_outputs(dits, mixes, output, overrides, float_type, sha256(imatrix) if imatrix else None)
    _check_outputs(plans, overwrite)
    if imatrix:
        quantized = {d.name for row in plans for p in row for d in p.decisions if GGML_TYPES[d.ggml].impl}
        covered = set().union(*ims)
        notes.append(f"imatrix: {len(quantized & covered)} of {len(quantized)} quantized tensors have importance data")
    skipped = sorted(s for s, c in rel.components.items() if c.kind != "dit")
    if skipped:
        notes.append(f"not part of a Wan GGUF, skipped: {', '.join(skipped)}")
    total = sum(len(row[0].decisions) for row in plans)
    with progress(total, "gguf") as update, _engine(plans, jobs) as engine:
        write_all(dits, plans, engine, ims, update)
    return _result(rel.path, plans, notes, time.monotonic() - t0)


def render_text(result: dict) -> str:
    lines = []
    for o in result["outputs"]:
        kinds = ", ".join(f"{t} {n}" for t, n in sorted(o["ggml_types"].items()))
        lines.append(f"wrote {o['path']}  ({o['bytes'] / 1e9:.3f} GB; {kinds})")
        if o["fallbacks"]:
            f0 = o["fallbacks"][0]
            lines.append(f"  row-fallback: {len(o['fallbacks'])} tensors, e.g. {f0['tensor']}: {f0['note']}")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)
