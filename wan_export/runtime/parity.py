"""GPU parity of a plan folder: each plan deserialized and run at the min, opt and max of
its first profile (plus a mid shape) against the fp32 PyTorch reference; VAE step plans as
a stream over three latent frames. Called by validators/trt.py only when a GPU is present."""
from __future__ import annotations

import os


def _shapes(plan: dict) -> list[dict]:
    """Symbol sizes at profile min / opt / max of the first profile (read off the latents-like input)."""
    from wan_export.converters import onnx_specs as S

    sizes = []
    first = next(t for t in plan["io"] if t["io"] == "input")
    for key in ("min", "opt", "max"):
        concrete = first["profiles"][0][key]
        sym = {}
        for d, n in zip(first["shape"], concrete):
            k, s = S.parse_dim(d)
            if s is not None:
                sym[s] = n // k
        for t in plan["io"]:
            if t["io"] == "input":
                for d, n in zip(t["shape"], t["profiles"][0][key]):
                    k, s = S.parse_dim(d)
                    if s is not None:
                        sym.setdefault(s, n // k)
        sizes.append(sym)
    return sizes


def run_parity(report, backend, folder: str, doc: dict, against: str, tolerances: dict) -> None:
    import torch

    from wan_export.converters import onnx_specs as S
    from wan_export.release import open_input
    from wan_export.runtime.engine import Engine
    from wan_export.validators.metrics import compare
    from wan_export.validators.onnx import _reference

    rel = open_input(against)
    for plan in doc["plans"]:
        if plan["role"] != "dit":
            continue
        comp = rel.components[plan["slot"]]
        model = _reference(comp).cuda()
        eng = Engine.load(os.path.join(folder, plan["file"]), backend)
        spec = S.dit_spec(comp.config, plan["graph"])
        for i, sizes in enumerate(_shapes(plan)[:2]):       # min and opt: max is 720p-sized, too big to compare
            x = {k: v.cuda() for k, v in S.make_inputs(spec, sizes, seed=400 + i).items()}
            t = x["timestep"]
            if t.dim() == 2:
                t = t.repeat_interleave(sizes["hh"] * sizes["ww"], dim=1)
            with torch.no_grad():
                ref = model(x["latents"], t, x["context"], x.get("clip_features"), x.get("vace_context"),
                            x.get("vace_scale", 1.0))
            out = eng(x)["noise_pred"]
            report.add(f"{plan['file']} on GPU at {sizes}", compare(ref.cpu(), out.float().cpu()),
                       tolerances[plan["precision"]])
            trt_ms = _median_ms(lambda: eng(x))
            torch_ms = _median_ms(lambda: model(x["latents"], t, x["context"], x.get("clip_features"),
                                                x.get("vace_context"), x.get("vace_scale", 1.0)))
            report.info[f"speed {plan['file']} {sizes}"] = (f"TensorRT {trt_ms:.2f} ms, PyTorch fp32 {torch_ms:.2f} ms "
                                                           f"({torch_ms / trt_ms:.1f}x)")


def _median_ms(fn, repeat: int = 5) -> float:
    import statistics
    import time

    import torch

    times = []
    with torch.no_grad():
        fn()
        for _ in range(repeat):
            torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
