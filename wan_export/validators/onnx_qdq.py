"""Parity of `wan-export onnx --quant` graphs: the graph against the reference DiT with the
same fake quantization (what an FP8 / FP4 GPU computes), and against the plain reference.

- Runtimes: FP8 Q/DQ graphs run in onnxruntime CPU; NVFP4 graphs (FLOAT4E2M1 DQ-23, which
  onnxruntime CPU lacks) run in `onnx.reference`, with `trt::TRT_FP4DynamicQuantize`
  emulated by the quantizers' own NVFP4 activation math (dynamic E4M3 block scales per 16
  under the graph's global scale), as TensorRT computes it.
- The fake-quant reference reads the weights, scales and activation scales back from the
  graph's initializers, so it checks what the file holds, not what the writer meant.
"""
from __future__ import annotations

import contextlib

import numpy as np

from wan_export.converters import onnx_qdq as Q
from wan_export.validators.report import Tolerance

# Measured on the tiny t2v DiT (fp16 graphs, real CALIB from the recorder, 3 grid shapes): graph vs
# fake-quant reference fp8 <= 2.4e-2 rel-L2 (cos >= 0.9997), nvfp4 <= 7.1e-2 (cos >= 0.9975); weight-only
# graphs match it to 5e-4 / 9e-4, so the rest is the fp16 graph flipping FP8/FP4 rounding ties that the
# fp32 reference rounds the other way, compounded over 20 layers. vs the unquantized reference:
# fp8 <= 4.5e-2, nvfp4 <= 1.75e-1.
TOLERANCES = {"fp8": Tolerance(max_rel_l2=5e-2, min_cosine=0.999),
              "nvfp4": Tolerance(max_rel_l2=1.5e-1, min_cosine=0.995)}
VS_FLOAT = {"fp8": Tolerance(max_rel_l2=1e-1, min_cosine=0.995), "nvfp4": Tolerance(max_rel_l2=3e-1, min_cosine=0.98)}


def parity(report, comp, entry: dict, path: str, quant: str, reference) -> None:
    """Graph vs fake-quant reference (the stated tolerance) and vs the float reference."""
    import torch

    from wan_export.converters import onnx_specs as S
    from wan_export.validators.metrics import compare

    run, desc = runner(path, quant)
    report.info[f"runtime {entry['file']}"] = desc
    inits = graph_weights(path)
    model = reference(comp)
    report.tables[f"{entry['file']}: dequantized weights vs source (worst first)"] = weight_table(model, inits, quant)
    report.info[f"tolerance {entry['file']} {quant}"] = (f"vs fake-quant reference: {TOLERANCES[quant].describe()}; "
                                                        f"vs float reference: {VS_FLOAT[quant].describe()}")
    spec = S.dit_spec(comp.config, entry["file"])
    for i, sizes in enumerate(spec.grid):
        x = S.make_inputs(spec, sizes, seed=100 + i)
        t = x["timestep"]
        if t.dim() == 2:
            t = t.repeat_interleave(sizes["hh"] * sizes["ww"], dim=1)
        args = (x["latents"], t, x["context"], x.get("clip_features"), x.get("vace_context"), x.get("vace_scale", 1.0))
        with torch.no_grad():
            ref = model(*args)
            with fake_quant(model, inits, quant):
                fq = model(*args)
        out = run({k: v.numpy() for k, v in x.items()})[0]
        label = " ".join(f"{k}={v}" for k, v in sizes.items())
        report.add(f"{entry['file']} {quant} vs fake-quant reference {label}", compare(fq, out), TOLERANCES[quant])
        report.add(f"{entry['file']} {quant} vs float reference {label}", compare(ref, out), VS_FLOAT[quant])


def fp4_dynamic_quantize_op():
    """An onnx.reference implementation of trt::TRT_FP4DynamicQuantize (x, s_glob) -> (x_fp4, s_blk)."""
    import ml_dtypes
    import torch
    from onnx.reference.op_run import OpRun

    from wan_export.quantizers.nvfp4 import NVFP4Config, NVFP4Quantizer

    class TRT_FP4DynamicQuantize(OpRun):
        op_domain = Q.TRT_DOMAIN

        def _run(self, x, s_glob, axis=-1, block_size=16, scale_type=17):
            if axis not in (-1, x.ndim - 1) or block_size != Q.BLOCK:
                raise NotImplementedError("only blocks of 16 along the last axis")
            q = NVFP4Quantizer(NVFP4Config(layout="comfy"))
            flat = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, x.shape[-1])
            s2 = torch.tensor(float(s_glob))
            s_blk = q.block_scales(flat, s2)
            codes = q.codes(flat, s_blk, s2)
            from wan_export.quantizers.lowbit import e2m1_decode

            x4 = e2m1_decode(codes).numpy().reshape(x.shape).astype(ml_dtypes.float4_e2m1fn)
            scales = s_blk.numpy().reshape(*x.shape[:-1], -1).astype(ml_dtypes.float8_e4m3fn)
            return x4, scales

    return TRT_FP4DynamicQuantize


def runner(path: str, quant: str):
    """(callable feeds -> outputs, runtime description)."""
    if quant == "fp8":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        return (lambda feeds: sess.run(None, feeds)), f"onnxruntime {ort.__version__} CPU"
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(path, new_ops=[fp4_dynamic_quantize_op()])
    return (lambda feeds: ev.run(None, feeds)), ("onnx.reference (onnxruntime CPU has no FLOAT4E2M1 kernels), "
                                                 "trt::TRT_FP4DynamicQuantize emulated")


# ---- the fake-quant reference ------------------------------------------------------------------

