"""Validate a `wan-export onnx` folder (or one graph of it) against its source.

Graph hygiene per file: `onnx.checker` (full, with external data), strict shape
inference, the I/O contract of wan_onnx.json, no DOUBLE/complex types, and the
op list against TensorRT's parser table (`trt_ops.py`). Parity: the graphs run
in onnxruntime (onnx.reference where ORT has no kernels, e.g. bf16) at the
spec's grid of shapes, none equal to the export example, against the reference
PyTorch model on the source weights; VAE step graphs are iterated with their cache.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass

import numpy as np

from wan_export.converters import onnx_specs as S
from wan_export.errors import BadInputError
from wan_export.validators import trt_ops
from wan_export.validators.metrics import compare
from wan_export.validators.report import Report, Tolerance

REFERENCE_MAX_BYTES = 256 << 20     # onnx.reference is numpy: fine for tiny graphs, hopeless for 14B


@dataclass(frozen=True)
class Must(Tolerance):
    """A yes/no check: its metrics carry a list of problems, empty when it holds."""

    def failures(self, m: dict) -> list[str]:
        return list(m.get("problems", []))

    def describe(self) -> str:
        return "must hold"


def _fact(report: Report, name: str, problems: list[str], note: str = "") -> None:
    report.add(name, {"rel_l2": "-", "cosine": "-", "max_abs": "-", "snr_db": "-", "problems": problems},
               Must(), note)


def validate_onnx(path: str, against: str, **options) -> Report:
    """Hygiene + onnxruntime parity of every graph at PATH (folder, or one .onnx and its siblings)."""
    from wan_export.release import open_input

    folder, manifest, entries = _select(path)
    dtype = manifest["dtype"]
    report = Report(path, against, "onnx")
    report.info.update({"dtype": dtype, "opset": manifest["opset"], "exporter": manifest["exporter"]})
    if manifest.get("quant"):
        report.info.update({f"quant {k}": manifest["quant"][k] for k in ("type", "weights", "activations")})
    if any(e["role"] == "dit" for e in entries):
        report.info["time/RoPE angles"] = "float32 in-graph (reference: float64, ~4e-6 rel-L2 apart)"
    for entry in entries:
        hygiene(report, folder, entry)
    rel = open_input(against)
    for (slot, family), group in _groups(entries).items():
        comp = _component(rel, slot, group[0]["component"])
        if comp is None:
            raise BadInputError(f"has no {group[0]['component']} component to compare "
                                f"{group[0]['file']} with", against)
        if not _same_config(report, slot, manifest["configs"].get(slot), comp):
            continue
        if family == "dit" and group[0].get("quant"):      # Q/DQ graphs: fake-quant parity
            from wan_export.validators import onnx_qdq

            onnx_qdq.parity(report, comp, group[0], os.path.join(folder, group[0]["file"]), group[0]["quant"],
                            _reference)
            continue
        runners = {e["role"]: _runner(report, os.path.join(folder, e["file"]), e, dtype) for e in group}
        if all(runners.values()):
            tol = S.TOLERANCES[("vae" if family.startswith("vae") else family, dtype)]
            report.info[f"tolerance {family}"] = tol.describe()
            PARITY[family](report, comp, group, runners, tol)
    return report


# ---- which graphs ------------------------------------------------------------------------------

def _select(path: str) -> tuple[str, dict, list[dict]]:
    folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    mpath = os.path.join(folder, S.MANIFEST)
    if not os.path.exists(mpath):
        raise BadInputError(f"no {S.MANIFEST} beside the graph: not a wan-export ONNX folder", path)
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
        entries = list(manifest["graphs"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BadInputError("corrupt manifest", mpath) from None
    if os.path.isdir(path):
        return folder, manifest, entries
    hit = [e for e in entries if e["file"] == os.path.basename(path)]
    if not hit:
        raise BadInputError(f"graph not listed in {S.MANIFEST}", path)
    key = (hit[0]["slot"], _family(hit[0]["role"]))
    return folder, manifest, [e for e in entries if (e["slot"], _family(e["role"])) == key]


def _family(role: str) -> str:
    return role.removesuffix("_first").removesuffix("_step")


def _groups(entries: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict = {}
    for e in entries:
        out.setdefault((e["slot"], _family(e["role"])), []).append(e)
    return out


def _component(rel, slot: str, kind: str):
    comp = rel.components.get(slot)
    if comp is not None and comp.kind == kind:
        return comp
    same = [c for c in rel.components.values() if c.kind == kind]
    if len(same) == 1:
        return same[0]
    return None


def _same_config(report: Report, slot: str, exported: dict | None, comp) -> bool:
    ours = comp.config.to_dict()
    diff = sorted(k for k in ours if exported is None or exported.get(k) != ours[k])
    _fact(report, f"{slot}: config matches the source", [f"differs in {', '.join(diff)}"] if diff else [])
    return not diff


# ---- hygiene -----------------------------------------------------------------------------------

def hygiene(report: Report, folder: str, entry: dict) -> None:
    """checker, strict shape inference, I/O contract, forbidden types and TRT ops for one graph."""
    import onnx

    name, path = entry["file"], os.path.join(folder, entry["file"])
    if not os.path.exists(path):
        _fact(report, f"{name}: present", ["file missing"])
        return
    _fact(report, f"{name}: onnx.checker (full)", _try(lambda: onnx.checker.check_model(path, full_check=True)))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "inferred.onnx")
        problems = _try(lambda: onnx.shape_inference.infer_shapes_path(
            path, out, check_type=True, strict_mode=True, data_prop=True))
        model = onnx.load(out if not problems else path, load_external_data=False)
    _fact(report, f"{name}: shape inference (strict)", problems)
    _fact(report, f"{name}: I/O as in {S.MANIFEST}", _contract(model.graph, entry))
    _fact(report, f"{name}: no DOUBLE or complex types", forbidden_types(model.graph))
    rows, bad = op_table(model.graph)
    report.tables[f"ops of {name} (TensorRT parser)"] = rows
    _fact(report, f"{name}: every op parsed by TensorRT", bad)
    report.info[f"{name} nodes"] = len(model.graph.node)


def _try(fn) -> list[str]:
    try:
        fn()
        return []
    except Exception as e:       # checker/inference raise several types; all mean "fails"
        return [(str(e).strip().splitlines() or [type(e).__name__])[0][:300]]


def _dims(vi) -> list:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in vi.type.tensor_type.shape.dim]


def _contract(graph, entry: dict) -> list[str]:
    problems = []
    for kind, actual, wanted in (("input", graph.input, entry["inputs"]), ("output", graph.output, entry["outputs"])):
        got = [(v.name, _dims(v)) for v in actual]
        want = [(t["name"], list(t["shape"])) for t in wanted]
        if got != want:
            problems.append(f"{kind}s {got} != {want}")
    return problems


def forbidden_types(graph) -> list[str]:
    """Every DOUBLE / complex tensor, value, cast or constant in the graph (subgraphs included)."""
    from onnx import AttributeProto, helper

    found = Counter()
    for t in graph.initializer:
        if t.data_type in trt_ops.FORBIDDEN_TYPES:
            found[f"initializer {trt_ops.FORBIDDEN_TYPES[t.data_type]}"] += 1
    for v in (*graph.input, *graph.output, *graph.value_info):
        if v.type.tensor_type.elem_type in trt_ops.FORBIDDEN_TYPES:
            found[f"value {trt_ops.FORBIDDEN_TYPES[v.type.tensor_type.elem_type]}"] += 1
    for node in graph.node:
        for a in node.attribute:
            value = helper.get_attribute_value(a)
            if a.name == "to" and value in trt_ops.FORBIDDEN_TYPES:
                found[f"{node.op_type} to {trt_ops.FORBIDDEN_TYPES[value]}"] += 1
            elif a.type == AttributeProto.TENSOR and value.data_type in trt_ops.FORBIDDEN_TYPES:
                found[f"{node.op_type} constant {trt_ops.FORBIDDEN_TYPES[value.data_type]}"] += 1
            elif a.type == AttributeProto.GRAPH:
                found.update({p: 1 for p in forbidden_types(value)})
    return [f"{k} (x{n})" for k, n in sorted(found.items())]


def op_table(graph) -> tuple[list[dict], list[str]]:
    """Rows (op, count, TensorRT status, note) and the ops TensorRT cannot parse."""
    counts = Counter((n.domain, n.op_type) for n in graph.node)
    rows, bad = [], []
    for (domain, op), n in sorted(counts.items(), key=lambda kv: kv[0][1]):
        status, note = trt_ops.classify(op, domain)
        rows.append({"op": op if not domain else f"{domain}::{op}", "count": n, "tensorrt": status, "note": note})
        if status in trt_ops.FAILING:
            bad.append(f"{op}: {note}")
    return rows, bad


# ---- runtimes ----------------------------------------------------------------------------------

def _runner(report: Report, path: str, entry: dict, dtype: str):
    """onnxruntime (CPU; CUDA for bf16 when present), else onnx.reference for small bf16 graphs,
    else None: graph-checked only. An fp32/fp16 graph that onnxruntime refuses fails."""
    import onnxruntime as ort

    name = entry["file"]
    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    if dtype != "bf16" or gpu:
        try:
            opts = ort.SessionOptions()
            opts.log_severity_level = 3
            providers = ["CUDAExecutionProvider"] * (dtype == "bf16") + ["CPUExecutionProvider"]
            sess = ort.InferenceSession(path, opts, providers=providers)
            report.info[f"runtime {name}"] = f"onnxruntime {ort.__version__} {sess.get_providers()[0]}"
            return lambda feeds: sess.run(None, feeds)
        except Exception as e:       # NOT_IMPLEMENTED / INVALID_GRAPH: missing kernels or a bad graph
            if dtype != "bf16":
                _fact(report, f"{name}: onnxruntime loads it", [(str(e).strip().splitlines() or ["?"])[0][:300]])
                return None
    # onnxruntime CPU has no bf16 kernels (Conv, Expand, Where, ...): not even worth loading the weights
    size = entry.get("weight_bytes") or 0
    if size <= REFERENCE_MAX_BYTES:
        from onnx.reference import ReferenceEvaluator

        ev = ReferenceEvaluator(path)
        report.info[f"runtime {name}"] = "onnx.reference (onnxruntime CPU has no bf16 kernels)"
        return lambda feeds: ev.run(None, feeds)
    report.info[f"runtime {name}"] = (f"none: graph-checked only, parity NOT run (onnxruntime CPU has no "
                                      f"bf16 kernels; {size / 2**20:.0f} MiB is too big for onnx.reference; "
                                      f"validate where onnxruntime-gpu is installed)")
    return None


def _np(feeds: dict) -> dict:
    return {k: v.numpy() for k, v in feeds.items()}


def _label(sizes: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in sizes.items())


# ---- parity ------------------------------------------------------------------------------------

def _reference(comp):
    """The fp32 reference module on the source weights (official float64 angles for the DiT)."""
    import torch

    from wan_export.model.dit import load_dit
    from wan_export.model.t5 import load_t5
    from wan_export.model.vae import load_vae
    from wan_export.validators.parity import torch_state

    load = {"dit": load_dit, "vae": load_vae, "t5": load_t5}[comp.kind]
    return load(torch_state(comp.table), comp.config, dtype=torch.float32)


def _parity_dit(report, comp, group, runners, tol) -> None:
    import torch

    entry, cfg = group[0], comp.config
    spec, run = S.dit_spec(cfg, entry["file"]), runners["dit"]
    model = _reference(comp)
    for i, sizes in enumerate(spec.grid):
        x = S.make_inputs(spec, sizes, seed=100 + i)
        t = x["timestep"]
        if t.dim() == 2:      # per-frame -> per-token, independently of the graph's own expansion
            t = t.repeat_interleave(sizes["hh"] * sizes["ww"], dim=1)
        with torch.no_grad():
            ref = model(x["latents"], t, x["context"], x.get("clip_features"), x.get("vace_context"),
                        x.get("vace_scale", 1.0))
        report.add(f"{entry['file']} {_label(sizes)}", compare(ref, run(_np(x))[0]), tol)


def _iterate(runners: dict, first, step, chunks: list[np.ndarray]) -> np.ndarray:
    """Run first on chunk 0, step on the rest, feeding cache_out.* back as cache_in.*."""
    outs, cache = [], {}
    for i, chunk in enumerate(chunks):
        spec = first if i == 0 else step
        res = runners[spec.role]({spec.inputs[0].name: chunk, **cache})
        outs.append(res[0])
        cache = {o.name.replace("cache_out.", "cache_in.", 1): r for o, r in zip(spec.outputs[1:], res[1:])}
    return np.concatenate(outs, axis=2)


def _parity_vae(part: str):
    def check(report, comp, group, runners, tol) -> None:
        import torch

        cfg = comp.config
        first, step = S.vae_specs(cfg, part, group[0].get("vae_tile"))    # static tile graphs: at the tile
        model = _reference(comp)
        s, k = cfg.spatial_stride, cfg.temporal_stride
        for i, c in enumerate(first.grid):
            g = torch.Generator().manual_seed(200 + i)
            b, t, h, w = c["batch"], c["frames"], c["h"], c["w"]
            with torch.no_grad():
                if part == "decoder":
                    z = torch.randn(b, cfg.z_dim, t, h, w, generator=g)
                    ref, chunks = model.decode(z), [z[:, :, j:j + 1].numpy() for j in range(t)]
                else:
                    video = torch.rand(b, 3, 1 + k * (t - 1), s * h, s * w, generator=g) * 2 - 1
                    ref = model.encode(video)
                    chunks = [video[:, :, :1].numpy()] + [video[:, :, j:j + k].numpy()
                                                          for j in range(1, video.shape[2], k)]
            out = _iterate(runners, first, step, chunks)
            report.add(f"vae {part} steps: {t} latent / {1 + k * (t - 1)} video frames, batch={b} h={h} w={w}",
                       compare(ref, out), tol)
    return check


def _parity_t5(report, comp, group, runners, tol) -> None:
    import torch

    spec, run = S.t5_spec(comp.config), runners["text_encoder"]
    model = _reference(comp)
    for i, sizes in enumerate(spec.grid):
        x = S.make_inputs(spec, sizes, seed=300 + i, vocab=comp.config.vocab)
        with torch.no_grad():
            ref = model(x["input_ids"], x["attention_mask"])
        report.add(f"{group[0]['file']} {_label(sizes)}", compare(ref, run(_np(x))[0]), tol)


PARITY = {"dit": _parity_dit, "vae_decoder": _parity_vae("decoder"), "vae_encoder": _parity_vae("encoder"),
          "text_encoder": _parity_t5}
