"""A real CALIB file for a tiny DiT: the calibration recorder's hooks on the reference model,
run on the ONNX validation inputs, written with the CALIB writer (wan_export.calibration)."""
from __future__ import annotations

import torch

from wan_export.calibration.calibfile import attention_tensors, layer_tensors, write_calib
from wan_export.calibration.recorder import Recorder
from wan_export.calibration.stats import AttentionStats, merge_all
from wan_export.converters import onnx_specs as S


def make_calib(model, cfg, path: str, attention: bool = True, seeds=(100, 101, 102)) -> str:
    """Record every block Linear's inputs (and attention) over the validation grid; write CALIB."""
    spec = S.dit_spec(cfg)
    rec = Recorder({"dit": model}, attention=attention)
    parts = []
    with rec.active(), torch.no_grad():
        for seed, sizes in zip(seeds, spec.grid):
            x = S.make_inputs(spec, sizes, seed=seed)
            t = x["timestep"]
            if t.dim() == 2:
                t = t.repeat_interleave(sizes["hh"] * sizes["ww"], dim=1)
            rec.begin_prompt()
            model(x["latents"], t, x["context"], x.get("clip_features"), x.get("vace_context"),
                  x.get("vace_scale", 1.0))
            parts.append(rec.end_prompt())
    stats = merge_all(parts)
    tensors = []
    for name, s in sorted(stats.items()):
        tensors += attention_tensors(name, s) if isinstance(s, AttentionStats) else layer_tensors(name, s)
    write_calib(path, tensors, {"variant": cfg.model_type, "source_sha256": "test", "layers": sorted(
        n for n, s in stats.items() if not isinstance(s, AttentionStats))})
    return path
