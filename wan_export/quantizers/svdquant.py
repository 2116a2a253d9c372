"""SVDQuant for one Linear: smoothing, a 16-bit low-rank branch and a 4-bit residual.

For W [N, K] (out x in) and an activation sample X [S, K] from the CALIB file
(quantization-svdquant.md sections 1 and 3):
1. smoothing: lambda = span_x^alpha / span_w^beta per input channel
   (normalised to geometric mean 1), searched over deepcompressor's (alpha, beta)
   grid against the layer-output error on X with the low-rank branch present;
2. low rank: the top-r SVD of the smoothed weight W * lambda, iterated
   L <- SVD_r(W^ - Q(W^ - L)) while the output error falls;
3. the residual W^ - L quantized to INT4 (group 64, 16-bit scales) or NVFP4
   (group 16, FP8 micro-scales, per-tensor wtscale), optionally by GPTQ.
Every error is measured on exactly what the kernel computes (`W4A4Layer.forward`
on tensors rounded to the stored dtypes). Randomized SVD (fixed seed) is used above
`full_svd_max` channels; it matches the full SVD's residual norm within 5e-3 relative
on spectra like Wan's (tests/quantizers/test_svdquant.py).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from wan_export.quantizers import svdquant_kernel as K
from wan_export.quantizers.svdquant_pack import LOWRANK_TILE

COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
CONFIG_VERSION = 1


@dataclass(frozen=True)
class SVDQuantConfig:
    """Validated settings; `to_dict()` is what the artifact's metadata records."""

    precision: str = "int4"
    rank: int = 32
    smooth: str | float = "auto"         # "auto" (grid search) or a fixed alpha (beta = 1 - alpha)
    grid: int = 10                       # deepcompressor fast.yaml: 10 grid steps -> 19 (alpha, beta) pairs
    lowrank_iters: int = 8               # at most; stops at the first rise of the output error
    gptq: bool = False
    compute_dtype: str = "bfloat16"
    full_svd_max: int = 128              # min(N, K) above which the SVD is randomized
    svd_oversample: int = 16
    svd_power_iters: int = 4
    # the search is thousands of small ops and factorisations; on the 2-core dev machines (shared)
    # one thread ran it 3-10x faster than two (SVDs up to 100x). 0 keeps torch's thread count.
    threads: int = 1

    def __post_init__(self):
        if self.precision not in K.PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r} (expected {' or '.join(K.PRECISIONS)})")
        if self.rank < 0 or self.rank % LOWRANK_TILE:
            raise ValueError(f"rank {self.rank} is not a non-negative multiple of {LOWRANK_TILE}")
        if self.smooth != "auto" and not (isinstance(self.smooth, float) and 0.0 <= self.smooth <= 1.0):
            raise ValueError(f"smooth must be 'auto' or an alpha in [0, 1], got {self.smooth!r}")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(f"compute dtype {self.compute_dtype!r} is not one of {', '.join(COMPUTE_DTYPES)}")
        if self.grid < 1 or self.lowrank_iters < 0:
            raise ValueError("grid must be >= 1 and lowrank_iters >= 0")

    @property
    def dtype(self) -> torch.dtype:
        return COMPUTE_DTYPES[self.compute_dtype]

    @property
    def group_size(self) -> int:
        return K.PRECISIONS[self.precision].group

    @property
    def needs_samples(self) -> bool:
        return self.smooth == "auto" or self.gptq

    def candidates(self) -> list[tuple[float, float]]:
        """(alpha, beta) pairs: {(0,0)} + {(i/n, 0)} + {(i/n, 1 - i/n)}, i = 1..n-1; or the fixed alpha."""
        if self.smooth != "auto":
            return [(self.smooth, 1.0 - self.smooth)]
        n = self.grid
        return [(0.0, 0.0)] + [(i / n, 0.0) for i in range(1, n)] + [(i / n, 1 - i / n) for i in range(1, n)]

    def to_dict(self) -> dict:
        return {"type": "svdquant", "version": CONFIG_VERSION, "params": asdict(self)}


