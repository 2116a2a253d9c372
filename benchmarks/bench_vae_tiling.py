"""Memory and time of decoding with the full-size Wan2.1 / Wan2.2 VAE (synthetic weights), tiled
against untiled.

Two measurements, each case in its own subprocess:
  --trace  peak bytes of live tensors (activations, caches, output canvas) while decoding on the
           meta device: exact for our code at any size, but no kernel workspaces (CPU
           slow_conv3d's im2col buffer) or allocator overhead. Every step after the first is the
           same and the float32 canvas is allocated whole at the start, so the peak at F frames
           is the peak at fewer frames plus the larger canvas: --report-frames F adds that.
  --run    real CPU decode: peak RSS (ru_maxrss) and wall time, under an address-space cap so an
           oversized case fails cleanly instead of exhausting a shared machine.

    python benchmarks/bench_vae_tiling.py --trace --size 1280x720 --frames 9 --report-frames 81
    python benchmarks/bench_vae_tiling.py --run --size 128x128 --frames 1 --cap-gb 12
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = (("2.1", 0), ("2.1", 256), ("2.2", 0), ("2.2", 512))     # (VAE, tile px; 0 = untiled)


def child(mode: str, version: str, tile: int, width: int, height: int, frames: int) -> dict:
    import resource
    import time
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from wan_export.model.config import VAE21, VAE22
    from wan_export.model.vae import WanVAE
    from wan_export.model.vae_tiling import decode_tiled, tiling_from_pixels

    cfg = {"2.1": VAE21, "2.2": VAE22}[version]
    s, latent = cfg.spatial_stride, 1 + (frames - 1) // 4
    device = "meta" if mode == "trace" else "cpu"
    with torch.device(device):
        vae = WanVAE(cfg).eval().requires_grad_(False)
        z = torch.randn(1, cfg.z_dim, latent, height // s, width // s)
    if device == "cpu":           # synthetic weights, scaled so activations stay finite
        g = torch.Generator().manual_seed(0)
        for p in vae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / max(p[0].numel(), 1)) ** 0.5)
    tiling = tiling_from_pixels(cfg, tile, None)

    class Live(TorchDispatchMode):
        """Bytes of storages alive, tracked through every aten op's outputs."""

        def __init__(self):
            super().__init__()
            self.refs, self.size, self.now, self.peak = {}, {}, 0, 0

        def _drop(self, key):
            self.refs[key] -= 1
            if not self.refs[key]:
                self.now -= self.size.pop(key)
                del self.refs[key]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(t, torch.Tensor):
                    st = t.untyped_storage()
                    key = st._cdata
                    if key not in self.refs:
                        self.refs[key], self.size[key] = 0, st.nbytes()
                        self.now += st.nbytes()
                        self.peak = max(self.peak, self.now)
                    self.refs[key] += 1
                    weakref.finalize(t, self._drop, key)
            return out

    start = time.perf_counter()
    if mode == "trace":
        with Live() as live:
            decode_tiled(vae, z, tiling)
        return {"peak_tensor_gb": round(live.peak / 2**30, 2), "canvas_bytes": 3 * frames * width * height * 4}
    decode_tiled(vae, z, tiling)
    return {"seconds": round(time.perf_counter() - start, 1),
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def run_case(mode, version, tile, size, frames, cap_gb) -> dict:
    code = (f"import json,resource,sys; sys.path.insert(0, {os.getcwd()!r});"
            f"resource.setrlimit(resource.RLIMIT_AS, ({int(cap_gb * 2**30)}, {int(cap_gb * 2**30)}));"
            f"from benchmarks.bench_vae_tiling import child;"
            f"print(json.dumps(child({mode!r}, {version!r}, {tile}, {size[0]}, {size[1]}, {frames})))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": last[:120]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", action="store_true", help="meta-device live-tensor peak")
    ap.add_argument("--run", action="store_true", help="real CPU decode: peak RSS and time")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--frames", type=int, default=81, help="video frames (4k+1)")
    ap.add_argument("--report-frames", type=int, default=None,
                    help="--trace: also state the peak at this many frames (the canvas difference added)")
    ap.add_argument("--cap-gb", type=float, default=12.0, help="address-space cap per --run case")
    ap.add_argument("--cases", default=",".join(f"{v}:{t}" for v, t in CASES), help="VAE:tile,...")
    a = ap.parse_args()
    size = tuple(int(x) for x in a.size.lower().split("x"))
    mode = "run" if a.run else "trace"
    cap = a.cap_gb if mode == "run" else 1024.0
    extra = f" {a.report_frames} frames |" if mode == "trace" and a.report_frames else ""
    print(f"| VAE | tile px | {a.size} x {a.frames} frames: " + ("peak live tensors |" if mode == "trace"
                                                                    else "peak RSS | seconds |") + extra)
    print("|---|---|---|" + ("" if mode == "trace" and not extra else "---|"))
    for case in a.cases.split(","):
        version, tile = case.split(":")
        r = run_case(mode, version, int(tile), size, a.frames, cap)
        if "failed" in r:
            cells = f"failed: {r['failed']} |" + ("" if mode == "trace" else " - |")
        elif mode == "trace":
            cells = f"{r['peak_tensor_gb']} GB |"
            if extra:
                more = r["canvas_bytes"] * (a.report_frames / a.frames - 1) / 2**30
                cells += f" {r['peak_tensor_gb'] + more:.2f} GB |"
        else:
            cells = f"{r['peak_rss_gb']} GB | {r['seconds']} |"
        print(f"| {version} | {tile or 'untiled'} | {cells}", flush=True)


if __name__ == "__main__":
    main()
