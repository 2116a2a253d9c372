"""CALIB as an importance matrix: for `gguf --imatrix CALIB.safetensors`, and llama.cpp's imatrix GGUF.

importance(L.weight) = L.input_sum2 / L.input_count, the mean squared input of each
column, which is what llama-imatrix computes. `write_imatrix_gguf` writes the same
numbers in llama.cpp's current imatrix layout (`<tensor>.in_sum2` F32 [in_features],
`<tensor>.counts` F32 [1], `general.type = "imatrix"`) for sd.cpp and llama.cpp tools;
A14B experts get sd.cpp's names (`model.diffusion_model.` / `model.high_noise_diffusion_model.`).
"""
from __future__ import annotations

import numpy as np

from wan_export.calibration.calibfile import Calib

SDCPP_PREFIX = {None: "", "low_noise_model": "model.diffusion_model.",
                "high_noise_model": "model.high_noise_diffusion_model."}


def expert_slot(expert: str | None) -> str | None:
    """Component.expert ('high_noise') -> CALIB prefix slot ('high_noise_model')."""
    return None if not expert else (expert if expert.endswith("_model") else f"{expert}_model")


def needed_layers(shapes: dict[str, tuple]) -> list[str]:
    """Block Linears of a DiT (stock weight names without `.weight`), from its shapes."""
    return [n[:-len(".weight")] for n, s in shapes.items()
            if n.endswith(".weight") and len(s) == 2 and n.startswith(("blocks.", "vace_blocks."))]


def importance(calib: Calib, shapes: dict[str, tuple], expert: str | None, path: str) -> dict[str, np.ndarray]:
    """stock weight name -> float32 [in_features]; every block Linear must be covered."""
    slot = expert_slot(expert)
    layers = needed_layers(shapes)
    calib.check_layers(layers, slot, path)
    out = {}
    for name in layers:
        st = calib.layer(name, slot)
        out[f"{name}.weight"] = (st["input_sum2"].astype(np.float64) / max(int(st["input_count"]), 1)).astype(np.float32)
    return out


def write_imatrix_gguf(path: str, entries: list[tuple[str, np.ndarray, int]], datasets: list[str],
                       chunk_count: int, chunk_size: int) -> None:
    """entries: (tensor name as the consumer names it, float32 sum of squares, count)."""
    import gguf

    from wan_export.atomic import atomic_path

    with atomic_path(path, overwrite=True) as tmp:     # gguf-py writes by name
        w = gguf.GGUFWriter(tmp, arch="imatrix")
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", datasets)
        w.add_uint32("imatrix.chunk_count", chunk_count)
        w.add_uint32("imatrix.chunk_size", chunk_size)
        for name, sums, count in entries:
            w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(sums, dtype=np.float32).reshape(1, -1))
            w.add_tensor(f"{name}.counts", np.array([[float(count)]], dtype=np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
