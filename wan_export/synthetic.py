"""Tiny, architecture-faithful synthetic Wan weights: the one fixture factory.

Used by the test suite and by `wan-export demo`. Tiny DiTs keep dim 256 (two
heads of 128, which ComfyUI assumes) and text_dim 4096. Weights are random but
well-scaled (fan-in init, norms near 1) so parity tests are not vacuous.
Deterministic: the same seed gives the same bytes.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import replace

import numpy as np

from wan_export.dtypes import ST_TO_NP
from wan_export.model.config import DiTConfig
from wan_export.variants import VARIANTS, dit_shapes

TINY_DIM, TINY_FFN, TINY_LAYERS = 256, 512, 2


def tiny_dit_config(variant: str) -> DiTConfig:
    """The released variant's config shrunk to dim 256, 2 heads, 2 layers (VACE: hints on both)."""
    c = VARIANTS[variant].config
    vace = (0, 1) if c.vace_layers else ()
    return replace(c, dim=TINY_DIM, ffn_dim=TINY_FFN, num_heads=TINY_DIM // 128,
                   num_layers=TINY_LAYERS, vace_layers=vace)


def _init(name: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if name.endswith("modulation"):
        return rng.standard_normal(shape) * 0.1
    if name.endswith("emb_pos"):
        return rng.standard_normal(shape) * 0.05
    if len(shape) == 1:
        if ("norm" in name or "gamma" in name) and name.endswith(("weight", "gamma")):
            return 1.0 + 0.1 * rng.standard_normal(shape)
        return 0.02 * rng.standard_normal(shape)
    fan_in = math.prod(shape[1:]) or 1
    if "gamma" in name:
        return 1.0 + 0.1 * rng.standard_normal(shape)
    return rng.standard_normal(shape) / math.sqrt(fan_in)


def random_state(shapes: dict[str, tuple], seed: int = 0, dtype: str = "F32") -> dict[str, np.ndarray]:
    """Random weights for a key -> shape table; each tensor seeded by (seed, name)."""
    out = {}
    for name, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        out[name] = _init(name, tuple(shape), rng).astype(np.float32).astype(ST_TO_NP[dtype])
    return out


def dit_state(cfg: DiTConfig, seed: int = 0, dtype: str = "F32") -> dict[str, np.ndarray]:
    return random_state(dit_shapes(cfg), seed, dtype)


def write_safetensors(path: str, state: dict[str, np.ndarray], metadata: dict | None = None) -> str:
    """Write a small in-memory state dict with our streaming writer."""
    from wan_export.dtypes import st_code
    from wan_export.safetensors_io import SafetensorsWriter, TensorInfo

    infos = [TensorInfo(k, tuple(v.shape), st_code(v)) for k, v in state.items()]
    with SafetensorsWriter(path, infos, metadata) as w:
        for k, v in state.items():
            w.write(k, v)
    return path