def graph_weights(path: str) -> dict[str, np.ndarray]:
    """Every initializer of the graph as numpy (float8 / float4 as ml_dtypes), plus
    `<layer>.act_scale`: the activation scale the graph applies before each quantized Linear,
    found through the graph's own wiring (MatMul <- DQ <- Q / TRT_FP4DynamicQuantize)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.input[1] not in producer:
            continue
        trans = producer[n.input[1]]
        w = trans.input[0] if trans.op_type == "Transpose" else ""
        layer = w[len(Q.PREFIX):-len(".weight")] if w.startswith(Q.PREFIX) and w.endswith(".weight") else ""
        scale = _act_scale_name(producer, n.input[0])
        if layer and scale:
            inits[f"{layer}.act_scale"] = inits[scale]
    return inits


def _act_scale_name(producer: dict, x: str) -> str | None:
    dq = producer.get(x)
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    src = producer.get(dq.input[0])
    if src is not None and src.op_type == "QuantizeLinear":
        return src.input[1]                                  # fp8: the static scale
    if src is not None and src.op_type == "TRT_FP4DynamicQuantize":
        return src.input[1]                                  # nvfp4: the global scale
    return None


def dequantized(inits: dict, layer: str, quant: str) -> np.ndarray:
    """The weight a DQ chain of the graph produces for `layer`, in fp32 (DQ semantics)."""
    w = f"{Q.PREFIX}{layer}.weight"
    if quant == "fp8":
        return inits[f"{w}.fp8"].astype(np.float32) * np.float32(inits[f"{w}.scale"])
    data = inits[f"{w}.fp4"].astype(np.float32)
    scale_dtype = inits[f"{Q.PREFIX}{layer}.bias"].dtype if f"{Q.PREFIX}{layer}.bias" in inits else np.float32
    blk = (inits[f"{w}.block_scale"].astype(np.float32) * inits[f"{w}.global_scale"]).astype(scale_dtype)
    return data * np.repeat(blk.astype(np.float32), Q.BLOCK, axis=-1)


def activation_scale(inits: dict, layer: str, quant: str) -> float | None:
    key = f"{layer}.act_scale"
    return float(inits[key]) if key in inits else None


def weight_table(model, inits: dict, quant: str) -> list[dict]:
    """Per quantized Linear: dequantized vs source weight, worst first."""
    from wan_export.validators.metrics import compare

    rows = []
    for name, mod in model.named_modules():
        if _quantized(inits, name, quant):
            m = compare(mod.weight.detach(), dequantized(inits, name, quant))
            rows.append({"layer": name, "rel_l2": m["rel_l2"], "cosine": m["cosine"]})
    return sorted(rows, key=lambda r: -r["rel_l2"])


def _quantized(inits: dict, name: str, quant: str) -> bool:
    """Whether the graph holds `name`'s weight in the quantized form (what the file says, not a policy)."""
    return f"{Q.PREFIX}{name}.weight.{'fp8' if quant == 'fp8' else 'fp4'}" in inits


@contextlib.contextmanager
def fake_quant(model, inits: dict, quant: str):
    """Inside: `model` computes with the graph's dequantized weights and fake-quantized inputs
    (and FP8 attention where the graph has attention Q/DQ). Restores everything on exit."""
    import torch

    from wan_export.model import dit as dit_module
    from wan_export.quantizers.fp8 import FP8Quantizer
    from wan_export.quantizers.nvfp4 import NVFP4Config, NVFP4Quantizer

    fq = FP8Quantizer().fake if quant == "fp8" else NVFP4Quantizer(NVFP4Config(layout="comfy")).fake
    saved, handles = {}, []
    for name, mod in model.named_modules():
        if not _quantized(inits, name, quant):
            continue
        saved[name] = mod.weight.data
        mod.weight.data = torch.from_numpy(dequantized(inits, name, quant))
        scale = activation_scale(inits, name, quant)
        if scale is not None:
            s = torch.tensor(scale)
            handles.append(mod.register_forward_pre_hook(lambda _m, args, s=s: (fq(args[0], s),)))
    original = dit_module._attention
    attn = _attention_scales(inits)
    if attn:
        state = {"name": None, "calls": 0}
        for name, mod in model.named_modules():
            if name in attn:
                handles.append(mod.register_forward_pre_hook(
                    lambda _m, _a, name=name: state.update(name=name, calls=0)))
        dit_module._attention = _fp8_attention(attn, original, state)
    try:
        yield model
    finally:
        dit_module._attention = original
        for h in handles:
            h.remove()
        for name, w in saved.items():
            model.get_submodule(name).weight.data = w


def _attention_scales(inits: dict) -> dict:
    out = {}
    for key in inits:
        if ".sdpa.q.scale" in key:
            base = key.removesuffix(".q.scale")
            out[base.removesuffix(".sdpa")] = {k: float(inits[f"{base}.{k}.scale"]) for k in ("q", "k", "v", "softmax")}
    return out


def _fp8_attention(scales: dict, original, state: dict):
    """Attention with FP8 q, k, v and softmax output for the first attention call of each
    attention module the graph has Q/DQ for (the i2v image attention, a second call, is kept)."""
    import math

    import torch

    from wan_export.quantizers.fp8 import FP8Quantizer

    fake = FP8Quantizer().fake

    def attention(q, k, v):
        name, state["calls"] = state["name"], state["calls"] + 1
        if name not in scales or state["calls"] > 1:
            return original(q, k, v)
        s = {k_: torch.tensor(v_) for k_, v_ in scales[name].items()}
        qh, kh, vh = (fake(t, s[n]).transpose(1, 2) for t, n in ((q, "q"), (k, "k"), (v, "v")))
        p = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return (fake(p, s["softmax"]) @ vh).transpose(1, 2).flatten(2).to(q.dtype)

    return attention
