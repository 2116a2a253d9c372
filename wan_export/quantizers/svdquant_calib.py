"""What SVDQuant reads from a CALIB file.

`layer_inputs` is the one place SVDQuant reads calibration (through
`wan_export.calibration.calibfile.read_calib`): one Linear's activation sample and
per-channel amax, on demand, so only one layer's sample is in memory at a time.
"""
from __future__ import annotations

import numpy as np


def open_calib(path: str):
    from wan_export.calibration.calibfile import read_calib

    return read_calib(path)


def layer_inputs(calib, name: str, expert: str | None):
    """(sample float32 [S, K] or None, channel amax float32 [K]) of one stock Linear, as torch."""
    import torch

    stats = calib.layer(name, expert)
    sample = stats.get("input_sample")
    return (None if sample is None else torch.from_numpy(np.ascontiguousarray(sample, np.float32)),
            torch.from_numpy(np.ascontiguousarray(stats["input_channel_amax"], np.float32)))


def calib_provenance(calib) -> dict:
    """What the artifact metadata records about the CALIB it was made from."""
    keep = ("format", "source_sha256", "variant", "prompt_set_sha256", "num_prompts", "steps", "size", "frames",
            "guidance", "shift", "seed", "solver", "tool_version", "experts", "activation_rows", "inputs")
    return {k: calib.meta[k] for k in keep if k in calib.meta}
