"""Benchmark the ONNX export of a full-size DiT and onnxruntime vs PyTorch latency (not a test).

Streams a Wan2.1-T2V-1.3B-shaped fp32 checkpoint (stock names, 5.7 GB, one
repeated random block) to disk, then, each in a fresh subprocess:

- `wan-export onnx --component dit`: wall time and peak memory, split into
  anonymous memory (copies) and file-backed pages (the source's mmap, which the
  fp32 weights are used from without a copy), against the weight bytes;
- onnxruntime CPU on the exported graph and the reference PyTorch model at a
  small latent (1x16x3x16x16, text length 64), same thread count: session/model
  load time, median latency, peak RSS; the two outputs are compared.

    python benchmarks/bench_onnx.py [--dir DIR] [--threads 2] [--repeat 5] [--keep]

Memory is sampled from /proc/<pid>/status every 50 ms (RssAnon, RssFile) and
VmHWM; the source sits in the page cache after it is generated. The PyTorch
child copies its (mmap-backed) weights into its own memory before timing, as
onnxruntime does when it loads the graph, so both time compute, not page faults.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

VARIANT = "wan2.1-t2v-1.3b"
SHAPE = {"batch": 1, "frames": 3, "hh": 8, "ww": 8, "text_len": 64}     # latents 1x16x3x16x16


def generate(path: str) -> tuple[float, int]:
    """Stream an fp32 checkpoint of the variant's shapes; returns (seconds, bytes)."""
    from wan_export.safetensors_io import SafetensorsWriter, TensorInfo
    from wan_export.variants import VARIANTS, dit_shapes

    t = time.perf_counter()
    shapes = dit_shapes(VARIANTS[VARIANT].config)
    block = np.random.default_rng(0).standard_normal(1 << 20, dtype=np.float32) * 0.02
    data = np.resize(block, max(math.prod(s) for s in shapes.values()))
    infos = [TensorInfo(k, s, "F32") for k, s in shapes.items()]
    with SafetensorsWriter(path, infos, {"format": "pt"}) as w:
        for i in infos:
            w.write(i.name, data[: i.numel].reshape(i.shape))
    return time.perf_counter() - t, sum(i.nbytes for i in infos)


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def run(cmd: list[str]) -> dict:
    """Wall seconds and peak VmHWM / RssAnon / RssFile of one fresh process."""
    os.sync()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    while proc.poll() is None:
        for k, v in _status(proc.pid).items():
            peak[k] = max(peak[k], v)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-3000:]}")
    return {"wall": time.perf_counter() - t, **peak, "stdout": out}


# ---- children -----------------------------------------------------------------------------------

def child_ort(graph: str, threads: int, repeat: int, out: str) -> None:
    import onnxruntime as ort

    from wan_export.converters import onnx_specs as S
    from wan_export.synthetic import tiny_dit_config

    t = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t
    x = S.make_inputs(S.dit_spec(tiny_dit_config(VARIANT)), SHAPE, seed=1)
    feeds = {k: v.numpy() for k, v in x.items()}
    _time_calls(lambda: sess.run(None, feeds)[0], load, repeat, out)


def child_torch(src: str, threads: int, repeat: int, out: str) -> None:
    import torch

    from wan_export.converters import onnx_specs as S
    from wan_export.converters.onnx_export import build_model
    from wan_export.release import open_input

    torch.set_num_threads(threads)
    t = time.perf_counter()
    comp = open_input(src).only("dit")
    model = build_model(comp, "fp32")          # float32 angles, as in the graph
    for p in model.parameters():               # own the weights: time compute, not page faults of the mmap
        p.data = p.data.clone()
    load = time.perf_counter() - t
    x = S.make_inputs(S.dit_spec(comp.config), SHAPE, seed=1)
    with torch.inference_mode():
        _time_calls(lambda: model(x["latents"], x["timestep"], x["context"]).numpy(), load, repeat, out)


def _time_calls(fn, load: float, repeat: int, out: str) -> None:
    result = fn()                               # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    np.save(out, result)
    print(json.dumps({"load": load, "median": float(np.median(times)), "best": min(times)}))


# ---- parent -------------------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=None, help="Work folder (default: a temp folder, removed unless --keep).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = args.dir or tempfile.mkdtemp(prefix="bench-onnx-")
    os.makedirs(work, exist_ok=True)
    try:
        report(work, args.threads, args.repeat)
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(work, ignore_errors=True)


def report(work: str, threads: int, repeat: int) -> None:
    src, out = os.path.join(work, "dit.safetensors"), os.path.join(work, "onnx")
    gen_s, weight_bytes = generate(src)
    shutil.rmtree(out, ignore_errors=True)
    exp = run([sys.executable, "-m", "wan_export", "onnx", src, "--component", "dit", "-o", out, "-q"])
    files = {n: os.path.getsize(os.path.join(out, n)) for n in sorted(os.listdir(out))}
    me = [sys.executable, __file__, "--child"]
    ort_run = run(me + ["ort", os.path.join(out, "transformer.onnx"), str(threads), str(repeat),
                        os.path.join(work, "ort.npy")])
    pt_run = run(me + ["torch", src, str(threads), str(repeat), os.path.join(work, "torch.npy")])
    a, b = np.load(os.path.join(work, "ort.npy")), np.load(os.path.join(work, "torch.npy"))
    rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    gb = 2 ** 30
    print(f"\nWan2.1-T2V-1.3B-shaped DiT, fp32 weights {weight_bytes / gb:.2f} GiB "
          f"(source generated in {gen_s:.0f} s); {os.cpu_count()} CPUs, {threads} threads\n")
    print("| step | wall s | peak RSS GiB | peak anon GiB | peak file-backed GiB | RSS / weights |")
    print("|---|---|---|---|---|---|")
    for label, r in (("wan-export onnx --component dit (dynamo, opset 20)", exp),
                     ("onnxruntime CPU: load + run", ort_run), ("PyTorch CPU: load + run", pt_run)):
        print(f"| {label} | {r['wall']:.1f} | {r['VmHWM'] / gb:.2f} | {r['RssAnon'] / gb:.2f} "
              f"| {r['RssFile'] / gb:.2f} | {r['VmHWM'] / weight_bytes:.2f} |")
    lat = {k: json.loads(r["stdout"].strip().splitlines()[-1]) for k, r in (("ort", ort_run), ("torch", pt_run))}
    print(f"\nLatency at latents 1x16x3x16x16, text 64 ({threads} threads, median of {repeat}):\n")
    print("| runtime | load s | median ms | best ms |\n|---|---|---|---|")
    for k, label in (("ort", "onnxruntime CPU"), ("torch", "PyTorch eager CPU")):
        print(f"| {label} | {lat[k]['load']:.1f} | {lat[k]['median'] * 1e3:.0f} | {lat[k]['best'] * 1e3:.0f} |")
    print(f"\nonnxruntime vs PyTorch output: rel-L2 {rel:.2e}; files: "
          + ", ".join(f"{n} {s / gb:.2f} GiB" if s > 2**20 else f"{n} {s / 1024:.0f} KiB" for n, s in files.items()))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, path, threads, repeat, out = sys.argv[2:7]
        (child_ort if kind == "ort" else child_torch)(path, int(threads), int(repeat), out)
    else:
        main()
