"""Sizing and cost model of the Wan pipeline: FLOPs by op class, bytes and roofline time per stage.

`run_cost(...)` is what `wan-export cost` calls: it resolves the model (any input
`inspect` takes, or a variant name), the format and the GPU, and returns the
report dict of `pipeline.estimate`. Modules: ops (op classes), transformer_flops / vae
(analytic FLOPs, exact against FlopCounterMode), schedule (A14B expert steps),
formats (weight bytes), gpus (datasheet table), roofline, pipeline, render, svg.
"""
from __future__ import annotations

from wan_export.errors import BadInputError


def parse_size(size: str) -> tuple[int, int]:
    try:
        w, h = (int(x) for x in str(size).lower().split("x"))
    except ValueError:
        raise BadInputError(f"--size {size!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from None
    return w, h


def resolve_gpu(gpu: str | None, peak_tflops: float | None, bandwidth: float | None,
                memory_gb: float | None = None):
    from wan_export.cost.gpus import custom_gpu, get_gpu

    if (peak_tflops is None) != (bandwidth is None):
        raise BadInputError("--peak-tflops and --bandwidth go together")
    if peak_tflops is not None:
        if gpu:
            raise BadInputError("give --gpu or --peak-tflops/--bandwidth, not both")
        return custom_gpu(peak_tflops, bandwidth, memory_gb or 0.0)
    return get_gpu(gpu or "H100")


def run_cost(src: str | None = None, variant: str | None = None, *, size: str | None = None,
             frames: int | None = None, steps: int | None = None, cfg: bool = True, batch: int = 1,
             fmt: str = "bf16", gpu: str | None = None, peak_tflops: float | None = None,
             bandwidth: float | None = None, gpus: int = 1, parallel: str = "sequence",
             shift: float | None = None, plot: str | None = None) -> dict:
    """The cost report of one generation; defaults are the variant's official settings.

    plot: also write the stage breakdown over sizes and frame counts to this .svg file.
    """
    from dataclasses import replace

    from wan_export.cost import formats
    from wan_export.cost.pipeline import TRAINED, TRAINED_DEFAULT, Request, estimate, model_from_source, \
        model_from_variant

    if bool(src) == bool(variant):
        raise BadInputError("give SRC or --variant (one of them)")
    if plot and not plot.lower().endswith(".svg"):
        raise BadInputError("--plot writes SVG: give a .svg file name", plot)
    fmt_ = formats.get_format(fmt)
    gpu_ = resolve_gpu(gpu, peak_tflops, bandwidth)
    m = model_from_source(src) if src else model_from_variant(variant)
    tw, th, tf = TRAINED.get(m.variant.name, TRAINED_DEFAULT)
    w, h = parse_size(size) if size else (tw, th)
    r = Request(w, h, frames or tf, steps or m.variant.steps, cfg, batch, fmt_, gpu_,
                m.variant.flow_shift if shift is None else shift, gpus, parallel)
    report = estimate(m, r)
    if plot:
        from wan_export.cost.svg import plot as write_plot

        def at(width: int, height: int, n: int) -> dict:
            return estimate(m, replace(r, width=width, height=height, frames=n))

        write_plot(plot, at, report, m.vae.spatial_stride * m.dit.patch_size[1])
        report["plot"] = plot
    return report
