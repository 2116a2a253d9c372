"""Model-output parity: run the reference PyTorch model on the source weights and
on an artifact's weights (mapped back to stock names) with fixed inputs.

Every back-loader ends here, so "same outputs" means the same thing for
ComfyUI files, diffusers folders and dequantized GGUF alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from wan_export.model.config import DiTConfig, VAEConfig
from wan_export.validators.metrics import compare
from wan_export.validators.report import Report, Tolerance

# Tolerances for comparing the same model at two weight dtypes (output rel-L2 / cosine),
# measured on the tiny synthetic models in tests/validators; identical weights must give 0.
WEIGHT_DTYPE_TOLERANCE = {
    "exact": Tolerance(max_abs=0.0),
    "F32": Tolerance(max_rel_l2=1e-6, min_cosine=0.999999),
    "F16": Tolerance(max_rel_l2=5e-3, min_cosine=0.9999),
    "BF16": Tolerance(max_rel_l2=3e-2, min_cosine=0.999),
    "F8_E4M3": Tolerance(max_rel_l2=1.5e-1, min_cosine=0.99),
}


@dataclass(frozen=True)
class DiTCase:
    """One fixed DiT input: batch, latent frames/height/width, text tokens."""

    batch: int
    frames: int
    height: int
    width: int
    text_len: int

    @property
    def label(self) -> str:
        return f"B={self.batch} F={self.frames} {self.height}x{self.width} L={self.text_len}"


DIT_CASES = (DiTCase(1, 1, 4, 4, 16), DiTCase(2, 3, 6, 8, 24))


def torch_state(table, names=None, dtype: str = "F32") -> dict:
    """Read stock-named tensors from a lazy table into torch tensors (float -> dtype)."""
    from wan_export.dtypes import FLOAT_CODES, cast, to_torch

    out = {}
    for info in table.infos():
        if names is not None and info.name not in names:
            continue
        arr = table.read(info.name)
        out[info.name] = to_torch(np.array(cast(arr, dtype) if info.dtype in FLOAT_CODES else arr))
    return out


def dit_inputs(cfg: DiTConfig, case: DiTCase, seed: int = 0) -> dict:
    """Deterministic DiT inputs; TI2V gets per-token timesteps with t=0 on the first frame."""
    import torch

    g = torch.Generator().manual_seed(seed)
    b, f, h, w = case.batch, case.frames, case.height, case.width
    inputs = {
        "latents": torch.randn(b, cfg.in_dim, f, h, w, generator=g),
        "timestep": torch.rand(b, generator=g) * 1000,
        "context": torch.randn(b, case.text_len, cfg.text_dim, generator=g),
    }
    if cfg.model_type == "ti2v":
        tokens = f * (h // cfg.patch_size[1]) * (w // cfg.patch_size[2])
        t = inputs["timestep"][:, None].expand(b, tokens).clone()
        t[:, : tokens // f] = 0.0
        inputs["timestep"] = t
    if cfg.image_branch:
        inputs["clip_features"] = torch.randn(b, cfg.clip_tokens, cfg.clip_dim, generator=g)
    if cfg.vace_layers:
        inputs["vace_context"] = torch.randn(b, cfg.vace_in_dim, f, h, w, generator=g)
    return inputs


def dit_outputs(weights: Mapping, cfg: DiTConfig, cases=DIT_CASES) -> list:
    import torch

    from wan_export.model.dit import load_dit

    model = load_dit(weights, cfg, dtype=torch.float32)
    with torch.no_grad():
        return [model(**dit_inputs(cfg, c, seed=i)) for i, c in enumerate(cases)]


def check_dit(report: Report, ref: Mapping, art: Mapping, cfg: DiTConfig, tolerance: Tolerance,
              label: str = "dit", cases=DIT_CASES, ref_outputs=None) -> list:
    """Add one check per case comparing reference-model outputs on two weight sets."""
    ref_out = ref_outputs if ref_outputs is not None else dit_outputs(ref, cfg, cases)
    art_out = dit_outputs(art, cfg, cases)
    for case, r, a in zip(cases, ref_out, art_out):
        report.add(f"{label} output {case.label}", compare(r, a), tolerance)
    return ref_out


VAE_CASES = ((1, 16, 16), (5, 16, 24))      # (frames, height, width) in pixels


def check_vae(report: Report, ref: Mapping, art: Mapping, cfg: VAEConfig, tolerance: Tolerance,
              label: str = "vae", cases=VAE_CASES) -> None:
    """Encode and decode fixed videos with both weight sets; one check each."""
    import torch

    from wan_export.model.vae import load_vae

    models = [load_vae(w, cfg, dtype=torch.float32) for w in (ref, art)]
    s = cfg.spatial_stride
    g = torch.Generator().manual_seed(0)
    for frames, h, w in cases:
        h, w = max(h, s), max(w, s)
        h, w = h - h % s, w - w % s
        video = torch.rand(1, 3, frames, h, w, generator=g) * 2 - 1
        with torch.no_grad():
            mus = [m.encode(video) for m in models]
            report.add(f"{label} encode T={frames} {h}x{w}", compare(mus[0], mus[1]), tolerance)
            decs = [m.decode(mus[0]) for m in models]
            report.add(f"{label} decode T={frames} {h}x{w}", compare(decs[0], decs[1]), tolerance)


def tensor_table(ref_table, art: Mapping, names=None) -> list[dict]:
    """Per-tensor error rows (artifact vs source), for reports of lossy formats."""
    from wan_export.dtypes import cast

    rows = []
    for info in ref_table.infos():
        if info.name not in art or (names is not None and info.name not in names):
            continue
        r = cast(ref_table.read(info.name), "F32")
        a = art[info.name]
        a = a.detach().float().numpy() if hasattr(a, "detach") else np.asarray(a, np.float32)
        m = compare(r, a)
        rows.append({"tensor": info.name, "rel_l2": m["rel_l2"], "max_abs": m["max_abs"],
                     "cosine": m["cosine"]})
    return rows
