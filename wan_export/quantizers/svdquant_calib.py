"""What SVDQuant reads from a CALIB file, and a small CALIB maker for tests and the demo.

`layer_inputs` is the one place SVDQuant reads calibration (through the lead's
`wan_export.calibration.calibfile.read_calib`): one Linear's activation sample and
per-channel amax, on demand, so only one layer's sample is in memory at a time.
`write_random_calib` runs the reference DiT(s) of a (tiny) release on a few random
inputs with the calibration recorder's hooks and writes a CALIB with activation
samples: a stand-in for `wan-export calibrate` where no sampler run is wanted.
"""
from __future__ import annotations

import hashlib

import numpy as np

# stock DiT slot -> CALIB expert prefix
EXPERT_PREFIX = {"dit": None, "dit.high_noise": "high_noise_model", "dit.low_noise": "low_noise_model"}


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


def _source_digest(rel) -> str:
    h = hashlib.sha256()
    for slot, comp in sorted(rel.dits.items()):
        for info in sorted(comp.table.infos(), key=lambda i: i.name):
            h.update(f"{slot}\0{info.name}\0{info.dtype}\0{list(info.shape)}\0".encode())
            h.update(memoryview(np.ascontiguousarray(comp.table.read(info.name)).reshape(-1).view(np.uint8)))
    return h.hexdigest()


def write_random_calib(src: str, output: str, *, rows: int = 128, seed: int = 0, calls: int = 2) -> str:
    """CALIB for SRC's DiT(s) from `calls` random reference forwards, `rows` sampled rows per Linear."""
    import torch

    from wan_export.calibration import calibfile
    from wan_export.calibration.recorder import Recorder
    from wan_export.calibration.run import calib_tensors
    from wan_export.calibration.stats import LayerStats
    from wan_export.model.dit import load_dit
    from wan_export.release import open_input
    from wan_export.validators.parity import DiTCase, dit_inputs, torch_state

    rel = open_input(src)
    slots = {EXPERT_PREFIX[s] or "dit": c for s, c in sorted(rel.dits.items())}
    dits = {slot: load_dit(torch_state(c.table), c.config) for slot, c in slots.items()}
    cfg = next(iter(slots.values())).config
    case = DiTCase(1, 2, 4, 6, 512 if cfg.image_branch else 24)
    recorder = Recorder(dits, rows_per_call=rows, attention=True)
    with recorder.active(), torch.no_grad():
        recorder.begin_prompt()
        for i in range(calls):
            for dit in dits.values():
                dit(**dit_inputs(cfg, case, seed=seed + i))
        total = recorder.end_prompt()
    for s in total.values():
        if isinstance(s, LayerStats):
            s.thin(rows)
    meta = {"source_sha256": _source_digest(rel), "variant": rel.variant.name if rel.variant else None,
            "layers": recorder.layer_names, "num_prompts": 0, "steps": calls, "seed": seed,
            "inputs": f"random DiT inputs ({calls} forwards of {case.label})",
            "experts": [s for s in dits if s != "dit"], "activation_rows": rows}
    calibfile.write_calib(output, calib_tensors(total, recorder.layer_names), meta)
    return output
