"""Quantizer throughput per core and streaming peak RSS of `comfyui --quant`.

1. MB of bf16 input per CPU second (`time.process_time`, one thread, best of N) for each quantizer
   on a 14B ffn.0-shaped matrix (13824 x 5120), against a `clone()` anchor in the same run.
2. Peak RSS (the child's own VmHWM) of `wan-export comfyui|diffusers --quant fp8|nvfp4`
   on 14B-shaped bf16 DiT files of growing block count, streamed from one repeated random block
   (bench_convert.write_source): flat in model size means streaming.

    python benchmarks/bench_quant_speed.py [--shape 14B] [--blocks 2,8] [--writers comfyui,diffusers] [--repeat 3]
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import torch

from wan_export.model.config import DiTConfig
from wan_export.variants import dit_shapes

sys.path.insert(0, os.path.dirname(__file__))
from bench_convert import write_source  # noqa: E402


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


# The child reports its own high-water mark: ru_maxrss of RUSAGE_CHILDREN would inherit the
# parent's at exec, so a parent that built the source in memory would inflate every row.
_CHILD = ("import atexit, sys\n"
          "def _hwm():\n"
          "    for line in open('/proc/self/status'):\n"
          "        if line.startswith(('VmHWM', 'RssAnon', 'RssFile')): sys.stderr.write('@' + line)\n"
          "atexit.register(_hwm)\n"
          "from wan_export.cli import main; sys.argv = sys.argv[1:]; main()")

SHAPES = {"1.3B": dict(dim=1536, ffn_dim=8960, num_heads=12),
          "14B": dict(dim=5120, ffn_dim=13824, num_heads=40)}


WRITERS = {"comfyui": ["comfyui", "--component", "dit"], "diffusers": ["diffusers"]}


def peak_rss(shape: str, blocks: list[int], quants: list[str], writers: list[str], tmp: str) -> list[dict]:
    rows = []
    for n in blocks:
        src = os.path.join(tmp, f"dit-{shape}-{n}.safetensors")
        write_source(src, dit_shapes(DiTConfig(num_layers=n, **SHAPES[shape])))
        for writer, quant in ((w, q) for w in writers for q in quants):
            out = os.path.join(tmp, f"out-{writer}-{quant}")
            t = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            p = subprocess.run([sys.executable, "-c", _CHILD, "wan-export", *WRITERS[writer], src,
                                "--quant", quant, "-o", out, "-q"], capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(p.stderr)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            mem = {line[1:].split(":")[0]: int(line.split()[1]) // 1024
                   for line in p.stderr.splitlines() if line.startswith("@")}
            src_mb = os.path.getsize(src) / 1e6
            cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            rows.append({"shape": shape, "blocks": n, "writer": writer, "quant": quant, "source_mb": round(src_mb),
                         "peak_rss_mb": mem["VmHWM"], "rss_anon_at_exit_mb": mem["RssAnon"],
                         "cpu_s": round(cpu, 1), "wall_s": round(time.perf_counter() - t, 1),
                         "mb_per_cpu_s": round(src_mb / cpu, 1)})
            print(rows[-1], flush=True)
            shutil.rmtree(out)
        os.remove(src)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="2,8")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="14B")
    ap.add_argument("--quants", default="fp8,nvfp4")
    ap.add_argument("--writers", default="comfyui,diffusers")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--tmp", help="folder for the generated sources (default: a temporary one)")
    args = ap.parse_args()
    if not args.skip_throughput:
        print("| quantizer | MB/s of bf16 per CPU second | vs clone |\n|---|---|---|")
        for r in throughput(args.repeat):
            print(f"| {r['quantizer']} | {r['mb_per_cpu_s']} | {r['vs_anchor']} |", flush=True)
    if not args.skip_rss:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            rows = peak_rss(args.shape, [int(b) for b in args.blocks.split(",")], args.quants.split(","),
                            args.writers.split(","), tmp)
        print("\n| shape | blocks | source | writer | quant | peak RSS | CPU s | MB/s per CPU s |\n"
              "|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['shape']} | {r['blocks']} | {r['source_mb'] / 1e3:.2f} GB | {r['writer']} | {r['quant']} | "
                  f"{r['peak_rss_mb']} MB | {r['cpu_s']} | {r['mb_per_cpu_s']} |")


if __name__ == "__main__":
    main()
