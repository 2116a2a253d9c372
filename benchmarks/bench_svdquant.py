"""SVDQuant fidelity, size and speed on outlier-heavy Wan-shaped Linears (not a test).

Layers: the ten block Linears of Wan2.1-T2V-1.3B (dim 1536, ffn 8960; `--14b`: 5120 / 13824)
for `--blocks` blocks. Each weight is Gaussian / sqrt(K), with
- heavy-tailed rows: each output row scaled by |t_3| (Student t, 3 dof), clipped at 20;
- a few heavy input channels: 8 random input columns x 8;
- a weak low-rank part (rank 4, 0.3 of the norm), like trained attention projections.
Activations (calibration sample and a held-out evaluation set, 256 rows each) are t_4
distributed with 8 outlier channels x 30 (different per layer). Everything is seeded.

Rows: output rel-L2 and cosine on the held-out rows (err^2 and ref^2 summed over the layers of
FIDELITY_LAYERS, one per distinct shape/input) for SVDQuant INT4 at rank 16/32/64 and NVFP4 r32, plain W4A4 INT4 / NVFP4 (RTN, no
smoothing, no branch), and FP8 W8A8 (E4M3, per-tensor weight scale, per-token activation
scale); the bytes on disk of the quantized Linears vs bf16; seconds per layer of
`quantize_linear` with the default settings (smoothing search, rank 32, INT4).

    python benchmarks/bench_svdquant.py [--blocks 1] [--14b] [--ranks 16,32,64] [--speed-only]
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from wan_export.quantizers.svdquant import SVDQuantConfig, plain_w4a4, quantize_linear

SHAPES = {False: (1536, 8960), True: (5120, 13824)}
LAYERS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
          "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
ROWS = 256
# fidelity runs these (the other attention Linears share self_attn.q's shape and statistics)
FIDELITY_LAYERS = ("self_attn.q", "self_attn.o", "cross_attn.k", "ffn.0", "ffn.2")
# speed: one timing per shape, counted for every Linear of that shape in a block
SPEED_LAYERS = {"self_attn.q": 8, "ffn.0": 1, "ffn.2": 1}


def layer_shape(name: str, dim: int, ffn: int) -> tuple[int, int]:
    return {"ffn.0": (ffn, dim), "ffn.2": (dim, ffn)}.get(name, (dim, dim))


def make_layer(n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    t3 = torch.distributions.StudentT(3.0)
    torch.manual_seed(seed)
    w = torch.randn(n, k, generator=g) / math.sqrt(k)
    w *= t3.sample((n, 1)).abs().clamp(0.2, 20.0)
    w[:, torch.randperm(k, generator=g)[:8]] *= 8
    low = torch.randn(n, 4, generator=g) @ torch.randn(4, k, generator=g)
    w += 0.3 * low * (w.norm() / low.norm())
    b = torch.randn(n, generator=g) * 0.02
    t4 = torch.distributions.StudentT(4.0)
    x = t4.sample((2 * ROWS, k))
    x[:, torch.randperm(k, generator=g)[:8]] *= 30
    return w, b, x[:ROWS], x[ROWS:]


def fp8_w8a8(w, b, x):
    """E4M3 weights with a per-tensor scale, activations with a per-token scale (dynamic)."""
    sw = w.abs().max() / 448
    wq = (w / sw).to(torch.float8_e4m3fn).float() * sw
    xb = x.to(torch.bfloat16).float()
    sx = xb.abs().amax(1, keepdim=True).clamp_min(1e-12) / 448
    xq = (xb / sx).to(torch.float8_e4m3fn).float() * sx
    return xq @ wq.t() + b


class Acc:
    def __init__(self):
        self.e2 = self.r2 = self.o2 = self.dot = 0.0

    def add(self, ref, out):
        r, o = ref.double().reshape(-1), out.double().reshape(-1)
        self.e2 += float((o - r) @ (o - r))
        self.r2 += float(r @ r)
        self.o2 += float(o @ o)
        self.dot += float(r @ o)

    def rel(self):
        return math.sqrt(self.e2 / self.r2)

    def cos(self):
        return self.dot / math.sqrt(self.r2 * self.o2)


def packed_bytes(n: int, k: int, precision: str, rank: int) -> int:
    group = 64 if precision == "int4" else 16
    scale = 2 if precision == "int4" else 1
    extra = (2 * n + 2) if precision == "nvfp4" else 0
    return n * k // 2 + (k // group) * n * scale + 2 * k + 2 * (k + n) * rank + 2 * n + extra


def fidelity(args) -> None:
    dim, ffn = SHAPES[args.big]
    ranks = [int(r) for r in args.ranks.split(",")]
    methods = {f"SVDQuant int4 r{r}": ("int4", r) for r in ranks} | {"SVDQuant nvfp4 r32": ("nvfp4", 32)}
    methods |= {"plain W4A4 int4": ("int4", None), "plain W4A4 nvfp4": ("nvfp4", None), "FP8 W8A8": (None, None)}
    acc = {m: Acc() for m in methods}
    per_layer = []
    for blk in range(args.blocks):
        for i, name in enumerate(LAYERS):
            if name not in args.layers.split(","):
                continue
            n, k = layer_shape(name, dim, ffn)
            w, b, xs, xe = make_layer(n, k, seed=1000 * blk + i)
            xe16 = xe.to(torch.bfloat16)
            ref = xe16.float() @ w.t() + b
            row = {"layer": f"blocks.{blk}.{name}"}
            for m, (prec, rank) in methods.items():
                if prec is None:
                    out = fp8_w8a8(w, b, xe)
                elif rank is None:
                    out = plain_w4a4(w, b, SVDQuantConfig(precision=prec)).forward(xe16, torch.float32)
                else:
                    t = time.perf_counter()
                    layer, _ = quantize_linear(w, b, SVDQuantConfig(precision=prec, rank=rank), xs)
                    row[f"{m} seconds"] = round(time.perf_counter() - t, 1)
                    out = layer.forward(xe16, torch.float32)
                acc[m].add(ref, out)
                a = Acc()
                a.add(ref, out)
                row[m] = round(a.rel(), 4)
            per_layer.append(row)
            print(f"  {row}", flush=True)
    print("\n| method | rel-L2 | cosine | vs plain W4A4 (same precision) |\n|---|---|---|---|")
    for m, (prec, rank) in methods.items():
        base = acc.get(f"plain W4A4 {prec}") if prec else None
        ratio = f"{acc[m].rel() / base.rel():.3f}x" if base is not None else "-"
        print(f"| {m} | {acc[m].rel():.4f} | {acc[m].cos():.6f} | {ratio} |")
    sizes(dim, ffn, ranks)


def sizes(dim: int, ffn: int, ranks) -> None:
    shapes = [layer_shape(n, dim, ffn) for n in LAYERS]
    bf16 = sum(2 * n * k + 2 * n for n, k in shapes)
    print("\n| format | bytes per block (10 Linears) | vs bf16 |\n|---|---|---|")
    print(f"| bf16 | {bf16:,} | 1.000 |")
    for p in ("int4", "nvfp4"):
        for r in ranks:
            b = sum(packed_bytes(n, k, p, r) for n, k in shapes)
            print(f"| SVDQuant {p} r{r} | {b:,} | {b / bf16:.3f} |")
    fp8 = sum(n * k + 2 * n + 4 for n, k in shapes)
    print(f"| FP8 | {fp8:,} | {fp8 / bf16:.3f} |")


def speed(args) -> None:
    for big in (False, True) if not args.only else (args.big,):
        dim, ffn = SHAPES[big]
        total = 0.0
        print(f"\n{'14B' if big else '1.3B'}-shaped (dim {dim}, ffn {ffn}), INT4 r32, smoothing search, "
              f"{torch.get_num_threads()} torch threads available, quantize_linear uses "
              f"{SVDQuantConfig().threads or 'all'}:")
        print("| layer | [N, K] | seconds |\n|---|---|---|")
        for i, name in enumerate(LAYERS):
            if name not in SPEED_LAYERS or name not in args.layers.split(","):
                continue
            n, k = layer_shape(name, dim, ffn)
            w, b, xs, _ = make_layer(n, k, seed=i)
            t = time.perf_counter()
            quantize_linear(w, b, SVDQuantConfig(), xs)
            dt = time.perf_counter() - t
            total += dt * SPEED_LAYERS[name]
            print(f"| {name} | [{n}, {k}] | {dt:.1f} |", flush=True)
        print(f"block total (10 Linears): {total:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--14b", dest="big", action="store_true")
    ap.add_argument("--ranks", default="16,32,64")
    ap.add_argument("--layers", default=",".join(FIDELITY_LAYERS), help="comma-separated stock Linear names")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--fidelity-only", action="store_true")
    ap.add_argument("--only", action="store_true", help="speed: only the chosen shape")
    args = ap.parse_args()
    if not args.speed_only:
        fidelity(args)
    if not args.fidelity_only:
        speed(args)


if __name__ == "__main__":
    main()
