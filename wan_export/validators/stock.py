"""Back-loader for official-layout release folders (what `wan-export stock` writes).

The folder is read as any release (release.open_input: DiT shards or A14B
experts, VAE, UMT5); each DiT and VAE runs through the reference model on the
artifact's weights and the source's, with the per-dtype tolerance of the cast.
"""
from __future__ import annotations

import os

from wan_export.errors import BadInputError
from wan_export.validators.report import Report

STOCK_CLASSES = ("WanModel", "VaceWanModel")


def is_stock_release(path: str) -> bool:
    """A folder whose DiT config.json (or an A14B expert's) is the official WanModel one."""
    from wan_export.release import read_json

    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "model_index.json")):
        return False
    configs = [os.path.join(path, "config.json")] + [os.path.join(path, f"{e}_model", "config.json")
                                                    for e in ("high_noise", "low_noise")]
    return any(os.path.isfile(c) and read_json(c).get("_class_name") in STOCK_CLASSES for c in configs)


def validate_stock(path: str, against: str, **options) -> Report:
    from wan_export.release import open_input
    from wan_export.validators.comfyui import _art_dtypes, tolerance_for
    from wan_export.validators.parity import check_dit, check_vae, torch_state

    art, src = open_input(path), open_input(against)
    report = Report(str(path), str(against), "stock")
    for slot, comp in sorted(art.components.items()):
        ref = src.components.get(slot)
        if ref is None or comp.kind not in ("dit", "vae"):
            report.info[slot] = "not compared" if ref is None else f"{comp.kind}: read back, not run"
            continue
        if ref.config != comp.config:
            raise BadInputError(f"{slot}: the artifact's config differs from the source's", path)
        tol, how = tolerance_for(ref.table, _art_dtypes(comp.table), comp.kind)
        report.info[f"{slot} tolerance"] = how
        check = check_dit if comp.kind == "dit" else check_vae
        check(report, torch_state(ref.table), torch_state(comp.table), comp.config, tol, label=slot)
    return report