# ---- pieces ---------------------------------------------------------------------------------

def smooth_factor(span_x: torch.Tensor, span_w: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    lam = span_x.clamp_min(1e-6) ** alpha / span_w.clamp_min(1e-6) ** beta
    return lam / torch.exp(torch.log(lam).mean())


@contextmanager
def torch_threads(n: int):
    """Run on n intra-op threads (0: leave torch's setting)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def top_r(a: torch.Tensor, r: int, cfg: SVDQuantConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [N, r] = U S, down [K, r] = V) of the best rank-r approximation of a [N, K]."""
    n, k = a.shape
    if r == 0:
        return a.new_zeros(n, 0), a.new_zeros(k, 0)
    if min(n, k) <= cfg.full_svd_max:
        u, s, vh = torch.linalg.svd(a.double(), full_matrices=False)
        return (u[:, :r] * s[:r]).float(), vh[:r].t().float()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(a, q=min(r + cfg.svd_oversample, n, k), niter=cfg.svd_power_iters)
    return u[:, :r] * s[:r], v[:, :r]


def quantize_residual(r: torch.Tensor, cfg: SVDQuantConfig, hessian: torch.Tensor | None = None):
    """(codes, scales, wtscale or None) of the residual; GPTQ when a Hessian is given."""
    prec = K.PRECISIONS[cfg.precision]
    wt = None
    outer = 1.0
    if prec.name == "nvfp4":
        wt = (r.abs().max().clamp_min(1e-12) / (prec.qmax * K.FP8_MAX)).to(cfg.dtype).reshape(1)
        outer = float(wt)
    if hessian is not None:
        from wan_export.quantizers.svdquant_gptq import gptq_residual

        codes, scales = gptq_residual(r, hessian, prec, cfg.dtype, outer)
    else:
        codes, scales = K.quantize_groups(r, prec, cfg.dtype, outer)
    return codes, scales, wt


def build_layer(w: torch.Tensor, bias: torch.Tensor | None, lam: torch.Tensor, up: torch.Tensor,
                down_s: torch.Tensor, cfg: SVDQuantConfig, hessian=None) -> K.W4A4Layer:
    """The stored layer for smoothing lam and branch up @ down_s^T (in the smoothed space).

    The branch is rounded to the compute dtype first and the residual absorbs exactly what the
    rounded, un-smoothed branch leaves; proj_down = down_s / lam acts on the raw input.
    """
    dt = cfg.dtype
    smooth = lam.to(dt)
    lam_q = smooth.float()
    up_q, down_q = up.to(dt), (down_s / lam_q[:, None]).to(dt)
    w_hat = w * lam_q
    resid = w_hat - up_q.float() @ (down_q.float() * lam_q[:, None]).t()
    codes, scales, wt = quantize_residual(resid, cfg, hessian)
    wc = torch.ones(w.shape[0], dtype=dt) if cfg.precision == "nvfp4" else None
    return K.W4A4Layer(cfg.precision, codes, scales, smooth, down_q, up_q,
                       None if bias is None else bias.to(dt), wc, wt)


def residual_value(layer: K.W4A4Layer) -> torch.Tensor:
    """The 4-bit residual as it multiplies the smoothed input, fp32 [N, K]."""
    outer = float(layer.wtscale) if layer.wtscale is not None else 1.0
    return K.dequantize_groups(layer.codes, layer.wscales, layer.prec, outer)


def plain_w4a4(w: torch.Tensor, bias: torch.Tensor | None, cfg: SVDQuantConfig) -> K.W4A4Layer:
    """The baseline: round-to-nearest W4A4 at the same precision, no smoothing, no branch."""
    k = w.shape[1]
    return build_layer(w, bias, torch.ones(k), w.new_zeros(w.shape[0], 0), w.new_zeros(k, 0), cfg)


class Objective:
    """Relative output error on the sample (or, without one, the effective-weight error)."""

    def __init__(self, w: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor | None, dt: torch.dtype):
        self.w, self.bias = w, bias
        self.x = None if x is None else x.to(dt)
        self._acts = None
        if self.x is not None:
            self.y = self.x.float() @ w.t() + (0 if bias is None else bias.float())
            self.norm = float(self.y.norm()) or 1.0
        else:
            self.norm = float(w.norm()) or 1.0

    def __call__(self, layer: K.W4A4Layer) -> float:
        if self.x is not None:
            if self._acts is None or not torch.equal(self._acts[0], layer.smooth):   # once per smoothing
                self._acts = (layer.smooth, K.quantize_activations(self.x, layer.smooth, layer.prec))
            y = layer.forward(self.x, out_dtype=torch.float32, acts=self._acts[1])
            return float((y - self.y).norm()) / self.norm
        eff = residual_value(layer) / layer.smooth.float() + layer.up.float() @ layer.down.float().t()
        return float((eff - self.w).norm()) / self.norm


# ---- the per-layer search --------------------------------------------------------------------

def quantize_linear(w: torch.Tensor, bias: torch.Tensor | None, cfg: SVDQuantConfig,
                    sample: torch.Tensor | None = None, channel_amax: torch.Tensor | None = None):
    """SVDQuant one Linear; returns (W4A4Layer, stats: alpha, beta, iterations, errors)."""
    with torch_threads(cfg.threads):
        return _quantize_linear(w, bias, cfg, sample, channel_amax)


def _quantize_linear(w, bias, cfg, sample, channel_amax):
    w = w.float()
    bias = None if bias is None else bias.float()
    x = None if sample is None else sample.float()
    if x is None and channel_amax is None:
        raise ValueError("needs an activation sample or per-channel amax")
    span_x = channel_amax.float() if channel_amax is not None else x.abs().amax(0)
    span_w = w.abs().amax(0)
    objective = Objective(w, bias, x, cfg.dtype)
    hessian = _hessian(x, cfg) if cfg.gptq else None
    best = None
    for alpha, beta in cfg.candidates():
        lam = smooth_factor(span_x, span_w, alpha, beta)
        lam = lam.to(cfg.dtype).float()
        up, down_s = top_r(w * lam, cfg.rank, cfg)
        layer = build_layer(w, bias, lam, up, down_s, cfg)
        err = objective(layer)
        if best is None or err < best[0]:
            best = (err, alpha, beta, lam, up, down_s, layer)
    err, alpha, beta, lam, up, down_s, layer = best
    search_err, iters = err, 0
    w_hat = w * lam
    for _ in range(cfg.lowrank_iters if cfg.rank else 0):
        up2, down2 = top_r(w_hat - residual_value(layer), cfg.rank, cfg)
        cand = build_layer(w, bias, lam, up2, down2, cfg)
        e = objective(cand)
        if e >= err:
            break
        err, layer, up, down_s, iters = e, cand, up2, down2, iters + 1
    if hessian is not None:
        layer = build_layer(w, bias, lam, up, down_s, cfg, _smoothed_hessian(hessian, lam))
        err = objective(layer)
    return layer, {"alpha": alpha, "beta": beta, "lowrank_iterations": iters,
                   "error_after_search": search_err, "error": err,
                   "objective": "output" if x is not None else "weight"}


def _hessian(x: torch.Tensor | None, cfg: SVDQuantConfig) -> torch.Tensor:
    if x is None:
        raise ValueError("GPTQ needs an activation sample")
    xd = x.to(cfg.dtype).double()
    return xd.t() @ xd


def _smoothed_hessian(h: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """H of the smoothed input x / lam."""
    inv = 1.0 / lam.double()
    return h * inv[:, None] * inv[None, :]
