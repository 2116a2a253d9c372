"""A CALIB file from a few DiT forwards on random inputs (tests, the demo, benchmarks).

`wan-export calibrate` runs the whole sampler over real prompts; this runs the reference DiT on
the validator's fixed random inputs with the same recorder hooks and writes the same file format
(calibration.calibfile), so quantizers can be tested end to end without a pipeline.
"""
from __future__ import annotations

from wan_export.validators.parity import DIT_CASES, dit_inputs


def write_synthetic_calib(src: str, output: str, *, save_activations: int = 64, cases=DIT_CASES,
                          seed: int = 100) -> str:
    """CALIB for every DiT of SRC (A14B: both experts, prefixed) from len(cases) forwards each.

    The default seed differs from the validators' (0, 1), so parity is measured on held-out inputs."""
    import torch

    from wan_export import __version__
    from wan_export.calibration import calibfile
    from wan_export.calibration.recorder import Recorder
    from wan_export.calibration.run import calib_tensors
    from wan_export.calibration.stats import LayerStats, merge_all
    from wan_export.model.dit import load_dit
    from wan_export.release import open_input
    from wan_export.validators.parity import torch_state

    rel = open_input(src)
    dits = {(f"{c.expert}_model" if c.expert else "dit"): (c, load_dit(torch_state(c.table), c.config)) for c in rel.dits.values()}
    recorder = Recorder({s: m for s, (_, m) in dits.items()}, rows_per_call=save_activations)
    total: dict = {}
    with recorder.active(), torch.no_grad():
        for i, case in enumerate(cases):
            recorder.begin_prompt()
            for comp, model in dits.values():
                model(**dit_inputs(comp.config, case, seed=seed + i))
            total = merge_all([total, recorder.end_prompt()])
    for s in total.values():
        if isinstance(s, LayerStats):
            s.thin(save_activations)
    first = next(iter(dits.values()))[0]
    meta = {"source_sha256": "", "variant": first.variant, "layers": recorder.layer_names,
            "prompt_set_sha256": "synthetic", "num_prompts": len(cases), "steps": 1, "size": None,
            "frames": None, "guidance": None, "shift": None, "seed": seed, "solver": "none",
            "tool_version": __version__, "experts": [s for s in dits if s != "dit"]}
    calibfile.write_calib(output, calib_tensors(total, recorder.layer_names), meta)
    return output
