"""`wan-export onnx`: export the Wan DiT, the causal VAE (as first/step graphs with an
explicit cache) and the UMT5 encoder to ONNX with dynamic batch and sizes.

Each component is built on the meta device and its weights are assigned one
tensor at a time from the lazy source (a tensor already in the export dtype is
used as read, without a cast copy). The dynamo exporter (default) then writes
initializers one by one into external data when the weights pass 1 GiB, so the
weights are held once (peak RSS 1.1x the weight bytes for a 1.3B DiT).
Graph contracts live in `onnx_specs.py`; `wan-export validate` checks the result.
"""
from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import re
import time
import warnings
from dataclasses import dataclass
from importlib import import_module

from wan_export.converters import onnx_specs as S
from wan_export.errors import BadInputError, UnsupportedError
from wan_export.progress import null

# Weights kept in fp32 in fp16/bf16 exports (the official _keep_in_fp32_modules); first match wins.
KEEP_FP32 = (
    # adaLN shift/scale/gate are added to fp32 time embeddings; fp16 modulation drifts
    re.compile(r"(^|\.)modulation$"),
    # the sinusoidal time path: fp16 cannot resolve t = 999 vs 1000
    re.compile(r"^time_(embedding|projection)\."),
    # the affine LayerNorm: FP16 LayerNorm overflows in TensorRT (NVIDIA/TensorRT#2564, #4215)
    re.compile(r"\.norm3\.(weight|bias)$"),
)
# release component kind -> reference module class
MODELS = {"dit": "wan_export.model.dit:WanDiT", "vae": "wan_export.model.vae:WanVAE",
          "t5": "wan_export.model.t5:UMT5Encoder"}


@dataclass
class Job:
    """One component to export: its release slot and the graphs it yields."""

    slot: str
    comp: object                       # components.Component
    specs: tuple                       # onnx_specs.GraphSpec, ...
    tiling: object = None              # vae_tiling.Tiling of static-tile VAE graphs


def export_onnx(src: str, output: str | None = None, *, component: str = "all", dtype: str = "fp32",
                opset: int | None = None, exporter: str = "dynamo", overwrite: bool = False,
                quant: str | None = None, calib: str | None = None, vae_tile: int | None = None,
                vae_overlap: int | None = None, progress=null) -> dict:
    """Export SRC's components to a folder of ONNX graphs + wan_onnx.json (+ vae.json).

    `quant` rewrites the DiT graphs into FP8 / NVFP4 Q/DQ form (converters/onnx_qdq.py).
    vae_tile (pixels) exports the VAE step graphs at that static tile shape and writes the tiling
    protocol (vae_overlap pixels shared by neighbours, default tile/4) into vae.json.
    """
    from wan_export.atomic import atomic_dir
    from wan_export.converters import onnx_quant
    from wan_export.release import open_input

    _check_options(component, dtype, opset, exporter)
    qdq = onnx_quant.prepare(quant, calib, exporter, dtype)
    opset = opset or S.default_opset(dtype)
    rel = open_input(src)
    jobs = plan(rel, component, vae_tile, vae_overlap)
    if qdq:
        qdq.check(jobs)
    output = output or default_output(rel, dtype)
    start, graphs, configs = time.perf_counter(), [], {}
    with atomic_dir(output, overwrite) as tmp, progress(sum(len(j.specs) for j in jobs), "exporting") as update:
        for job in jobs:
            model = build_model(job.comp, dtype)
            configs[job.slot] = job.comp.config.to_dict()
            for spec in job.specs:
                graphs.append(export_graph(model, job, spec, tmp, dtype, opset, exporter))
                if qdq and spec.role == "dit":
                    graphs[-1].update(qdq.apply(os.path.join(tmp, spec.file), job.comp))
                if job.tiling is not None:
                    graphs[-1]["vae_tile"] = job.tiling.tile
                update(1)
            del model
            gc.collect()
        manifest = _manifest(src, dtype, opset, exporter, graphs, configs)
        if qdq:
            manifest["quant"] = qdq.manifest()
            manifest["opset"] = max(opset, onnx_quant.Q.OPSET[quant])
        _write_json(os.path.join(tmp, S.MANIFEST), manifest)
        for job in (j for j in jobs if j.comp.kind == "vae"):
            parts = tuple(p for p in ("decoder", "encoder") if any(s.role.startswith(f"vae_{p}") for s in job.specs))
            _write_json(os.path.join(tmp, S.VAE_SIDECAR),
                        S.vae_protocol(job.comp.config, dtype, parts, job.tiling))
    return {"output": os.path.abspath(output), "dtype": dtype, "opset": manifest["opset"], "exporter": exporter,
            "quant": manifest.get("quant"), "graphs": graphs, "seconds": round(time.perf_counter() - start, 2)}


