"""The `--quant` step of `wan-export onnx`: checks the request and the CALIB file before
anything is exported, then rewrites each exported DiT graph (onnx_qdq.py) in place.

Without CALIB the graphs are weight-only (FP8 / NVFP4 weights, 16-bit activations: TensorRT
then runs the GEMMs in the graph dtype); with CALIB the activations are quantized too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from wan_export.converters import onnx_qdq as Q
from wan_export.errors import UnsupportedError

ACTIVATIONS = {"fp8": "static per-tensor FP8 at input_amax/448 (CALIB)",
               "nvfp4": "dynamic NVFP4 blocks (trt::TRT_FP4DynamicQuantize) under input_amax/(6*448) (CALIB)"}
WEIGHTS = {"fp8": "FLOAT8E4M3FN per-tensor, scale w_amax/448 (ModelOpt layout)",
           "nvfp4": "FLOAT4E2M1, FLOAT8E4M3FN scales per 16 along K, fp32 global w_amax/(6*448) (ModelOpt layout)"}


QUANT_POLICY = "wan_export.quantizers.policy (block Linears only; first match wins)"


@dataclass
class QuantPlan:
    quant: str
    calib_path: str | None
    calib: object = None
    tables: dict = field(default_factory=dict)

    def check(self, jobs) -> None:
        """Every DiT to export has CALIB statistics for each Linear it quantizes (else one line)."""
        for job in jobs:
            if job.comp.kind == "dit":
                self.layers(job.comp)

    def layers(self, comp) -> list[str]:
        """The Linears (stock names) the quant policy gives this format, checked against CALIB."""
        from wan_export.quantizers.policy import QuantPolicy, resolve

        decisions = resolve(QuantPolicy(self.quant), [(i.name, tuple(i.shape)) for i in comp.table.infos()])
        names = [d.name.removesuffix(".weight") for d in decisions if d.format == self.quant]
        if self.calib is not None:
            self.calib.check_layers(names, _calib_expert(self.calib, comp.expert), self.calib_path)
        return names

    def apply(self, path: str, comp) -> dict:
        """Rewrite the exported graph of DiT component `comp` in place."""
        import onnx

        names = self.layers(comp)
        external = os.path.exists(path + ".data")
        model = onnx.load(path)
        table = Q.quantize_dit_graph(model, self.quant, names, self.calib, _calib_expert(self.calib, comp.expert),
                                     path)
        if external:
            os.remove(path + ".data")
        onnx.save_model(model, path, save_as_external_data=external, all_tensors_to_one_file=True,
                        location=os.path.basename(path) + ".data")
        onnx.checker.check_model(path)
        self.tables[os.path.basename(path)] = table
        return {"quant": self.quant, "qdq_layers": len(table["layers"]), "qdq_attention": len(table["attention"]),
                "opset": Q.OPSET[self.quant]}

    def manifest(self) -> dict:
        meta = self.calib.meta if self.calib is not None else {}
        return {"type": self.quant, "weights": WEIGHTS[self.quant],
                "activations": ACTIVATIONS[self.quant] if self.calib is not None else
                "none (weight-only: no --calib, TensorRT computes the GEMMs in the graph dtype)",
                "calib": None if self.calib is None else {"file": os.path.basename(self.calib_path),
                                                         "source_sha256": meta.get("source_sha256"),
                                                         "variant": meta.get("variant")},
                "policy": QUANT_POLICY, "layers": {k: v["layers"] for k, v in self.tables.items()},
                "attention": {k: v["attention"] for k, v in self.tables.items()}}


def _calib_expert(calib, expert: str | None) -> str | None:
    """A14B CALIB names carry `high_noise_model.` / `low_noise_model.`; a single DiT has none."""
    if calib is None or not expert or not calib.experts:
        return None
    return f"{expert}_model"


def prepare(quant: str | None, calib: str | None, exporter: str, dtype: str) -> QuantPlan | None:
    if quant is None:
        if calib:
            raise UnsupportedError("--calib needs --quant fp8 or nvfp4")
        return None
    if quant not in Q.QUANTS:
        raise UnsupportedError(f"unknown --quant {quant!r} (choose from {', '.join(Q.QUANTS)})")
    if exporter != "dynamo":
        raise UnsupportedError("--quant needs the dynamo exporter (its graphs keep the stock weight names)")
    reader = None
    if calib:
        from wan_export.calibration.calibfile import read_calib

        reader = read_calib(calib)
    return QuantPlan(quant, calib, reader)
