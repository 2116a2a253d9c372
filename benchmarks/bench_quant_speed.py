"""Quantizer throughput per core and streaming peak RSS of `comfyui --quant`.

1. MB of bf16 input per CPU second (`time.process_time`, one thread, best of N) for each quantizer
   on a 14B ffn.0-shaped matrix (13824 x 5120), against a `clone()` anchor in the same run.
2. Peak RSS of `wan-export comfyui --component dit --quant fp8|nvfp4` (subprocess, ru_maxrss)
   on 1.3B-shaped DiT files of growing block count: flat in model size means streaming.

    python benchmarks/bench_quant_speed.py [--blocks 2,8] [--repeat 3]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import torch


def throughput(repeat: int) -> list[dict]:
    from wan_export.quantizers.fp8 import FP8Config, FP8Quantizer
    from wan_export.quantizers.mxfp8 import MXFP8Quantizer
    from wan_export.quantizers.nvfp4 import NVFP4Config, NVFP4Quantizer

    torch.set_num_threads(1)
    w = (torch.randn(13824, 5120) * 0.02).bfloat16()
    mb = w.numel() * 2 / 1e6
    cases = (("clone (anchor)", lambda: w.clone()),
             ("fp8 e4m3fn (comfy)", lambda: FP8Quantizer().quantize(w)),
             ("fp8 e4m3fn (modelopt, per-channel)", lambda: FP8Quantizer(FP8Config("channel", "modelopt")).quantize(w)),
             ("nvfp4 nearest (comfy)", lambda: NVFP4Quantizer().quantize(w)),
             ("nvfp4 nearest (modelopt)", lambda: NVFP4Quantizer(NVFP4Config("modelopt")).quantize(w)),
             ("mxfp8", lambda: MXFP8Quantizer().quantize(w)))
    rows = []
    for label, fn in cases:
        fn()
        best = min(_cpu(fn) for _ in range(repeat))
        rows.append({"quantizer": label, "mb_per_cpu_s": round(mb / best, 1)})
    anchor = rows[0]["mb_per_cpu_s"]
    for r in rows:
        r["vs_anchor"] = round(r["mb_per_cpu_s"] / anchor, 3)
    return rows


def _cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def peak_rss(blocks: list[int]) -> list[dict]:
    from wan_export.model.config import DiTConfig
    from wan_export.synthetic import dit_state, write_safetensors

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in blocks:
            src = write_safetensors(os.path.join(tmp, f"dit{n}.safetensors"),
                                    dit_state(replace(DiTConfig(), num_layers=n), 0, "BF16"))
            for quant in ("fp8", "nvfp4"):
                out = os.path.join(tmp, f"out{n}{quant}")
                code = ("import resource, sys; from wan_export.cli import main; sys.argv = sys.argv[1:]; "
                        "main()")
                t = time.perf_counter()
                before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
                p = subprocess.run([sys.executable, "-c", code, "wan-export", "comfyui", src, "--component", "dit",
                                    "--quant", quant, "-o", out, "-q"], capture_output=True, text=True)
                if p.returncode:
                    raise SystemExit(p.stderr)
                usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                rows.append({"blocks": n, "quant": quant, "source_mb": round(os.path.getsize(src) / 1e6),
                             "peak_rss_mb": round(usage.ru_maxrss / 1024),
                             "cpu_s": round(usage.ru_utime - before, 1), "wall_s": round(time.perf_counter() - t, 1)})
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="2,8")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-rss", action="store_true")
    args = ap.parse_args()
    print("| quantizer | MB/s of bf16 per CPU second | vs clone |\n|---|---|---|")
    for r in throughput(args.repeat):
        print(f"| {r['quantizer']} | {r['mb_per_cpu_s']} | {r['vs_anchor']} |", flush=True)
    if not args.skip_rss:
        # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: blocks run in increasing order
        peak_rss(sorted(int(b) for b in args.blocks.split(",")))


if __name__ == "__main__":
    main()