def _vae_tiling(comp, tile: int | None, overlap: int | None):
    """--vae-tile/--vae-overlap (pixels) checked against this VAE: a vae_tiling.Tiling, or None."""
    if tile is None:
        if overlap is not None:
            raise UnsupportedError("--vae-overlap needs --vae-tile")
        return None
    from wan_export.model.vae_tiling import tiling_from_pixels

    return tiling_from_pixels(comp.config, tile, overlap)


def _check_options(component: str, dtype: str, opset: int | None, exporter: str) -> None:
    table = (("component", component, S.COMPONENT_CHOICES), ("dtype", dtype, tuple(S.DTYPES)),
             ("exporter", exporter, S.EXPORTERS))
    for what, value, choices in table:
        if value not in choices:
            raise UnsupportedError(f"unknown {what} {value!r} (choose from {', '.join(choices)})")
    opset = opset or S.default_opset(dtype)
    if opset < S.MIN_OPSET[dtype]:
        raise UnsupportedError(f"{dtype} needs opset >= {S.MIN_OPSET[dtype]} (ONNX Conv, Sin and Cos take "
                               f"bfloat16 from opset 22), got {opset}")
    if opset not in S.OPSETS or (exporter == "dynamo" and opset < 18) or (exporter == "legacy" and opset > 20):
        raise UnsupportedError(f"opset {opset} is not supported with the {exporter} exporter "
                               f"(dynamo: 18-{S.OPSETS[-1]}, legacy: {S.OPSETS[0]}-20; TensorRT 10.0 parses <= 20)")


def plan(rel, component: str, vae_tile: int | None = None, vae_overlap: int | None = None) -> list[Job]:
    """The components to export, with their graph specs, in a fixed order."""
    wanted = list(S.COMPONENTS) if component == "all" else [component]
    jobs: dict[str, Job] = {}
    for name in wanted:
        kind, roles = S.COMPONENTS[name]
        found = [(slot, c) for slot, c in rel.components.items() if c.kind == kind]
        if not found and component != "all":
            raise BadInputError(f"no {kind} component found to export as {name}", rel.path)
        for slot, comp in found:
            tiling = _vae_tiling(comp, vae_tile, vae_overlap) if kind == "vae" else None
            specs = specs_for(comp, slot, roles, tiling)
            if slot in jobs:
                jobs[slot].specs += specs
            else:
                jobs[slot] = Job(slot, comp, specs, tiling)
    if not jobs:
        raise BadInputError("nothing to export: no DiT, VAE or UMT5 component found", rel.path)
    if vae_tile is not None and not any(j.comp.kind == "vae" for j in jobs.values()):
        raise UnsupportedError("--vae-tile needs a VAE component to export")
    return list(jobs.values())


def specs_for(comp, slot: str, roles: tuple[str, ...], tiling=None) -> tuple:
    if comp.kind == "dit":
        return (S.dit_spec(comp.config, S.DIT_FILES.get(slot, "transformer.onnx")),)
    if comp.kind == "t5":
        return (S.t5_spec(comp.config),)
    part = "decoder" if roles[0].startswith("vae_decoder") else "encoder"
    return S.vae_specs(comp.config, part, None if tiling is None else tiling.tile)


def default_output(rel, dtype: str) -> str:
    v = rel.variant
    stem = v.comfy_stem.replace("_{expert}", "") if v else "wan"
    return f"{stem}_onnx_{dtype}"


# ---- models, weights streamed in -------------------------------------------------------------

def build_model(comp, dtype: str):
    """The reference module of a component, built on meta, weights assigned one tensor at a time."""
    import torch

    module, cls = MODELS[comp.kind].split(":")
    with torch.device("meta"):
        model = getattr(import_module(module), cls)(comp.config)
    keep = KEEP_FP32 if comp.kind == "dit" and dtype != "fp32" else ()
    stream_weights(model, comp.table, S.DTYPES[dtype], keep)
    if comp.kind == "dit":
        model.angle_dtype = torch.float32        # no DOUBLE in the graph; ~4e-6 rel-L2 vs float64
    return model


def stream_weights(model, table, code: str, keep_fp32=()) -> None:
    """Assign each source tensor to its meta parameter, read and cast one at a time."""
    import torch

    from wan_export.variants import check_shapes
    from wan_export.writing import check_finite

    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_shapes({i.name: i.shape for i in table.infos()}, expected, type(model).__name__, table.path)
    for info in table.infos():
        want = "F32" if any(rx.search(info.name) for rx in keep_fp32) else code
        arr = table.read(info.name)
        check_finite(arr, info.dtype, info.name, table.path)
        tensor = _to_torch(arr, want)
        owner, _, leaf = info.name.rpartition(".")
        mod = model.get_submodule(owner) if owner else model
        if leaf in mod._parameters:
            mod._parameters[leaf] = torch.nn.Parameter(tensor, requires_grad=False)
        else:
            mod._buffers[leaf] = tensor
    left = [n for n, t in model.state_dict().items() if t.is_meta]
    if left:
        raise BadInputError(f"{len(left)} weights were not loaded, e.g. {left[0]}", table.path)
    model.eval().requires_grad_(False)


