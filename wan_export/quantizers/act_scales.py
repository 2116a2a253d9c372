"""Activation input_scale from CALIB statistics: `--act-calib max | percentile:P | mse`.

input_scale = clip / 448 (fp8) or clip / (6*448) (nvfp4; the global scale of the dynamic
per-16 activation blocks); mxfp8 activations are scaled per block at run time (none stored).

- max: clip = input_amax (every token of every step, CFG branch and prompt).
- percentile:P: the upper edge of the histogram bin where P % of |x| (zeros excluded) lies
  below, never above input_amax.
- mse: the clip among histogram edges (down to amax/2^10) minimising the expected squared error
  of E4M3 at scale clip/448 over the histogram: 8 points per bin, weighted by the bin count,
  clipping error included. For nvfp4 the same search is used: what the clip changes there is the
  e4m3 block-scale grid and the clipping; E2M1 noise inside a block does not depend on it.
  E4M3's error is relative, so clipping buys resolution only against subnormals: on heavy-tailed
  histograms the MSE clip is the max (tests/quantizers/test_quant_policy.py); percentile clips more.
"""
from __future__ import annotations

import math

import numpy as np

from wan_export.errors import BadInputError

DIVISOR = {"fp8": 448.0, "nvfp4": 6.0 * 448.0}
_POINTS = 8
_MSE_RANGE_OCTAVES = 10


def parse_method(text: str) -> tuple[str, float | None]:
    """'max' | 'mse' | 'percentile:P' (0 < P <= 100)."""
    name, _, arg = str(text).partition(":")
    if name in ("max", "mse") and not arg:
        return name, None
    if name == "percentile":
        try:
            p = float(arg)
        except ValueError:
            p = math.nan
        if 0 < p <= 100:
            return name, p
    raise BadInputError(f"--act-calib {text!r}: expected max, mse or percentile:P with 0 < P <= 100")


def bin_edges(nbins: int) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) [nbins] of the CALIB histogram bins (calibration/bins.py); bin 0 = exact zeros."""
    from wan_export.calibration.bins import NBINS, bin_bounds

    if nbins != NBINS:
        raise BadInputError(f"input_hist has {nbins} bins, a wan-export CALIB histogram has {NBINS}")
    lower, upper = bin_bounds()
    return np.array(lower), np.array(upper)


def percentile_clip(hist: np.ndarray, amax: float, p: float) -> float:
    counts = hist.astype(np.float64).copy()
    counts[0] = 0.0
    total = counts.sum()
    if total == 0:
        return amax
    _, upper = bin_edges(len(hist))
    k = int(np.searchsorted(np.cumsum(counts), total * p / 100.0 - 1e-9))
    return float(min(upper[min(k, len(hist) - 1)], amax))


def _e4m3_error(values: np.ndarray, clip: float) -> np.ndarray:
    import torch

    scale = clip / 448.0
    x = torch.from_numpy(values / scale).float().clamp(-448, 448)
    q = x.to(torch.float8_e4m3fn).double().numpy() * scale
    return (q - values) ** 2


def mse_clip(hist: np.ndarray, amax: float) -> float:
    counts = hist.astype(np.float64)
    lower, upper = bin_edges(len(hist))
    used = np.nonzero(counts[1:])[0] + 1
    if amax <= 0 or not len(used):
        return amax
    frac = (np.arange(_POINTS) + 0.5) / _POINTS
    pts = np.minimum(lower[used, None] * (upper[used, None] / lower[used, None]) ** frac, amax)
    weights = np.repeat(counts[used] / _POINTS, _POINTS)
    pts = pts.reshape(-1)
    candidates = [amax] + [float(e) for e in upper[used] if amax / 2 ** _MSE_RANGE_OCTAVES <= e < amax]
    errors = [float((_e4m3_error(pts, c) * weights).sum()) for c in candidates]
    return candidates[int(np.argmin(errors))]


def clip_value(stats: dict, method: tuple[str, float | None]) -> float:
    """The activation clip of one layer (CALIB `input_amax` / `input_hist`)."""
    amax = float(stats["input_amax"])
    name, p = method
    if name == "max":
        return amax
    if "input_hist" not in stats:
        raise BadInputError(f"--act-calib {name} needs input_hist statistics")
    hist = np.asarray(stats["input_hist"])
    return percentile_clip(hist, amax, p) if name == "percentile" else mse_clip(hist, amax)


def input_scale(fmt: str, clip: float) -> float | None:
    """The stored input_scale (fp32 scalar) of a layer, None where the format takes none."""
    if fmt not in DIVISOR:
        return None
    scale = np.float32(clip) / np.float32(DIVISOR[fmt])
    return float(scale) if scale > 0 else 1.0


def check_stats(stats: dict, name: str, path: str) -> None:
    for key, arr in stats.items():
        a = np.asarray(arr)
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise BadInputError(f"calibration statistic {name}.{key} has NaN/Inf values", path)
