"""Calibration benchmark: hook overhead against a plain forward, and calibrate throughput.

1. Hook overhead: DiT blocks of Wan2.1-T2V-1.3B shape (dim 1536, ffn 8960, 12 heads;
   --layers of them, fp32, random weights) at a 480x832 single-frame latent (390 video
   tokens, 512 text tokens); forward with the Recorder active vs plain, alternated, min
   of --repeats. The ratio is per block, so fewer layers than 30 give the same figure.
2. Throughput: `wan-export calibrate` on the tiny T2V release (dim 256) and on a
   release whose DiT has the full 1.3B shape (bf16 file, tiny VAE/UMT5, since the
   DiT is what calibration measures), small latents, in one process each.

    python benchmarks/bench_calibrate.py [--layers 4] [--repeats 3] [--skip-1p3b]
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
from dataclasses import replace

import torch

from wan_export import synthetic
from wan_export.calibration.recorder import Recorder
from wan_export.model.dit import WanDiT
from wan_export.variants import VARIANTS


def dit_1p3b(layers: int) -> tuple[WanDiT, object]:
    cfg = replace(VARIANTS["wan2.1-t2v-1.3b"].config, num_layers=layers)
    torch.manual_seed(0)
    with torch.no_grad():
        dit = WanDiT(cfg).eval()
        for p in dit.parameters():
            p.normal_(0, 0.02)
    return dit, cfg


def hook_overhead(layers: int, repeats: int) -> dict:
    dit, cfg = dit_1p3b(layers)
    x = {"latents": torch.randn(1, 16, 1, 60, 104), "timestep": torch.tensor([500.0]),
         "context": torch.randn(1, 512, 4096)}
    plain, hooked = [], []
    rec = Recorder({"dit": dit})
    with torch.no_grad(), rec.active():
        for _ in range(repeats):
            rec.current = None                           # hooks installed but idle: plain cost
            t0 = time.perf_counter()
            dit(**x)
            plain.append(time.perf_counter() - t0)
            rec.begin_prompt()
            t0 = time.perf_counter()
            dit(**x)
            hooked.append(time.perf_counter() - t0)
            rec.end_prompt()
    return {"layers": layers, "plain_s": min(plain), "hooked_s": min(hooked),
            "overhead": min(hooked) / min(plain) - 1}


def run_calibrate(src: str, out: str, *args: str) -> dict:
    cmd = [sys.executable, "-m", "wan_export", "calibrate", src, "-o", out, "--overwrite", "--json", "-q", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def release_1p3b(folder: str, tiny: str) -> str:
    """Full 1.3B-shaped bf16 DiT beside the tiny release's VAE, UMT5 and tokenizer."""
    synthetic.write_dit_folder(folder, VARIANTS["wan2.1-t2v-1.3b"].config, dtype="BF16", shards=1)
    for name in os.listdir(tiny):
        if not name.startswith(synthetic.DIT_STEM) and name != "config.json":
            src = os.path.join(tiny, name)
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, os.path.join(folder, name))
    return folder


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-1p3b", action="store_true")
    a = ap.parse_args()
    o = hook_overhead(a.layers, a.repeats)
    print(f"hook overhead, 1.3B-shaped blocks x{o['layers']} @ 390+512 tokens: plain {o['plain_s']:.3f} s, "
          f"hooked {o['hooked_s']:.3f} s, +{100 * o['overhead']:.1f}%")
    with tempfile.TemporaryDirectory() as d:
        tiny = synthetic.write_release(os.path.join(d, "tiny"), "wan2.1-t2v-1.3b")
        rows = [("tiny (dim 256, 2 layers)", run_calibrate(tiny, os.path.join(d, "t.safetensors"), "--num-prompts",
                                                            "4", "--steps", "10", "--size", "128x128", "--frames", "9"),
                 "4 prompts x 10 steps, 128x128x9")]
        if not a.skip_1p3b:
            big = release_1p3b(os.path.join(d, "big"), tiny)
            rows.append(("Wan2.1-T2V-1.3B shape", run_calibrate(big, os.path.join(d, "b.safetensors"), "--num-prompts",
                                                                 "1", "--steps", "2", "--size", "256x256",
                                                                 "--frames", "1"), "1 prompt x 2 steps, 256x256x1"))
    print("| model | run | DiT forwards | s | forwards/s | s/prompt |\n|---|---|---|---|---|---|")
    for name, r, what in rows:
        print(f"| {name} | {what} | {r['dit_forwards']} | {r['seconds']:.1f} | {r['forwards_per_second']:.2f} | "
              f"{r['seconds'] / r['prompts']:.1f} |")


if __name__ == "__main__":
    main()