def _to_torch(arr, code: str):
    """numpy -> torch in `code`; a matching dtype shares the array read from the source."""
    from wan_export.dtypes import FLOAT_CODES, cast, st_code, to_torch

    if st_code(arr) in FLOAT_CODES:
        arr = cast(arr, code)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)    # "non-writable array": the graph never writes weights
        return to_torch(arr)


# ---- one graph ---------------------------------------------------------------------------------

def _graph_module(model, cfg, role: str):
    """Wrap `model` so forward(*inputs) takes the spec's inputs in order and returns its outputs."""
    import torch

    call = CALLS[role](cfg)

    class Graph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return call(self.model, *inputs)

    return Graph().eval()


def _dit_call(cfg):
    names = [t.name for t in S.dit_spec(cfg).inputs]
    per_frame = cfg.model_type == "ti2v"
    ph, pw = cfg.patch_size[1:]

    def call(model, *inputs):
        x = dict(zip(names, inputs))
        t = x["timestep"]
        if per_frame:        # [B, F] -> one timestep per token, [B, F * h/2 * w/2]
            lat = x["latents"]
            tokens = (lat.shape[3] // ph) * (lat.shape[4] // pw)
            t = t[:, :, None].expand(-1, -1, tokens).reshape(t.shape[0], -1)
        return model(x["latents"], t, x["context"], x.get("clip_features"), x.get("vace_context"),
                     x.get("vace_scale", 1.0))
    return call


def _vae_call(part: str, first: bool):
    def factory(cfg):
        def call(model, x, *cache):
            step = model.decoder_step if part == "decoder" else model.encoder_step
            y, new = step(x, None if first else list(cache), first)
            return (y, *new)
        return call
    return factory


CALLS = {"dit": _dit_call, "text_encoder": lambda cfg: lambda model, ids, mask: model(ids, mask),
         **{f"vae_{p}_{'first' if f else 'step'}": _vae_call(p, f)
            for p in ("decoder", "encoder") for f in (True, False)}}


def export_graph(model, job: Job, spec, folder: str, dtype: str, opset: int, exporter: str) -> dict:
    """Export one graph into `folder`; return its manifest entry."""
    import torch

    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    external = weight_bytes > S.EXTERNAL_DATA_BYTES
    if external and exporter == "legacy":
        raise UnsupportedError(f"the legacy exporter holds a second copy of the weights "
                               f"({weight_bytes / 2**30:.1f} GiB); use --exporter dynamo")
    path = os.path.join(folder, spec.file)
    module = _graph_module(model, job.comp.config, spec.role)
    args = example_args(spec, S.DTYPES[dtype], job.comp.config)
    start = time.perf_counter()
    with _quiet(), torch.no_grad():
        (_dynamo if exporter == "dynamo" else _legacy)(module, args, spec, opset, path, external)
    _check_io(path, spec)
    entry = spec.to_dict(dtype)
    entry.update(slot=job.slot, component=job.comp.kind, variant=job.comp.variant, expert=job.comp.expert,
                 external_data=f"{spec.file}.data" if external else None, weight_bytes=weight_bytes,
                 seconds=round(time.perf_counter() - start, 2))
    return entry


def example_args(spec, code: str, cfg) -> tuple:
    """The export example inputs, in spec order; cache inputs in the model dtype."""
    from wan_export.dtypes import torch_dtype

    vocab = getattr(cfg, "vocab", None)
    inputs = S.make_inputs(spec, spec.example, seed=0, vocab=vocab)
    model_dtype = torch_dtype(code)
    return tuple(inputs[t.name].to(model_dtype) if t.dtype == "model" else inputs[t.name] for t in spec.inputs)


def _dynamo(module, args, spec, opset, path, external) -> None:
    import torch
    from onnxscript import optimizer
    from torch.export import Dim

    symbols: dict = {}

    def dim(d):
        k, sym = S.parse_dim(d)
        if sym not in symbols:
            symbols[sym] = Dim(sym, min=1, max=1 << 16)
        return symbols[sym] if k == 1 else k * symbols[sym]

    shapes = tuple({i: dim(d) for i, d in enumerate(t.dims) if not isinstance(d, int)} for t in spec.inputs)
    program = torch.onnx.export(module, args, dynamo=True, opset_version=opset, verbose=False,
                                input_names=[t.name for t in spec.inputs],
                                output_names=[t.name for t in spec.outputs],
                                dynamic_shapes={"inputs": shapes}, optimize=False)
    optimizer.optimize_ir(program.model, should_fold=_keep_weight_transposes)
    # torch writes its symbol range table in hash order (differs per process): drop it so the same
    # input gives the same bytes; it is torch-internal, no ONNX consumer reads it
    for props in (program.model.metadata_props, program.model.graph.metadata_props):
        for key in [k for k in props if k.endswith("range_constraints")]:
            del props[key]
    program.save(path, external_data=external)


def _keep_weight_transposes(node) -> bool | None:
    """Leave Transpose(W) of Linear weights to TensorRT/onnxruntime (they fold it at build/load):
    the initializers then stay the stock [out, in] weights named `model.<stock name>`, so weight
    maps and refit work by name. (onnxscript would fold them into unnamed `val_*` views.)"""
    if node.op_type == "Transpose" and node.domain in ("", "ai.onnx"):
        x = node.inputs[0]
        if x is not None and x.is_initializer():
            return False
    return None


def _legacy(module, args, spec, opset, path, external) -> None:
    import torch

    axes = {t.name: {i: str(d) for i, d in enumerate(t.dims) if not isinstance(d, int)}
            for t in (*spec.inputs, *spec.outputs)}
    torch.onnx.export(module, args, path, dynamo=False, opset_version=opset, do_constant_folding=True,
                      input_names=[t.name for t in spec.inputs], output_names=[t.name for t in spec.outputs],
                      dynamic_axes=axes)


@contextlib.contextmanager
def _quiet():
    """The exporters print progress on stdout and log warnings; keep --json output clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _check_io(path: str, spec) -> None:
    """Declare the spec's dims on the graph I/O, refusing a graph whose exporter renamed an
    input/output or baked a dynamic dim; dynamo names some derived sizes (s39 for h)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    g = model.graph
    got = ([i.name for i in g.input], [o.name for o in g.output])
    want = ([t.name for t in spec.inputs], [t.name for t in spec.outputs])
    if got != want:
        raise UnsupportedError(f"exported graph I/O {got} differs from the spec {want}", path)
    for vi, t in zip((*g.input, *g.output), (*spec.inputs, *spec.outputs)):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != len(t.dims):
            raise UnsupportedError(f"{t.name} has rank {len(dims)}, the spec {len(t.dims)}", path)
        for d, w in zip(dims, t.dims):
            if d.HasField("dim_value") and (isinstance(w, str) or d.dim_value != w):
                raise UnsupportedError(f"{t.name} has size {d.dim_value} where the spec has {w} "
                                       f"(the exporter specialised a dynamic dim)", path)
            if isinstance(w, int):
                d.dim_value = w
            else:
                d.dim_param = w
    for item in (*g.node, *g.input, *g.output, *g.value_info, *g.initializer):
        del item.metadata_props[:]        # exporter debug info: stack traces with build-machine paths
    onnx.save(model, path)


def _manifest(src, dtype, opset, exporter, graphs, configs) -> dict:
    """No absolute paths and no times, so the same input gives the same bytes (release manifests)."""
    return {"format": "wan-export-onnx", "version": 1, "source": os.path.basename(os.path.abspath(src)),
            "dtype": dtype, "opset": opset, "exporter": exporter, "angle_dtype": "float32", "configs": configs,
            "graphs": [{k: v for k, v in g.items() if k != "seconds"} for g in graphs]}


def _write_json(path: str, doc: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=2, default=str)
        f.write("\n")


def render_text(result: dict) -> str:
    q = result.get("quant")
    quant = f", {q['type']} Q/DQ DiT, activations: {q['activations']}" if q else ""
    lines = [f"ONNX ({result['dtype']}, opset {result['opset']}, {result['exporter']}{quant}) -> {result['output']}"]
    for g in result["graphs"]:
        ext = f" + {g['external_data']}" if g["external_data"] else ""
        ins = ", ".join(f"{t['name']}[{','.join(map(str, t['shape']))}]" for t in g["inputs"][:4])
        more = f" +{len(g['inputs']) - 4} cache" if len(g["inputs"]) > 4 else ""
        lines.append(f"  {g['file']}{ext}  ({g['slot']}, {g['seconds']} s): {ins}{more}")
    vae = any(g["component"] == "vae" for g in result["graphs"])
    lines.append(f"  {S.MANIFEST}" + (f", {S.VAE_SIDECAR}" if vae else ""))
    lines.append(f"Check with: wan-export validate {result['output']} --against <SRC>")
    return "\n".join(lines)
