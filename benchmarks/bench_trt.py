"""Benchmark TensorRT-RTX plan builds (not a test): build time, peak RSS and plan size.

A Wan2.1-T2V-1.3B-shaped DiT (dim 1536, ffn 8960, 12 heads, text 4096; `--layers` of its 30
blocks, default all) is written as an fp32 checkpoint of random weights, exported once to fp16
ONNX (dynamo), rewritten to FP8 and NVFP4 Q/DQ graphs (weight-only: the build cost does not
depend on the scales), and built, each in a fresh child process so peak RSS is its own:

    fp16 SM86+SM89, bf16 SM86+SM89, FP8 SM89, NVFP4 SM120 at the 480p profile (batch 1-2,
    text 512), and the Wan2.1 VAE decoder first/step graphs (full-size VAE) at 480p.

    python benchmarks/bench_trt.py [--dir DIR] [--layers 30] [--keep]

Peak RSS is each child's own ru_maxrss. The machine's load changes wall time, so the
figures are given together with the ONNX export of the same graph in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILDS = (("fp16", "sm86,sm89"), ("bf16", "sm86,sm89"), ("fp8", "sm89"), ("nvfp4", "sm120"))


_CHILD = ("import resource, sys\n"
          "from wan_export.cli import main\n"
          "try:\n    main(sys.argv[2:])\n"
          "finally:\n    open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))\n")


def child(args: list[str]) -> dict:
    """Run the CLI in a fresh child; wall seconds and that child's own peak RSS (ru_maxrss)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", _CHILD, rss.name, *args], check=True, cwd=HERE,
                       env={**os.environ, "PYTHONPATH": HERE}, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - t
        peak = int(open(rss.name).read())
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(peak / 1024)}


def write_release(folder: str, layers: int) -> None:
    """1.3B-shaped DiT (fp32, random, `layers` blocks) + the full-size Wan2.1 VAE."""
    from dataclasses import replace

    from wan_export import synthetic
    from wan_export.variants import VARIANTS

    cfg = replace(VARIANTS["wan2.1-t2v-1.3b"].config, num_layers=layers)
    os.makedirs(folder, exist_ok=True)
    synthetic.write_safetensors(os.path.join(folder, "dit.safetensors"), synthetic.dit_state(cfg, 0, "F32"))
    from wan_export.model.config import VAEConfig

    vae = synthetic.vae_state(VAEConfig(version="2.1"), 0)
    synthetic.write_safetensors(os.path.join(folder, "vae.safetensors"), vae)


def quant_copy(src: str, dest: str, quant: str, dit: str) -> None:
    from wan_export.components import load_component
    from wan_export.converters.onnx_quant import Q, prepare

    shutil.copytree(src, dest)
    plan = prepare(quant, None, "dynamo", "fp16")
    mpath = os.path.join(dest, "wan_onnx.json")
    manifest = json.load(open(mpath))
    manifest["graphs"][0].update(plan.apply(os.path.join(dest, "transformer.onnx"), load_component(dit)))
    manifest["quant"], manifest["opset"] = plan.manifest(), Q.OPSET[quant]
    json.dump(manifest, open(mpath, "w"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=None)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--skip-vae", action="store_true")
    a = ap.parse_args()
    sys.path.insert(0, HERE)
    work = a.dir or tempfile.mkdtemp(prefix="bench-trt-")
    rows = []
    try:
        write_release(work, a.layers)
        dit = os.path.join(work, "dit.safetensors")
        onnx = {d: os.path.join(work, f"onnx-{d}") for d in ("fp16", "bf16")}
        for d in onnx:
            r = child(["onnx", dit, "--dtype", d, "-o", onnx[d], "-q", "--overwrite"])
            rows.append({"step": f"onnx export DiT {d}", **r})
        for q in ("fp8", "nvfp4"):
            onnx[q] = os.path.join(work, f"onnx-{q}")
            shutil.rmtree(onnx[q], ignore_errors=True)
            quant_copy(onnx["fp16"], onnx[q], q, dit)
        for precision, target in BUILDS:
            out = os.path.join(work, f"trt-{precision}")
            r = child(["trt", onnx[precision], "-o", out, "--target", target, "-q", "--overwrite"])
            plan = json.load(open(os.path.join(out, "trt.json")))["plans"][0]
            rows.append({"step": f"build DiT {precision} {target}", **r, "plan_mib": round(plan["plan_bytes"] / 2**20, 1),
                         "builder_s": plan["build"]["seconds"]})
        if not a.skip_vae:
            out = os.path.join(work, "trt-vae")
            r = child(["trt", os.path.join(work, "vae.safetensors"), "--component", "vae-decoder", "-o", out,
                       "--target", "sm86", "--batch", "1", "--exporter", "legacy", "-q", "--overwrite"])
            for p in json.load(open(os.path.join(out, "trt.json")))["plans"]:
                rows.append({"step": f"build {p['graph']} fp16 sm86 (wall: export + both builds)", **r,
                             "plan_mib": round(p["plan_bytes"] / 2**20, 1), "builder_s": p["build"]["seconds"]})
        print(json.dumps({"layers": a.layers, "rows": rows}, indent=2))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
